"""The one training machinery every stage uses: state, the pure jitted step, and the loop.

State is a dict pytree `{"step": int32[], "params", "opt_state"}`; `train_step(state, batch) -> (state, metrics)`
is jitted with the state donated. `batch` holds `inputs`, `targets` [A, B, T] int32 (A micro-steps of gradient
accumulation) and optionally `weights` [A, B, T]; targets < 0 are ignored. The loss, over the whole batch, is
    Σ weights · nll(target) / (number of targets ≥ 0):
the mean token loss for pre/mid-training, the masked mean for SFT, nanochat's policy-gradient loss for RL
(weights = advantages).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.checkpoint import CheckpointError, abstract_like
from jaxchat.common import print0
from jaxchat.config import ConfigError, ModelConfig, TrainConfig
from jaxchat.optim import lr_multiplier, make_optimizer, opt_state_shardings


@dataclass
class Setup:
    """What `create_train_state` builds: the state plus everything needed to step and checkpoint it."""

    state: dict
    tx: optax.GradientTransformation
    mesh: Any
    state_shardings: dict
    batch_sharding: NamedSharding
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    num_iterations: int


def state_shardings(model_cfg: ModelConfig, tx, mesh) -> dict:
    p_sh = gpt.param_shardings(model_cfg, mesh)
    replicated = NamedSharding(mesh, P())
    o_sh = opt_state_shardings(tx, gpt.param_shapes(model_cfg), p_sh, replicated)
    return {"step": replicated, "params": p_sh, "opt_state": o_sh}


def create_train_state(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh, num_iterations: int,
                       *, key=None, params=None) -> Setup:
    """Fresh (or given) params and a fresh optimizer state, created directly in their sharded layout."""
    tx = make_optimizer(model_cfg, train_cfg, num_iterations)
    sh = state_shardings(model_cfg, tx, mesh)
    if params is None:
        key = jax.random.key(train_cfg.seed) if key is None else key
        params = jax.jit(lambda k: gpt.init_params(model_cfg, k), out_shardings=sh["params"])(key)
    else:
        params = jax.device_put(params, sh["params"])
    opt_state = jax.jit(tx.init, out_shardings=sh["opt_state"])(params)
    state = {"step": jax.device_put(jnp.zeros((), jnp.int32), sh["step"]), "params": params,
             "opt_state": opt_state}
    return Setup(state, tx, mesh, sh, shd.batch_sharding(mesh, ndim=3, leading=1), model_cfg, train_cfg,
                 num_iterations)


def loss_and_grads(params, batch, model_cfg: ModelConfig):
    """Gradient of the batch loss (see module docstring), accumulated over the A micro-steps with lax.scan."""
    targets = batch["targets"]
    n_valid = jnp.maximum(jnp.sum(targets >= 0), 1).astype(jnp.float32)

    def micro_loss(p, mb):
        nll = gpt.token_nll(p, mb["inputs"], mb["targets"], model_cfg)
        w = mb["weights"] if "weights" in mb else 1.0
        return jnp.sum(nll * w) / n_valid, jnp.sum(nll)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    A = targets.shape[0]
    if A == 1:
        (loss, nll_sum), grads = grad_fn(params, jax.tree.map(lambda x: x[0], batch))
    else:
        def body(carry, mb):
            g_acc, l_acc, n_acc = carry
            (l, n), g = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, loss, nll_sum), _ = jax.lax.scan(body, (zeros, 0.0, 0.0), batch)
    return loss, nll_sum / n_valid, grads


def train_step(state, batch, *, tx, model_cfg: ModelConfig):
    """One optimizer step. Pure: (state, batch) -> (new state, metrics)."""
    loss, mean_nll, grads = loss_and_grads(state["params"], batch, model_cfg)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "nll": mean_nll, "grad_norm": optax.tree.norm(grads)}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


def jit_train_step(setup: Setup) -> Callable:
    """train_step jitted with explicit shardings and the state donated (updated in place)."""
    replicated = NamedSharding(setup.mesh, P())
    fn = lambda state, batch: train_step(state, batch, tx=setup.tx, model_cfg=setup.model_cfg)  # noqa: E731
    return shd.in_mesh(setup.mesh, jax.jit(fn, in_shardings=(setup.state_shardings, setup.batch_sharding),
                                         out_shardings=(setup.state_shardings, replicated), donate_argnums=0))


def put_batch(setup: Setup, batch_np: dict):
    """Host numpy [A, B, T] arrays → global arrays with the batch sharding (multi-host aware)."""
    return {k: shd.put_global_batch(v, setup.batch_sharding) for k, v in batch_np.items()}


def grad_accum_steps(total_batch_size: int, device_batch_size: int, seq_len: int, n_devices: int) -> int:
    """Micro-steps per optimizer step. total_batch_size = -1 means a single micro-step."""
    per_micro = device_batch_size * seq_len * n_devices
    if total_batch_size <= 0:
        return 1
    if total_batch_size % per_micro:
        raise ValueError(
            f"total_batch_size={total_batch_size} must be a multiple of device_batch_size x max_seq_len x "
            f"devices = {device_batch_size} x {seq_len} x {n_devices} = {per_micro}")
    return total_batch_size // per_micro


def horizon_params(model_cfg: ModelConfig, cfg: TrainConfig) -> int:
    """The params that target_param_data_ratio multiplies: all (V1), or with [base] depth_dial master's choice,
    transformer matrices + lm_head ("the cleanest scaling laws")."""
    if not getattr(cfg, "depth_dial", False):  # a BaseConfig field: the later stages have no such choice
        return gpt.num_params(model_cfg)
    n = gpt.scaling_params(model_cfg)
    return n["transformer_matrices"] + n["lm_head"]


def horizon(model_cfg: ModelConfig, cfg: TrainConfig, tokens_per_step: int) -> tuple[int, str]:
    """Number of optimizer steps: num_iterations > target_flops > target_param_data_ratio (nanochat)."""
    if cfg.num_iterations > 0:
        return cfg.num_iterations, "num_iterations"
    if cfg.target_flops > 0:
        return round(cfg.target_flops / (gpt.flops_per_token(model_cfg) * tokens_per_step)), "target_flops"
    if cfg.target_param_data_ratio > 0:
        tokens = cfg.target_param_data_ratio * horizon_params(model_cfg, cfg)
        return int(tokens // tokens_per_step), "param_data_ratio"
    raise ValueError("no training horizon: set num_iterations, target_flops or target_param_data_ratio")


B_REF = 2**19  # tokens per step of master's d12, where its hyperparameters were tuned


def depth_dial(model_cfg: ModelConfig, cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """Master's base_train scaling from depth, transferred from its tuned d12 (same vocab and T): with D = ratio ×
    horizon_params, the batch (if total_batch_size is -1) 2^round(log2(2^19·(D/D_d12)^0.383)) (Power Lines:
    B_opt ∝ D^0.383), every LR × √(B/2^19) (AdamW's rule, assumed for Muon), Muon weight decay × √(B/2^19)·D_d12/D
    (keeps T_epoch = B/(η·λ·D)). Returns (cfg with them set, {lr_scale, weight_decay}); off: cfg as it is."""
    if not getattr(cfg, "depth_dial", False):
        return cfg, {"lr_scale": 1.0, "weight_decay": cfg.weight_decay}
    if cfg.target_param_data_ratio <= 0:
        raise ConfigError("depth_dial derives batch, LRs and weight decay from the horizon target_param_data_ratio x "
                          f"params: set target_param_data_ratio > 0 (master: 12), got {cfg.target_param_data_ratio}")
    tokens = lambda mc: cfg.target_param_data_ratio * horizon_params(mc, cfg)  # noqa: E731
    target, ref = int(tokens(model_cfg)), tokens(dataclasses.replace(model_cfg, depth=12))
    B = cfg.total_batch_size if cfg.total_batch_size > 0 else 2 ** round(math.log2(B_REF * (target / ref) ** 0.383))
    s, wd = math.sqrt(B / B_REF), cfg.weight_decay * math.sqrt(B / B_REF) * (ref / target)
    cfg = dataclasses.replace(cfg, total_batch_size=B, embedding_lr=cfg.embedding_lr * s, matrix_lr=cfg.matrix_lr * s,
                              unembedding_lr=cfg.unembedding_lr * s, scalar_lr=cfg.scalar_lr * s, weight_decay=wd)
    return cfg, {"lr_scale": s, "weight_decay": wd}


# bf16 dense peak FLOP/s per device for MFU (tensor-core numbers, not the 2:4-sparsity figures)
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "GH200": 989e12, "H800": 989e12, "H20": 148e12,
    "B200": 2250e12, "B100": 1750e12, "GB200": 2500e12,
    "A100": 312e12, "A800": 312e12, "A10G": 125e12, "A10": 125e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 5090": 210e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
    "MI300X": 1307e12, "MI325X": 1307e12, "MI250X": 383e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
}


def device_peak_flops(device=None) -> float | None:
    """Peak of one device by its kind (the longest matching name); None for CPUs and unknown devices (MFU is then
    not reported rather than guessed)."""
    device = device or jax.devices()[0]
    names = [k for k in PEAK_FLOPS if k.lower() in device.device_kind.lower()] if device.platform != "cpu" else []
    return PEAK_FLOPS[max(names, key=len)] if names else None


def _hms(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Meter:
    """Per-step records, fetched one step late so the host never waits on the step it has just launched: loss EMA,
    tokens/s, MFU, ETA; a progress bar (off a terminal, a line every n/40 steps) and one JSONL line per step."""

    def __init__(self, name: str, setup: Setup, start: int, log, show=(), elapsed: float = 0.0, ema=None):
        self.name, self.setup, self.start, self.log, self.show = name, setup, start, log, show
        self.n, self.elapsed, self.elapsed0, self.ema = setup.num_iterations, elapsed, elapsed, ema
        self.flops_per_token, self.peak = gpt.flops_per_token(setup.model_cfg), device_peak_flops()
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=self.n, initial=start, desc=name, disable=not self.tty, dynamic_ncols=True)
        self.pending, self.last = None, time.perf_counter()

    def update(self, step: int, metrics: dict, info: dict, tokens: int) -> None:
        self.flush()
        self.pending = (step, metrics, info, tokens)

    @contextlib.contextmanager
    def paused(self):
        """Evaluation, sampling and saving time is not training time."""
        self.flush()
        t = time.perf_counter()
        yield
        self.last += time.perf_counter() - t

    def flush(self) -> None:
        if self.pending is None:
            return
        (step, metrics, info, tokens), self.pending = self.pending, None
        metrics = {k: v.item() for k, v in jax.device_get(metrics).items()}  # blocks until that step is done
        t = time.perf_counter()
        dt, self.last = t - self.last, t
        if step > self.start:  # the first step after a (re)start includes compilation
            self.elapsed += dt
        self.ema = 0.9 * (self.ema or 0.0) + 0.1 * metrics["loss"]  # nanochat's EMA(0.9), debiased below
        tok_s = tokens / dt if dt > 0 else float("nan")
        perf = {"dt": dt, "tok_per_sec": tok_s, "flops_per_sec": tok_s * self.flops_per_token}
        if self.peak:
            perf["mfu"] = perf["flops_per_sec"] / (self.peak * self.setup.mesh.size)
        tc = self.setup.train_cfg
        lr = lr_multiplier(step, self.n, tc.warmup_ratio, tc.warmdown_ratio, tc.final_lr_frac, tc.warmup_steps)
        self.log.write(kind="train", step=step, **metrics, ema_loss=self.ema / (1 - 0.9 ** (step + 1)), **perf,
                       lr_mult=float(lr), elapsed=self.elapsed, **info)
        timed = step - self.start
        eta = (self.n - step - 1) * (self.elapsed - self.elapsed0) / timed if timed > 0 else math.nan
        post = {"loss": f"{metrics['loss']:.3f}", "tok/s": f"{tok_s:,.0f}", "eta": _hms(eta)}
        post.update({k: (f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in info.items() if k in self.show})
        if "mfu" in perf:
            post["mfu"] = f"{100 * perf['mfu']:.1f}%"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        if not self.tty and (step % max(1, self.n // 40) == 0 or step == self.n - 1):
            print0(f"[{self.name}] step {step + 1}/{self.n} " + " ".join(f"{k} {v}" for k, v in post.items()))


def restore(setup: Setup, name: str, ck, log, data=None) -> tuple[dict, int, dict]:
    """(state, first step, the loop's saved bookkeeping): with --resume the newest checkpoint, else a fresh start."""
    tc, sh = setup.train_cfg, setup.state_shardings
    if not tc.resume:
        # checked before any work: otherwise the first save would fail on a step the old run already wrote
        if steps := ck.steps():
            if not tc.overwrite:
                raise CheckpointError(f"{ck.directory} holds checkpoints of an earlier run (steps {steps}). Pass "
                                      f"--resume to continue from step {steps[-1]}, or --overwrite to start afresh "
                                      f"and replace them.")
            print0(f"[{name}] starting afresh (--overwrite): removing the old checkpoints {steps} in {ck.directory}")
            ck.delete_after(-1)
        log.clear()
        return setup.state, 0, {}
    if ck.latest_step() is None:
        return setup.state, 0, {}
    items, meta = ck.restore(abstract_params=abstract_like(setup.state["params"], sh["params"]),
                             abstract_opt_state=abstract_like(setup.state["opt_state"], sh["opt_state"]), data=data,
                             expect_model=dataclasses.asdict(setup.model_cfg))
    start = int(meta["step"])
    ck.delete_after(start)
    print0(f"[{name}] resumed from {ck.directory}/{start} (step {start}/{setup.num_iterations})")
    state = {"step": jax.device_put(jnp.asarray(start, jnp.int32), sh["step"]), "params": items["params"],
             "opt_state": items["opt_state"]}
    return state, start, meta.get("loop", {})


def run(setup: Setup, next_batch: Callable, *, name: str, ck, log, data=None, meta=None, evaluate=None,
        eval_every: int | None = None, sample=None, show=(), save_optimizer: bool = True) -> tuple[dict, dict]:
    """Train setup.num_iterations steps. `next_batch(step, state)` gives the host batch [A, B_local, T] (its "info"
    dict, if any, is logged with the step); `evaluate` / `sample(state, step) -> dict` run every eval_every
    (default [train] eval_every) / sample_every steps and at the end; checkpoints (with `data`, the iterator whose
    position they save) every save_every steps and at the end. Returns (final state, summary)."""
    t0, tc, n = time.time(), setup.train_cfg, setup.num_iterations
    every = {"eval": tc.eval_every if eval_every is None else eval_every, "sample": tc.sample_every,
             "save": tc.save_every}
    state, start, carry = restore(setup, name, ck, log, data)
    summary = carry.get("summary", {})
    meter = Meter(name, setup, start, log, show, carry.get("elapsed", 0.0), carry.get("ema"))
    step_fn = jit_train_step(setup)
    for step in range(start, n + 1):
        due = {k: step == n or (e > 0 and step > 0 and step % e == 0) for k, e in every.items()}
        run_eval, run_sample, save = evaluate and due["eval"], sample and due["sample"], due["save"] and step > start
        if run_eval or run_sample or save:
            with meter.paused():
                res = evaluate(state, step) if run_eval else {}
                if res:
                    summary.update(res)
                    log.write(kind="eval", step=step, **res)
                    print0(f"[{name}] step {step}/{n} " + " ".join(
                        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
                if run_sample and (res := sample(state, step)):
                    log.write(kind="sample", step=step, **res)
                if save:
                    ck.save(step, params=state["params"], opt_state=state["opt_state"] if save_optimizer else None,
                            data=data, meta={**(meta or {}), "train": dataclasses.asdict(tc),
                                             "model": dataclasses.asdict(setup.model_cfg),
                                             "loop": {"elapsed": meter.elapsed, "ema": meter.ema, "summary": summary}})
        if step == n:
            break
        batch = next_batch(step, state)
        info = batch.pop("info", {})
        state, metrics = step_fn(state, put_batch(setup, batch))
        meter.update(step, metrics, info, batch["inputs"].size * jax.process_count())
    meter.flush()
    meter.bar.close()
    ck.wait()
    summary.update(steps=n, train_time_s=meter.elapsed, wall_time_s=time.time() - t0,
                   final_loss=meter.ema / (1 - 0.9 ** n) if meter.ema is not None else None)
    return state, summary
