"""Optimizer: Muon for the transformer-block matrices, AdamW for the embedding and the lm_head (nanochat V1).

| group  | params            | rule                                                             |
|--------|-------------------|------------------------------------------------------------------|
| muon   | blocks.* (stacked [L, in, out]; each layer's matrix separately) | optax.contrib.scale_by_muon (Nesterov, 5 NS steps (3.4445, −4.7750, 2.0315)), × sqrt(max(1, out/in)), lr 0.02 |
| embed  | wte               | AdamW lr 0.2 × (width/768)^-0.5, betas (0.8, 0.95), eps 1e-10      |
| head   | lm_head           | AdamW lr 0.004 × (width/768)^-0.5, same betas/eps                  |

Every learning rate is × `init_lr_frac` × the schedule multiplier (warmup, constant, linear warmdown to
`final_lr_frac`). Muon's momentum goes 0.85 → 0.95 over the first 300 steps (a schedule inside the optimizer
state via `inject_hyperparams`, so the update is a pure function of (grads, state)).

Difference from nanochat V1, kept on purpose: the Nesterov momentum applies Adam-style bias correction, as
optax's Muon does (nanochat's does not). Newton–Schulz normalises the update's scale, so only the first few
steps' mix of gradient and momentum differs slightly.

On a mesh, Newton–Schulz runs on whole matrices, each device orthogonalising its own layers (the stacked
[L, in, out] update is re-laid out along L, padded to a multiple of the device count), in the model's compute
dtype (bf16 on GPU presets, as nanochat). Run on FSDP-sharded matrices it all-reduced every `X·Xᵀ`.

`optimizer = "master"`: nanochat master's MuonAdamW; s = (width/768)^-0.5, AdamW eps 1e-10, LRs as above (warmup over
`warmup_steps`); momentum → `muon_momentum_warmdown` across the warmdown; Muon's `weight_decay` cautious, cosine → 0.

| group   | params                          | rule                                                             |
|---------|---------------------------------|------------------------------------------------------------------|
| muon    | blocks.*, ve_gate               | `master_muon`: lerp Nesterov (no bias correction), MuonEq, Polar Express, Muon+, NorMuon (β2 0.9), × sqrt(max(1, out/in)) |
| lm_head / wte / value_embeds | (own key)  | AdamW unembedding_lr·s / embedding_lr·s / ·0.5; β (0.8, 0.96) / (0.8, 0.995) ×2; wd 0.01 / 0.001 / 0.01 |
| resid_lambdas / x0_lambdas   | (own key)  | AdamW scalar_lr·0.01 / scalar_lr; β (0.8, 0.95) / (0.96, 0.95); wd 0.05 / 0 |
| scalars | smear_gate, smear_lambda, backout_lambda | AdamW lr 0.2 (unscaled), β (0.8, 0.95), wd 0              |

Difference from master: on bf16 GPUs master stores wte and value_embeds (and their Adam moments) in bf16; here
params and optimizer state stay float32 (only the polar iteration runs in the compute dtype, as master's).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonState

from jaxchat.config import ConfigError, ModelConfig, TrainConfig
from jaxchat.sharding import constrain

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
# Polar Express (Amsel et al. 2025, arXiv 2505.16932): one (a, b, c) per iteration, as nanochat master
PE_COEFFS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
             (4.042929935166739, -2.808917465908714, 0.5000178451051316),
             (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
             (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
             (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))


def newton_schulz(x_IxO):
    """Orthogonalise one [in, out] matrix: Frobenius-normalise, then NS_STEPS quintic iterations
    X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ, on the wide orientation (optax's and nanochat's iteration)."""
    tall = x_IxO.shape[0] > x_IxO.shape[1]
    x = x_IxO.T if tall else x_IxO
    x = x / (jnp.linalg.norm(x, ord="fro") + NS_EPS)
    a, b, c = (jnp.asarray(k, x.dtype) for k in NS_COEFFS)
    for _ in range(NS_STEPS):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def polar_express(x_IxO):
    """Master's orthogonalisation of one [in, out] matrix (torch's [out, in] transposed): MuonEq (each output
    neuron's weights rescaled to the mean norm, norms in float32), divide by 1.01·‖X‖ + 1e-6, then Polar Express
    on the smaller Gram matrix (master's tall/wide branches; a square matrix iterates on XᵀX, as master's wide)."""
    # Matmuls in the compute dtype, elementwise math in float32 as torch's bf16 ops do: a coefficient such as
    # 8.1566 rounded to bf16 (8.1875) would double the iteration's error.
    f, dt = (lambda y: y.astype(jnp.float32)), x_IxO.dtype
    target = jnp.linalg.norm(f(x_IxO)) / math.sqrt(x_IxO.shape[1])
    x = x_IxO * (target / jnp.maximum(jnp.linalg.norm(f(x_IxO), axis=0, keepdims=True), 1e-6)).astype(dt)
    x = (f(x) / (jnp.linalg.norm(f(x)) * 1.01 + 1e-6)).astype(dt)
    wide = x.shape[0] < x.shape[1]
    for a, b, c in PE_COEFFS:
        A = x @ x.T if wide else x.T @ x
        B = (b * f(A) + c * f(A @ A)).astype(dt)
        x = (a * f(x) + f(B @ x if wide else x @ B)).astype(dt)
    return x


def orthogonalize(u_LxIxO, dtype, fn=newton_schulz):
    """`fn` (Newton–Schulz or Polar Express) of each layer's matrix, every device taking whole matrices of its
    own layers."""
    L = u_LxIxO.shape[0]
    mesh = jax.sharding.get_abstract_mesh()
    pad = 0 if mesh.empty else (-L) % mesh.size
    u = jnp.pad(u_LxIxO, ((0, pad), (0, 0), (0, 0))) if pad else u_LxIxO
    u = constrain(u.astype(dtype), ("ns_layers", None, None))
    return jax.vmap(fn)(u)[:L].astype(u_LxIxO.dtype)


def scale_by_muon(beta, eps=NS_EPS, ns_dtype="float32"):
    """Muon's direction for stacked [L, in, out] block matrices: bias-corrected Nesterov momentum (optax's
    `scale_by_muon`, whose state layout it keeps), then `orthogonalize`. `eps` is kept as a hyperparameter
    only so checkpoints keep their layout; the normaliser uses NS_EPS."""
    del eps

    def init(params):
        return MuonState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                         ns_coeffs=jnp.asarray(NS_COEFFS))

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, beta, 1)
        count = optax.safe_increment(state.count)
        mu_hat = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g,
                              optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
                              optax.tree.bias_correction(updates, beta, count))
        out = jax.tree.map(lambda u: orthogonalize(u, jnp.dtype(ns_dtype)), mu_hat)
        return out, MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)

    return optax.GradientTransformation(init, update)


class MasterMuonState(NamedTuple):
    count: jax.Array
    mu: optax.Updates  # Nesterov momentum, like the params
    nu: optax.Updates  # NorMuon's factored second moment: [L, 1, out] when out >= in, else [L, in, 1]


def _normuon_axis(shape) -> int:
    """Master averages over torch's columns (our `in`) when rows >= cols (out >= in), else over its rows."""
    return -2 if shape[-1] >= shape[-2] else -1


def master_muon(lr, momentum, weight_decay, beta2=0.9, ns_dtype="float32"):
    """nanochat master's fused Muon step for stacked [L, in, out] matrices, each matrix on its own. `lr`,
    `momentum`, `weight_decay` are functions of the step count; the result is the whole param update."""

    def init(params):
        def factored(p):
            return jnp.zeros([1 if i == p.ndim + _normuon_axis(p.shape) else d for i, d in enumerate(p.shape)])
        return MasterMuonState(jnp.zeros([], jnp.int32), *(jax.tree.map(f, params) for f in (jnp.zeros_like, factored)))

    def update(grads, state, params):
        m, wd = momentum(state.count), weight_decay(state.count)

        def one(g, buf, v, p):
            buf = buf + (1 - m) * (g - buf)
            g = g + m * (buf - g)  # Nesterov, by lerps as master (no bias correction)
            o = orthogonalize(g, jnp.dtype(ns_dtype), polar_express)
            norm = lambda x, k=1: jnp.sqrt(jnp.sum(x, axis=(-2, -1), keepdims=True) * k)  # noqa: E731
            o = o * (math.sqrt(min(o.shape[-2:])) / jnp.maximum(norm(o * o), 1e-6))  # Muon+: ‖O‖ of an orthogonal O
            # NorMuon: per-neuron step sizes from the second moment of O, the total norm unchanged
            ax = _normuon_axis(o.shape)
            k, v_mean = o.shape[ax], jnp.mean(o * o, axis=ax, keepdims=True)
            v = v + (1 - beta2) * (v_mean - v)
            step = jax.lax.rsqrt(jnp.maximum(v, 1e-10))
            o = o * (step * (norm(v_mean, k) / jnp.maximum(norm(v_mean * step * step, k), 1e-10)))
            lr_w = lr(state.count) * math.sqrt(max(1.0, p.shape[-1] / p.shape[-2]))
            # cautious weight decay: only where the step moves the weight toward zero (O·p ≥ 0)
            return -(lr_w * o + lr_w * wd * p * (o * p >= 0)), buf, v

        out = jax.tree.map(one, grads, state.mu, state.nu, params)
        u, mu, nu = jax.tree.transpose(jax.tree.structure(grads), jax.tree.structure((0, 0, 0)), out)
        return u, MasterMuonState(optax.safe_increment(state.count), mu, nu)

    return optax.GradientTransformation(init, update)


_MASTER_LABELS = {"blocks": "muon", "ve_gate": "muon",  # master's group of each param not named by its own key
                  "smear_gate": "scalars", "smear_lambda": "scalars", "backout_lambda": "scalars"}


def master_adamw_groups(cfg: TrainConfig, dscale: float) -> dict:
    """label -> (lr, (β1, β2), weight decay) of master's AdamW groups (gpt.py setup_optimizer)."""
    emb = cfg.embedding_lr * dscale
    return {"lm_head": (cfg.unembedding_lr * dscale, (0.8, 0.96), 0.01), "wte": (emb, (0.8, 0.995), 0.001),
            "value_embeds": (emb * 0.5, (0.8, 0.995), 0.01), "resid_lambdas": (cfg.scalar_lr * 0.01, (0.8, 0.95), 0.05),
            "x0_lambdas": (cfg.scalar_lr, (0.96, 0.95), 0.0), "scalars": (0.2, (0.8, 0.95), 0.0)}


def param_labels(params, master: bool = False) -> dict:
    """V1: 'muon' for every block matrix, 'embed' for wte, 'head' for lm_head. Master: 'muon' for the block
    matrices and ve_gate, else the `master_adamw_groups` label (an unknown param is partition's error)."""
    if master:
        return {k: jax.tree.map(lambda _, k=k: _MASTER_LABELS.get(k, k), v) for k, v in params.items()}
    return {"wte": "embed", "lm_head": "head", "blocks": jax.tree.map(lambda _: "muon", params["blocks"])}


def lr_multiplier(step, num_iterations: int, warmup_ratio: float, warmdown_ratio: float, final_lr_frac: float,
                  warmup_steps: int = -1):
    """nanochat's schedule: linear warmup (over `warmup_steps` if > 0, as master, else warmup_ratio·n), constant,
    then linear warmdown to final_lr_frac at the last step.
    A traced step gives an array (inside the optimizer); a Python int gives a float computed on the host, so the
    loop's logging never queues a device op behind the step it has just launched."""
    n = max(int(num_iterations), 1)
    warmup = warmup_steps if warmup_steps > 0 else round(warmup_ratio * n)
    warmdown = round(warmdown_ratio * n)
    xp = np if isinstance(step, (int, np.integer)) else jnp
    step = xp.asarray(step, xp.float32)
    up = (step + 1) / max(warmup, 1)
    progress = (n - step) / max(warmdown, 1)
    down = progress * 1.0 + (1 - progress) * final_lr_frac
    mult = xp.where(step < warmup, up, xp.where(step <= n - warmdown, 1.0, down))
    return float(mult) if xp is np else mult


def muon_momentum(step, start: float, end: float, warmup_steps: int, final: float = -1.0,
                  num_iterations: int = 1, warmdown_ratio: float = 0.0):
    """start → end over warmup_steps, then end; with final >= 0 (master), past the warmup also end → final
    linearly across the LR warmdown (master checks the warmup first)."""
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.minimum(step / max(warmup_steps, 1), 1.0)
    beta = (1 - frac) * start + frac * end
    if final < 0:
        return beta
    warmdown = round(warmdown_ratio * num_iterations)
    progress = (step - (num_iterations - warmdown)) / max(warmdown, 1)
    return jnp.where((step >= warmup_steps) & (progress >= 0), end * (1 - progress) + final * progress, beta)


def _scale_by_width():
    """Keller Jordan's width scaling sqrt(max(1, fan_out / fan_in)) per [in, out] matrix (nanochat's
    sqrt(max(1, rows/cols)) with torch's [out, in] layout)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * math.sqrt(max(1.0, u.shape[-1] / u.shape[-2])), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def schedules(cfg: TrainConfig, num_iterations: int, weight_decay: float | None = None) -> tuple:
    """step → LR multiplier, Muon momentum, master's Muon weight decay (cosine from `weight_decay`, default cfg's,
    to 0): base_train's get_lr_multiplier / get_muon_momentum / get_weight_decay."""
    n, wd = max(int(num_iterations), 1), cfg.weight_decay if weight_decay is None else weight_decay
    return (lambda s: lr_multiplier(s, n, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac, cfg.warmup_steps),
            lambda s: muon_momentum(s, cfg.muon_momentum_start, cfg.muon_momentum_end, cfg.muon_momentum_warmup,
                                    cfg.muon_momentum_warmdown, n, cfg.warmdown_ratio),
            lambda s: wd * 0.5 * (1 + jnp.cos(jnp.pi * s / n)))


def make_optimizer(model_cfg: ModelConfig, cfg: TrainConfig, num_iterations: int) -> optax.GradientTransformation:
    """The full optimizer for a stage: V1's muon / embed / head or master's groups, each with its LR schedule."""
    if cfg.optimizer != "master" and (model_cfg.ve_layers or model_cfg.layer_lambdas or model_cfg.smear
                                      or model_cfg.backout):
        raise ConfigError("master's extra parameters (value embeddings, layer lambdas, smear, backout) have "
                          "groups in master's optimizer only: set optimizer = \"master\"")
    dscale = (model_cfg.n_embd / 768) ** -0.5
    lrm, beta, wd = schedules(cfg, num_iterations)
    schedule = lambda base_lr: lambda count: base_lr * cfg.init_lr_frac * lrm(count)  # noqa: E731
    if cfg.optimizer == "master":
        groups = {k: optax.adamw(schedule(lr), b1=b1, b2=b2, eps=1e-10, weight_decay=d)
                  for k, (lr, (b1, b2), d) in master_adamw_groups(cfg, dscale).items()}
        groups["muon"] = master_muon(schedule(cfg.matrix_lr), beta, wd, ns_dtype=model_cfg.compute_dtype)
        labels = lambda p: param_labels(p, master=True)  # noqa: E731
    else:
        muon = optax.chain(
            optax.inject_hyperparams(scale_by_muon, static_args=("ns_dtype",))(
                beta=beta, eps=NS_EPS, ns_dtype=model_cfg.compute_dtype),
            _scale_by_width(),
            optax.scale_by_learning_rate(schedule(cfg.matrix_lr)),
        )
        adamw = lambda base_lr: optax.adamw(  # noqa: E731
            schedule(base_lr * dscale), b1=0.8, b2=0.95, eps=1e-10, weight_decay=cfg.weight_decay)
        groups = {"muon": muon, "embed": adamw(cfg.embedding_lr), "head": adamw(cfg.unembedding_lr)}
        labels = param_labels
    tx = optax.partition(groups, labels)
    if cfg.grad_clip and cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx


def restart_schedules(opt_state):
    """Every step count in an optax state set to 0, except the bias-correction counts (Adam's, V1 Muon's)."""
    has_count = lambda s: hasattr(s, "_fields") and "count" in s._fields  # noqa: E731
    keep = (optax.ScaleByAdamState, MuonState)  # V1's Muon count is its bias correction

    def restart(s):
        if not has_count(s) or isinstance(s, keep):
            return s
        return s._replace(count=jax.device_put(jnp.zeros_like(s.count), s.count.sharding))

    return jax.tree.map(restart, opt_state, is_leaf=has_count)


def opt_state_shardings(tx, params_shapes, param_shardings, replicated):
    """Shardings for the optimizer state: every leaf that mirrors a param takes that param's sharding (from
    the rules table); counters and other scalars are replicated."""
    abstract = jax.eval_shape(tx.init, params_shapes)
    # A state leaf mirrors a param when its key path ends with that param's path and the shapes agree
    # (Muon's momentum, Adam's mu/nu); optax's own wrappers (partition, inject_hyperparams) only add prefixes.
    by_path = {}
    for (path, s), sh in zip(jax.tree_util.tree_flatten_with_path(params_shapes)[0], jax.tree.leaves(param_shardings)):
        by_path[_path_names(path)] = (tuple(s.shape), sh)

    def pick(path, leaf):
        names = _path_names(path)
        for n in range(len(names), 0, -1):
            hit = by_path.get(names[-n:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract)


def _path_names(path) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
    return tuple(out)

