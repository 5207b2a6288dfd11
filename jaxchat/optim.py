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
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonState

from jaxchat.config import ModelConfig, TrainConfig
from jaxchat.sharding import constrain

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


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


def orthogonalize(u_LxIxO, dtype):
    """Newton–Schulz of each layer's matrix, every device taking whole matrices of its own layers."""
    L = u_LxIxO.shape[0]
    mesh = jax.sharding.get_abstract_mesh()
    pad = 0 if mesh.empty else (-L) % mesh.size
    u = jnp.pad(u_LxIxO, ((0, pad), (0, 0), (0, 0))) if pad else u_LxIxO
    u = constrain(u.astype(dtype), ("ns_layers", None, None))
    return jax.vmap(newton_schulz)(u)[:L].astype(u_LxIxO.dtype)


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


def param_labels(params) -> dict:
    """'muon' for every block matrix, 'embed' for wte, 'head' for lm_head."""
    return {
        "wte": "embed",
        "lm_head": "head",
        "blocks": jax.tree.map(lambda _: "muon", params["blocks"]),
    }


def lr_multiplier(step, num_iterations: int, warmup_ratio: float, warmdown_ratio: float, final_lr_frac: float):
    """nanochat's schedule: linear warmup, constant, then linear warmdown to final_lr_frac at the last step.
    A traced step gives an array (inside the optimizer); a Python int gives a float computed on the host, so the
    loop's logging never queues a device op behind the step it has just launched."""
    n = max(int(num_iterations), 1)
    warmup = round(warmup_ratio * n)
    warmdown = round(warmdown_ratio * n)
    xp = np if isinstance(step, (int, np.integer)) else jnp
    step = xp.asarray(step, xp.float32)
    up = (step + 1) / max(warmup, 1)
    progress = (n - step) / max(warmdown, 1)
    down = progress * 1.0 + (1 - progress) * final_lr_frac
    mult = xp.where(step < warmup, up, xp.where(step <= n - warmdown, 1.0, down))
    return float(mult) if xp is np else mult


def muon_momentum(step, start: float, end: float, warmup_steps: int):
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / max(warmup_steps, 1), 1.0)
    return (1 - frac) * start + frac * end


def _scale_by_width():
    """Keller Jordan's width scaling sqrt(max(1, fan_out / fan_in)) per [in, out] matrix (nanochat's
    sqrt(max(1, rows/cols)) with torch's [out, in] layout)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * math.sqrt(max(1.0, u.shape[-1] / u.shape[-2])), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(model_cfg: ModelConfig, cfg: TrainConfig, num_iterations: int) -> optax.GradientTransformation:
    """The full optimizer for a stage: partition into muon / embed / head, each with its LR schedule."""
    dscale = (model_cfg.n_embd / 768) ** -0.5

    def schedule(base_lr):
        def lr(count):
            m = lr_multiplier(count, num_iterations, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac)
            return base_lr * cfg.init_lr_frac * m

        return lr

    beta = lambda count: muon_momentum(  # noqa: E731
        count, cfg.muon_momentum_start, cfg.muon_momentum_end, cfg.muon_momentum_warmup)
    muon = optax.chain(
        optax.inject_hyperparams(scale_by_muon, static_args=("ns_dtype",))(
            beta=beta, eps=NS_EPS, ns_dtype=model_cfg.compute_dtype),
        _scale_by_width(),
        optax.scale_by_learning_rate(schedule(cfg.matrix_lr)),
    )

    def adamw(base_lr):
        return optax.adamw(schedule(base_lr * dscale), b1=0.8, b2=0.95, eps=1e-10, weight_decay=cfg.weight_decay)

    tx = optax.partition({"muon": muon, "embed": adamw(cfg.embedding_lr), "head": adamw(cfg.unembedding_lr)},
                         param_labels)
    if cfg.grad_clip and cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx


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

