"""The one training machinery every stage uses: state, the pure jitted step, and the loop.

State is a plain dict pytree `{"step": int32[], "params": {...}, "opt_state": optax state}`; the step is
`train_step(state, batch) -> (state, metrics)`, jitted with the state donated, where `batch` holds
`inputs` and `targets` as [A, B, T] int32 (A micro-steps of gradient accumulation, B global rows) and
optionally `weights` [A, B, T] float32. Targets < 0 are ignored. The loss is
    Σ weights · nll(target) / (number of targets ≥ 0)   over the whole [A, B, T] batch,
which is the mean token loss for pre/mid-training (weights = 1), the masked mean for SFT (masked targets
set to −1), and nanochat's token-normalised policy-gradient loss for RL (weights = advantages).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.config import ModelConfig, TrainConfig
from jaxchat.optim import make_optimizer, opt_state_shardings


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


# ----------------------------------------------------------------------------------------------------
# Horizon and batch arithmetic (nanochat's rules)


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


def horizon(model_cfg: ModelConfig, cfg: TrainConfig, tokens_per_step: int) -> tuple[int, str]:
    """Number of optimizer steps: num_iterations > target_flops > target_param_data_ratio (nanochat)."""
    if cfg.num_iterations > 0:
        return cfg.num_iterations, "num_iterations"
    if cfg.target_flops > 0:
        return round(cfg.target_flops / (gpt.flops_per_token(model_cfg) * tokens_per_step)), "target_flops"
    if cfg.target_param_data_ratio > 0:
        return int(cfg.target_param_data_ratio * gpt.num_params(model_cfg) // tokens_per_step), "param_data_ratio"
    raise ValueError("no training horizon: set num_iterations, target_flops or target_param_data_ratio")


# ----------------------------------------------------------------------------------------------------
# Device peak FLOP/s for MFU (dense bf16 tensor-core numbers, not the 2:4-sparsity figures).

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
    """bf16 dense peak of one device, looked up by its kind (longest matching name wins); None for CPUs and
    unknown devices (MFU is then not reported rather than guessed)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    kind = device.device_kind
    best = None
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower() and (best is None or len(name) > len(best[0])):
            best = (name, flops)
    return best[1] if best else None


class Throughput:
    """Tokens/s, FLOP/s and MFU over the global batch, excluding the first `skip` (compiling) steps."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, n_devices: int, skip: int = 1):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak = device_peak_flops()
        self.n_devices, self.skip = n_devices, skip
        self.count, self.time, self.last = 0, 0.0, None

    def step(self, dt: float, tokens: int | None = None) -> dict:
        self.count += 1
        if self.count > self.skip:
            self.time += dt
        tok_s = (tokens or self.tokens_per_step) / dt if dt > 0 else float("nan")
        out = {"dt": dt, "tok_per_sec": tok_s, "flops_per_sec": tok_s * self.flops_per_token}
        if self.peak:
            out["mfu"] = out["flops_per_sec"] / (self.peak * self.n_devices)
        return out

    def eta(self, steps_left: int) -> float:
        n = self.count - self.skip
        return steps_left * (self.time / n) if n > 0 else float("nan")


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def now() -> float:
    return time.perf_counter()


def to_host(tree):
    return jax.tree.map(lambda x: np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x), jax.device_get(tree))


# ----------------------------------------------------------------------------------------------------
# The loop


@dataclass
class Loop:
    """Everything a stage hands the shared loop. `batches` yields host numpy batches [A, B_local, T] and (for
    exact resume) has get_state/set_state; `evaluate(state, step)` / `sample(state, step)` return dicts that
    are logged; `meta()` returns the JSON-able configs stored with every checkpoint."""

    setup: Setup
    batches: Any
    name: str
    tokens_per_step: int
    checkpoints: Any = None  # jaxchat.checkpoint.Checkpoints
    log: Any = None  # jaxchat.common.JsonlLog
    evaluate: Callable | None = None
    eval_every: int = -1
    sample: Callable | None = None
    sample_every: int = -1
    save_every: int = -1
    meta: Callable[[], dict] = dict
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace the checkpoints an earlier run left in the folder
    save_optimizer: bool = True
    save_data_state: bool = True
    flops_per_token: float | None = None
    # Instead of `batches`: batch_fn(state, step) -> (host batch, info dict logged with the step). RL uses it to
    # sample rollouts from the current params; its data position is the step itself (save_data_state=False).
    batch_fn: Callable | None = None
    show: tuple = ()  # info keys to show in the progress line


def _due(step: int, every: int, last: bool) -> bool:
    return last or (every > 0 and step > 0 and step % every == 0)


def _start_afresh(name: str, ck, overwrite: bool) -> None:
    """A run without --resume over a folder of old checkpoints. Checked before any work: otherwise the first
    save would fail on a step number the old run already wrote, after that much training was done."""
    from jaxchat.checkpoint import CheckpointError
    from jaxchat.common import print0

    steps = ck.steps()
    if not overwrite:
        raise CheckpointError(f"{ck.directory} holds checkpoints of an earlier run (steps {steps}). Pass --resume to "
                              f"continue from step {steps[-1]}, or --overwrite to start afresh and replace them.")
    print0(f"[{name}] starting afresh (--overwrite): removing the old checkpoints {steps} in {ck.directory}")
    ck.delete_after(-1)


def run(loop: Loop) -> tuple[dict, dict]:
    """Train for setup.num_iterations steps with evaluation, sampling, checkpointing and exact resume.
    Returns (final state, summary dict)."""
    import sys

    from tqdm import tqdm

    from jaxchat.checkpoint import abstract_like
    from jaxchat.common import print0

    setup, n = loop.setup, loop.setup.num_iterations
    step_fn = jit_train_step(setup)
    state = setup.state
    start, elapsed, ema, summary = 0, 0.0, None, {}
    ck = loop.checkpoints
    if not loop.resume:
        if ck is not None and ck.steps():
            _start_afresh(loop.name, ck, loop.overwrite)
        if loop.log is not None:
            loop.log.clear()
    if loop.resume and ck is not None and ck.latest_step() is not None:
        abstract_opt = abstract_like(state["opt_state"], setup.state_shardings["opt_state"])
        items, meta = ck.restore(
            abstract_params=abstract_like(state["params"], setup.state_shardings["params"]),
            abstract_opt_state=abstract_opt,
            data=loop.batches if loop.save_data_state else None,
            expect_model=meta_model(setup.model_cfg))
        start = int(meta["step"])
        state = {"step": jax.device_put(jnp.asarray(start, jnp.int32), setup.state_shardings["step"]),
                 "params": items["params"], "opt_state": items["opt_state"]}
        loop_state = meta.get("loop", {})
        elapsed, ema, summary = loop_state.get("elapsed", 0.0), loop_state.get("ema"), loop_state.get("summary", {})
        ck.delete_after(start)
        print0(f"[{loop.name}] resumed from {ck.directory}/{start} (step {start}/{n})")
    fpt = loop.flops_per_token if loop.flops_per_token is not None else gpt.flops_per_token(setup.model_cfg)
    tput = Throughput(loop.tokens_per_step, fpt, setup.mesh.size)
    tty = sys.stderr.isatty()
    bar = tqdm(total=n, initial=start, desc=loop.name, disable=not tty, dynamic_ncols=True)
    print_every = max(1, n // 40)
    log = loop.log
    pending = None  # (step, device metrics, tokens, info): fetched one step late, so the host never waits
    last_fetch = now()

    def flush():
        """Pull the previous step's metrics (blocks only until that step is done) and log them."""
        nonlocal pending, ema, elapsed, last_fetch
        if pending is None:
            return
        step, dev_metrics, tokens, info = pending
        pending = None
        metrics = to_host(dev_metrics)
        t = now()
        dt, last_fetch = t - last_fetch, t
        if step > start:  # the first step after (re)start includes compilation
            elapsed += dt
        perf = tput.step(dt, tokens)
        ema = 0.9 * (ema or 0.0) + 0.1 * metrics["loss"]  # nanochat's EMA(0.9), debiased below
        record = {"kind": "train", "step": step, **metrics, "ema_loss": ema / (1 - 0.9 ** (step + 1)), **perf,
                  "lr_mult": float(_lr_mult(setup, step)), "elapsed": elapsed, **info}
        if log:
            log.write(**record)
        post = {"loss": f"{metrics['loss']:.3f}", "tok/s": f"{perf['tok_per_sec']:,.0f}",
                "eta": format_seconds(tput.eta(n - step - 1))}
        post.update({k: (f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in info.items() if k in loop.show})
        if "mfu" in perf:
            post["mfu"] = f"{100 * perf['mfu']:.1f}%"
        bar.set_postfix(post, refresh=False)
        bar.update(1)
        if not tty and (step % print_every == 0 or step == n - 1):
            print0(f"[{loop.name}] step {step + 1}/{n} " + " ".join(f"{k} {v}" for k, v in post.items()))

    for step in range(start, n + 1):
        last = step == n
        boundary = last or any(loop_fn and _due(step, every, last) for loop_fn, every in
                               ((loop.evaluate, loop.eval_every), (loop.sample, loop.sample_every),
                                (ck, loop.save_every)))
        if boundary:
            flush()
            last_fetch_paused = now()
        if loop.evaluate and _due(step, loop.eval_every, last):
            res = loop.evaluate(state, step)
            summary.update({f"{k}": v for k, v in res.items()})
            if log:
                log.write(kind="eval", step=step, **res)
            print0(f"[{loop.name}] step {step}/{n} " + " ".join(f"{k} {_fmt(v)}" for k, v in res.items()))
        if loop.sample and _due(step, loop.sample_every, last):
            res = loop.sample(state, step) or {}
            if log and res:
                log.write(kind="sample", step=step, **res)
        if ck is not None and (_due(step, loop.save_every, last) and step > start):
            ck.save(step, params=state["params"], opt_state=state["opt_state"] if loop.save_optimizer else None,
                    data=loop.batches if loop.save_data_state else None,
                    meta={**loop.meta(), "model": meta_model(setup.model_cfg),
                          "loop": {"elapsed": elapsed, "ema": ema, "summary": summary}})
        if last:
            break
        if boundary:  # evaluation/saving time is not training time
            last_fetch += now() - last_fetch_paused
        info = {}
        if loop.batch_fn is not None:
            flush()  # the rollouts need the current params anyway
            host_batch, info = loop.batch_fn(state, step)
        else:
            host_batch = next(loop.batches)  # prepared while the previous step still runs
        state, dev_metrics = step_fn(state, put_batch(setup, host_batch))
        flush()
        pending = (step, dev_metrics, int(np.prod(host_batch["inputs"].shape)) * jax.process_count(), info)
    flush()
    bar.close()
    if ck is not None:
        ck.wait()
    summary.update({"steps": n, "train_time_s": elapsed,
                    "final_loss": ema / (1 - 0.9 ** n) if ema is not None else None})
    return state, summary


def _lr_mult(setup: Setup, step: int) -> float:
    from jaxchat.optim import lr_multiplier

    tc = setup.train_cfg
    return float(lr_multiplier(step, setup.num_iterations, tc.warmup_ratio, tc.warmdown_ratio, tc.final_lr_frac))


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def meta_model(model_cfg: ModelConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(model_cfg)
