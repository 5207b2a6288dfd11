"""The GPT: nanochat's architecture (V1, and master's by switches) as a Flax NNX module (init and axis metadata)
and a pure `forward`.

embedding → RMSNorm → `depth` pre-norm blocks [x += attn(norm(x)); x += mlp(norm(x))] → RMSNorm → untied lm_head
→ fp32 logits soft-capped at 15. Attention: q/k/v projections, rotary (split halves) then RMSNorm on q and k,
causal GQA; MLP: ReLU², 4× width; no biases. Params are one dict, layers stacked on a leading axis (for scan):
wte [V, D], lm_head [D, V], blocks.{wq [L, D, H·Dh], wk/wv [L, D, K·Dh], wo [L, H·Dh, D], w_fc [L, D, F],
w_proj [L, F, D]}. nanochat master's switches (ModelConfig) add value_embeds [n_ve, V, K·Dh] + ve_gate
[n_ve, 12, K], resid_lambdas / x0_lambdas [L], smear_gate [24, 1] + smear_lambda [1], backout_lambda [1], sliding
windows, q·k scale and padded vocab rows. Name suffixes: B batch, T query length, S cache length, D width, H heads,
K kv heads, G = H/K, Dh head dim, V vocab, L layers, F MLP width."""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from jaxchat.config import ModelConfig
from jaxchat.sharding import RULES, constrain, spec_for, tree_shardings

Params = dict[str, Any]
# torch's F.rms_norm(eps=None) uses the dtype's machine epsilon; we normalise in float32 with that value.
RMS_EPS = float(jnp.finfo(jnp.float32).eps)
ATTN_CHUNKS = 2  # causal query blocks in the XLA attention (see causal_attention)
ACT = ("batch", "seq", "act_embed")  # logical layout of the residual stream
VE_GATE, SMEAR_GATE = 12, 24  # input channels of master's value-embedding and smear gates
BATCH = ("batch", "seq")  # token ids and targets


# ----------------------------------------------------------------------------------------------------
# Parameters


class GPT(nnx.Module):
    """nanochat's GPT with nanochat's init. Each weight is an `nnx.Param` whose `axes` metadata names its
    logical axes (the sharding rules table in `jaxchat/sharding.py` maps those to mesh axes)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        L, D, V, F = cfg.n_layer, cfg.n_embd, cfg.padded_vocab, cfg.mlp_dim
        HD, KD, K, n_ve = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads, len(cfg.ve_layers)
        f32, master = jnp.float32, cfg.init == "master"

        def dense(key, shape, fan_in, fan_out, gain=1.0):
            if master:  # uniform with std gain/sqrt(D): no outliers (master's init)
                s = gain * math.sqrt(3 / D)
                return jax.random.uniform(key, shape, f32, -s, s)
            # Normal(0, 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)))  (arXiv 2310.17813, as nanochat)
            std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
            return std * jax.random.normal(key, shape, f32)

        zeros = lambda shape: jnp.zeros(shape, f32)  # noqa: E731
        normal = lambda std, shape: std * jax.random.normal(rngs.params(), shape, f32)  # noqa: E731
        small = lambda shape: jax.random.uniform(rngs.params(), shape, f32, 0.0, 0.02)  # gates start just open  # noqa
        self.wte = nnx.Param(normal(0.8 if master else 1.0, (V, D)), axes=("vocab", "embed"))
        self.lm_head = nnx.Param(normal(0.001, (D, V)) if master else zeros((D, V)), axes=("embed", "vocab"))
        self.blocks = nnx.Dict(
            wq=nnx.Param(dense(rngs.params(), (L, D, HD), D, HD), axes=("layers", "embed", "heads")),
            wk=nnx.Param(dense(rngs.params(), (L, D, KD), D, KD), axes=("layers", "embed", "kv_heads")),
            wv=nnx.Param(dense(rngs.params(), (L, D, KD), D, KD), axes=("layers", "embed", "kv_heads")),
            wo=nnx.Param(zeros((L, HD, D)), axes=("layers", "heads", "embed")),
            w_fc=nnx.Param(dense(rngs.params(), (L, D, F), D, F, gain=0.4), axes=("layers", "embed", "mlp")),
            w_proj=nnx.Param(zeros((L, F, D)), axes=("layers", "mlp", "embed")),
        )
        # master's extra parameters, with master's init whatever `init` says (it is part of each feature)
        if n_ve:
            s = math.sqrt(3 / D)
            self.value_embeds = nnx.Param(jax.random.uniform(rngs.params(), (n_ve, V, KD), f32, -s, s),
                                          axes=("layers", "vocab", "embed"))
            self.ve_gate = nnx.Param(small((n_ve, VE_GATE, K)), axes=("layers", "scalar", "scalar"))
        if cfg.layer_lambdas:  # stronger residual early, less of x0 deep
            frac = jnp.arange(L, dtype=f32) / max(L - 1, 1)
            self.resid_lambdas = nnx.Param(1.15 - 0.10 * frac, axes=("layers",))
            self.x0_lambdas = nnx.Param(0.20 - 0.15 * frac, axes=("layers",))
        if cfg.smear:
            self.smear_gate = nnx.Param(small((SMEAR_GATE, 1)), axes=("scalar", "scalar"))
            self.smear_lambda = nnx.Param(zeros((1,)), axes=("scalar",))
        if cfg.backout:
            self.backout_lambda = nnx.Param(jnp.full((1,), 0.2, f32), axes=("scalar",))

    def params(self) -> Params:
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def __call__(self, tokens_BxT, cache=None, lengths_B=None):
        return forward(self.params(), tokens_BxT, self.cfg, cache=cache, lengths_B=lengths_B)


def init_params(cfg: ModelConfig, key) -> Params:
    """Pure init: a fresh params dict (jit it with out_shardings to create it already sharded)."""
    return GPT(cfg, rngs=nnx.Rngs(params=key)).params()


def param_axes(cfg: ModelConfig) -> dict:
    """The logical axes of every param, as a dict parallel to the params (computed abstractly)."""
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    axes = jax.tree.map(lambda v: v.get_metadata()["axes"], state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(axes)


def param_shapes(cfg: ModelConfig) -> Params:
    """Shape/dtype structs of the params without allocating them."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def param_shardings(cfg: ModelConfig, mesh) -> Params:
    """Every param's NamedSharding on `mesh`, from its logical axes and the rules table."""
    return tree_shardings(param_axes(cfg), param_shapes(cfg), mesh)


def num_params(cfg: ModelConfig) -> int:
    return scaling_params(cfg)["total"]


def scaling_params(cfg: ModelConfig) -> dict:
    """Parameter counts by group, as master's `num_scaling_params` (its horizon uses transformer_matrices +
    lm_head); the gates of value embeddings sit in the blocks, the smear gate among the scalars."""
    n = {k: sum(math.prod(x.shape) for x in jax.tree.leaves(v)) for k, v in param_shapes(cfg).items()}
    out = {"wte": n["wte"], "value_embeds": n.get("value_embeds", 0), "lm_head": n["lm_head"],
           "transformer_matrices": n["blocks"] + n.get("ve_gate", 0),
           "scalars": sum(n.get(k, 0) for k in ("resid_lambdas", "x0_lambdas", "smear_gate", "smear_lambda",
                                                "backout_lambda"))}
    return {**out, "total": sum(out.values())}


def flops_per_token(cfg: ModelConfig) -> float:
    """nanochat's estimate (master's `estimate_flops`): 6 × the params that multiply activations (lm_head and the
    gates included, lookups and scalars not) + 12·H·Dh·min(window, T) per layer (PaLM-style: full, not
    causal-halved attention; T = max_seq_len)."""
    n = scaling_params(cfg)
    matmul = n["total"] - n["wte"] - n["value_embeds"] - n["scalars"] + SMEAR_GATE * cfg.smear
    T = cfg.max_seq_len
    return 6.0 * matmul + sum(12.0 * cfg.n_head * cfg.head_dim * min(w or T, T) for w in cfg.windows)


# ----------------------------------------------------------------------------------------------------
# Pieces


def rms_norm(x):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + RMS_EPS)).astype(x.dtype)


def rotary_tables(pos_BxT, head_dim: int, theta: float):
    """cos/sin of shape [B, T, Dh/2] for absolute positions (float32)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = pos_BxT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(freqs), jnp.sin(freqs)


def apply_rotary(x_BxTxNxDh, cos_BxTxR, sin_BxTxR):
    """Split-halves rotary: y1 = x1·cos + x2·sin, y2 = −x1·sin + x2·cos (tables broadcast over B when B=1)."""
    B, T, N, Dh = x_BxTxNxDh.shape
    x = x_BxTxNxDh.reshape(B, T, N, 2, Dh // 2)
    x1, x2 = x[..., 0, :], x[..., 1, :]
    cos = cos_BxTxR[:, :, None, :].astype(x.dtype)
    sin = sin_BxTxR[:, :, None, :].astype(x.dtype)
    return jnp.stack([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-2).reshape(B, T, N, Dh)


def _attn_impl(cfg: ModelConfig):
    if cfg.attn_impl == "auto":
        return "cudnn" if jax.default_backend() == "gpu" and cfg.compute_dtype != "float32" else "xla"
    return cfg.attn_impl


def causal_attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, cfg: ModelConfig, window=None):
    """Self-attention over one causal chunk (training, and prefill into an empty cache); with `window` w a query
    at p sees keys p-w..p (master's sliding window: cuDNN's local window, a mask on XLA).

    The XLA path moves heads in front of time once, then splits the queries into `ATTN_CHUNKS` blocks that
    each attend only to the keys at or before their end: the masked upper triangle is mostly never
    computed (−25% attention FLOPs for 2 blocks), which matters on CPU where XLA has no fused kernel."""
    impl = _attn_impl(cfg)
    B, T, H, Dh = q_BxTxHxDh.shape
    window = window if window is not None and window < T - 1 else None  # a window that covers T is no window
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, is_causal=True, implementation="cudnn",
                                            local_window_size=None if window is None else (window, 0))
    K = k_BxTxKxDh.shape[2]
    q = (q_BxTxHxDh * (1.0 / math.sqrt(Dh))).reshape(B, T, K, H // K, Dh).transpose(0, 2, 3, 1, 4)  # BKGTDh
    k = k_BxTxKxDh.transpose(0, 2, 1, 3)  # BKSDh
    v = v_BxTxKxDh.transpose(0, 2, 1, 3)
    n = ATTN_CHUNKS if T % ATTN_CHUNKS == 0 and T >= 64 * ATTN_CHUNKS else 1
    c = T // n
    outs = []
    for i in range(n):
        S = (i + 1) * c
        s = jnp.einsum("bkgtd,bksd->bkgts", q[:, :, :, i * c:S], k[:, :, :S], preferred_element_type=jnp.float32)
        back_TxS = (i * c + jnp.arange(c))[:, None] - jnp.arange(S)[None, :]  # how far back each key is
        visible_TxS = (back_TxS >= 0) & (back_TxS <= window) if window else back_TxS >= 0
        s = jnp.where(visible_TxS, s, -1e30)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgts,bksd->bkgtd", p, v[:, :, :S]))
    o = outs[0] if n == 1 else jnp.concatenate(outs, axis=3)
    return o.transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def cached_attention(q_BxTxHxDh, kc_BxKxSxDh, vc_BxKxSxDh, qpos_BxT, window=None):
    """Attention of new queries against the whole cache; key j is visible to a query at position p iff j <= p
    (and p - j <= window). Keys beyond a row's own position (padding of a ragged prefill, stale entries) are
    never visible."""
    B, T, H, Dh = q_BxTxHxDh.shape
    K, S = kc_BxKxSxDh.shape[1], kc_BxKxSxDh.shape[2]
    q = q_BxTxHxDh.reshape(B, T, K, H // K, Dh) * (1.0 / math.sqrt(Dh))
    back_BxTxS = qpos_BxT[:, :, None] - jnp.arange(S)[None, None, :]
    visible_BxTxS = (back_BxTxS >= 0) & (back_BxTxS <= window) if window else back_BxTxS >= 0
    s = jnp.einsum("btkgd,bksd->bkgts", q, kc_BxKxSxDh, preferred_element_type=jnp.float32)
    s = jnp.where(visible_BxTxS[:, None, None], s, -1e30)
    p = jax.nn.softmax(s, axis=-1).astype(vc_BxKxSxDh.dtype)
    o = jnp.einsum("bkgts,bksd->btkgd", p, vc_BxKxSxDh)
    return o.reshape(B, T, H, Dh)


def _write_rows(cache_BxKxSxDh, new_BxTxKxDh, pos_B):
    """Scatter new keys/values into a layer's cache at each row's own position. On a donated or loop-carried
    buffer XLA does this in place (no copy of the cache per token)."""
    B, T = new_BxTxKxDh.shape[:2]
    rows = jnp.arange(B)[:, None]
    cols = pos_B[:, None] + jnp.arange(T)[None, :]
    new = new_BxTxKxDh.astype(cache_BxKxSxDh.dtype)  # [B, T, K, Dh] lands at [b, :, pos + t, :]
    return cache_BxKxSxDh.at[rows, :, cols].set(new, mode="drop", unique_indices=True)


def decode_windows(cache_len: int) -> tuple[int, ...]:
    """Key-window lengths a decode step may attend over: powers of two from 128, then the whole cache."""
    ws, w = [], 128
    while w < cache_len:
        ws.append(w)
        w *= 2
    return tuple(ws) + (cache_len,)


def window_index(need, cache_len: int):
    """Index into `decode_windows(cache_len)` of the smallest window holding `need` keys (a traced int)."""
    ws = decode_windows(cache_len)
    return jnp.searchsorted(jnp.asarray(ws), need).clip(0, len(ws) - 1)


def block(p: Params, x_BxTxD, cos, sin, cfg: ModelConfig, kv=None, pos_B=None, qpos_BxT=None, fresh: bool = False,
          window_idx=None, window=None, ve_BxTxKD=None):
    """One block; returns (x, kv). With `kv` = this layer's caches [B,K,S,Dh], new keys/values are written at each
    row's position and attention reads the cache (when `fresh`, the chunk alone: the cache is empty). With
    `window_idx` (decode) it reads only the first `decode_windows(S)[window_idx]` keys, so a step costs what the
    longest live row needs, not the allocated length (one branch per window in the compiled step). `window`: this
    layer's sliding window; `ve_BxTxKD`: its value embeddings, mixed into v by the gate `p["ve_gate"]`."""
    B, T, D = x_BxTxD.shape
    H, K, Dh = cfg.n_head, cfg.kv_heads, cfg.head_dim
    dt = x_BxTxD.dtype
    h = rms_norm(x_BxTxD)
    heads = ("batch", "seq", "act_heads", None)
    if "wqkv" in p:  # decode: one product for q, k and v (see `decode_layers`)
        qkv = h @ p["wqkv"].astype(dt)
        q, k, v = jnp.split(qkv, [H * Dh, (H + K) * Dh], axis=-1)
    else:
        q, k, v = h @ p["wq"].astype(dt), h @ p["wk"].astype(dt), h @ p["wv"].astype(dt)
    # the projections are what remat "minimal" keeps (rotary and the norms are cheap to redo)
    q = checkpoint_name(constrain(q.reshape(B, T, H, Dh), heads), "q")
    k = checkpoint_name(constrain(k.reshape(B, T, K, Dh), heads), "k")
    v = checkpoint_name(constrain(v.reshape(B, T, K, Dh), heads), "v")
    if ve_BxTxKD is not None:  # master: v += 3·sigmoid(W·h[:12]) per kv head · value embedding
        gate_BxTxK = 3 * jax.nn.sigmoid(h[..., :VE_GATE] @ p["ve_gate"].astype(dt))
        v = v + gate_BxTxK[..., None] * ve_BxTxKD.reshape(B, T, K, Dh)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    q, k = rms_norm(q), rms_norm(k)
    if cfg.qk_scale != 1.0:  # master sharpens attention by 1.2 on each side
        q, k = q * cfg.qk_scale, k * cfg.qk_scale
    if kv is None or fresh:
        o = causal_attention(q, k, v, cfg, window)
    if kv is not None:
        kc, vc = _write_rows(kv[0], k, pos_B), _write_rows(kv[1], v, pos_B)
        if not fresh:
            def attend(w):
                return lambda: cached_attention(q, kc[:, :, :w], vc[:, :, :w], qpos_BxT, window)

            S = kc.shape[2]
            o = attend(S)() if window_idx is None else jax.lax.switch(window_idx, list(map(attend, decode_windows(S))))
        kv = (kc, vc)
    o = checkpoint_name(o.reshape(B, T, H * Dh), "attn_out")
    x_BxTxD = constrain(x_BxTxD + o @ p["wo"].astype(dt), ACT)
    h = rms_norm(x_BxTxD)
    u = checkpoint_name(constrain(h @ p["w_fc"].astype(dt), ("batch", "seq", "act_mlp")), "mlp_in")
    u = jnp.square(jax.nn.relu(u))
    x_BxTxD = constrain(x_BxTxD + u @ p["w_proj"].astype(dt), ACT)
    return x_BxTxD, kv


def unstack_layers(blocks) -> list:
    """Per-layer param dicts from the stacked [L, ...] arrays. The decode loop does this once, outside its
    while_loop, so no step re-slices the weights."""
    n = jax.tree.leaves(blocks)[0].shape[0]
    return [jax.tree.map(lambda a: a[i], blocks) for i in range(n)]


def decode_layers(blocks) -> list:
    """Per-layer weights for the decode loop, prepared once outside it: the layers unstacked (so no step
    re-slices them) and q, k, v joined into one [D, (H + 2K)·Dh] matrix `wqkv` (one small product a step
    instead of three: each costs more in dispatch than in arithmetic at decode's few rows)."""
    out = []
    for p in unstack_layers(blocks):
        p = dict(p)
        p["wqkv"] = jnp.concatenate([p.pop("wq"), p.pop("wk"), p.pop("wv")], axis=-1)
        out.append(p)
    return out


def placed(tree, axes_tree, cfg: ModelConfig):
    """Weights in the compute dtype, pinned to their rules-table layout (under a mesh; else unchanged): each
    device casts its own shard, so gathers move compute-dtype weights; the gradient returns to float32."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return tree
    dt = jnp.dtype(cfg.compute_dtype)
    return jax.tree.map(lambda p, ax: _cast_in_place(p, dt, ax), tree, axes_tree,
                        is_leaf=lambda x: isinstance(x, tuple))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _cast_in_place(p, dtype, axes):
    return constrain(p.astype(dtype), axes)


def _cast_fwd(p, dtype, axes):
    return _cast_in_place(p, dtype, axes), None


def _cast_bwd(dtype, axes, _, g):
    return (constrain(g.astype(jnp.float32), axes),)


_cast_in_place.defvjp(_cast_fwd, _cast_bwd)


def fsdp_layer(body, layer_axes: dict, cfg: ModelConfig):
    """A training layer `body(x, p, *acts) -> (x, None)` run per device over the batch axes (FSDP written out, as nanodo
    does): each device gathers the layer's weights in the compute dtype and reduce-scatters its float32 gradients.
    Left to the partitioner, XLA:CPU all-reduced each layer's whole gradient (the `tensor` axis stays automatic)."""
    mesh = jax.sharding.get_abstract_mesh()
    batch = RULES["batch"]
    axes = tuple(a for a in ((batch,) if isinstance(batch, str) else batch) if mesh.shape[a] > 1)
    if not axes:
        return body
    dt = jnp.dtype(cfg.compute_dtype)

    def manual(spec):  # only the batch axes: shard_map takes those, the partitioner keeps the rest
        keep = lambda e: tuple(a for a in ((e,) if isinstance(e, str) else e or ()) if a in axes) or None  # noqa
        return P(*[k[0] if k and len(k) == 1 else k for k in map(keep, spec)])

    def wrapped(x, p, *acts):  # acts: more [B, T, ·] activations (value embeddings), split like x
        specs = {k: manual(spec_for(layer_axes[k], v.shape, mesh)) for k, v in p.items()}
        x_spec = manual(spec_for(ACT, x.shape, mesh))

        def local(x, p, *acts):
            return body(x, {k: _gather(v, dt, specs[k]) for k, v in p.items()}, *acts)[0]

        return jax.shard_map(local, in_specs=(x_spec, specs, *[x_spec] * len(acts)), out_specs=x_spec,
                             axis_names=set(axes), check_vma=False)(x, p, *acts), None

    return wrapped


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gather(w, dtype, spec):
    """All-gather one weight shard (inside shard_map) over the mesh axes in `spec`, cast to `dtype` first."""
    w = w.astype(dtype)
    for dim, ax in enumerate(spec):
        if ax is not None:
            w = jax.lax.all_gather(w, ax, axis=dim, tiled=True)
    return w


def _gather_fwd(w, dtype, spec):
    return _gather(w, dtype, spec), None


def _gather_bwd(dtype, spec, _, g):
    g = g.astype(jnp.float32)  # this device's partial sum; reduced in float32
    for dim, ax in enumerate(spec):
        if ax is not None:
            g = jax.lax.psum_scatter(g, ax, scatter_dimension=dim, tiled=True)
    return (g,)


_gather.defvjp(_gather_fwd, _gather_bwd)


def _remat_policy(cfg: ModelConfig):
    if cfg.remat == "full":
        return jax.checkpoint_policies.nothing_saveable
    if cfg.remat == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if cfg.remat == "minimal":
        # keep the q, k, v projections, the attention output, the MLP input, and cuDNN
        # attention's own outputs (its output and softmax statistics: without them the backward reruns the
        # attention forward); recompute the norms, rotary and activations
        names = jax.checkpoint_policies.save_only_these_names("q", "k", "v", "attn_out", "mlp_in")
        return lambda prim, *args, **kw: prim.name.startswith("dot_product_attention_fwd") or names(prim, *args, **kw)
    return None


# ----------------------------------------------------------------------------------------------------
# Forward


def hidden_states(params: Params, tokens_BxT, cfg: ModelConfig, *, cache=None, lengths_B=None, fresh: bool = False,
                  window_idx=None):
    """Embedding → blocks → final norm: (h_BxTxD, new cache or None). With `cache` ({"k","v": L × [B,K,S,Dh],
    "pos": [B], with smear "prev": [B, D]}) tokens land at each row's pos (rotary at pos + t) and the new cache has
    pos += lengths_B (default T; right padding lands past the new pos and is overwritten later). `fresh`: the
    cache is empty (pos = 0)."""
    dt = jnp.dtype(cfg.compute_dtype)
    B, T = tokens_BxT.shape
    axes = param_axes(cfg) if cache is None else None  # for pinning the training path's weights
    # pinned before the norm: the lookup's re-layout (wte is sharded on its width) then moves compute-dtype rows
    lookup = lambda name: params[name] if cache is not None else placed(params[name], axes[name], cfg)  # noqa: E731
    x = rms_norm(constrain(lookup("wte").astype(dt)[tokens_BxT], ACT))
    blocks = params["blocks"]
    if cache is None:
        pos_BxT = jnp.arange(T)[None]  # shared by every row: one [1, T] table
    else:
        pos_BxT = cache["pos"][:, None] + jnp.arange(T)[None]
    cos, sin = rotary_tables(pos_BxT, cfg.head_dim, cfg.rope_theta)
    lengths = jnp.full((B,), T, jnp.int32) if lengths_B is None else lengths_B.astype(jnp.int32)
    new_cache = None if cache is None else {"pos": cache["pos"] + lengths}
    if cfg.smear:  # master: + λ·sigmoid(W·x[:24]) · (previous token's embedding); the cache carries the last one
        prev_Bx1xD = jnp.zeros_like(x[:, :1]) if cache is None else cache["prev"][:, None].astype(dt)
        if cache is not None:
            last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)[:, 0]
            new_cache["prev"] = last.astype(cache["prev"].dtype)
        gate_BxTx1 = params["smear_lambda"].astype(dt) * jax.nn.sigmoid(
            x[..., :SMEAR_GATE] @ params["smear_gate"].astype(dt))
        shifted = jnp.concatenate([prev_Bx1xD, x[:, :-1]], axis=1)
        x = x + jnp.where(pos_BxT[..., None] > 0, gate_BxTx1 * shifted, 0)
    x0 = x
    ve_tables = lookup("value_embeds").astype(dt) if cfg.ve_layers else None
    ve_of = {i: constrain(ve_tables[j][tokens_BxT], ACT) for j, i in enumerate(cfg.ve_layers)}
    layers = None if cfg.scan_layers and cache is None else (
        blocks if isinstance(blocks, (list, tuple)) else unstack_layers(blocks))
    if layers is not None and cfg.ve_layers:  # each value-embedding layer's gate travels with its weights
        layers = [{**p, "ve_gate": params["ve_gate"][cfg.ve_layers.index(i)]} if i in ve_of else p
                  for i, p in enumerate(layers)]

    if cache is None:  # training / scoring: optionally scanned and rematerialised
        layer_axes = {**{k: ax[1:] for k, ax in axes["blocks"].items()}, "ve_gate": ("scalar", "scalar")}

        def layer_fn(window):
            def body(x, p, *ve):
                return block(p, x, cos, sin, cfg, window=window, ve_BxTxKD=ve[0] if ve else None)[0], None

            if not jax.sharding.get_abstract_mesh().empty:
                body = fsdp_layer(body, layer_axes, cfg)
            return jax.checkpoint(body, policy=_remat_policy(cfg)) if cfg.remat != "none" else body

        bodies = {w: layer_fn(w) for w in set(cfg.windows)}
    else:  # inference: one cache array per layer, updated in place, layers unrolled
        ks, vs = list(cache["k"]), list(cache["v"])
    if layers is None:
        x, _ = jax.lax.scan(bodies[None], x, blocks)
    for i, p in enumerate(layers or []):
        if cfg.layer_lambdas:
            x = params["resid_lambdas"][i].astype(dt) * x + params["x0_lambdas"][i].astype(dt) * x0
        if cache is None:
            x, _ = bodies[cfg.windows[i]](x, p, *([ve_of[i]] if i in ve_of else []))
        else:
            x, (ks[i], vs[i]) = block(p, x, cos, sin, cfg, kv=(ks[i], vs[i]), pos_B=cache["pos"], qpos_BxT=pos_BxT,
                                      fresh=fresh, window_idx=window_idx, window=cfg.windows[i], ve_BxTxKD=ve_of.get(i))
        if cfg.backout and i == cfg.n_layer // 2:
            x_mid = x
    if cache is not None:
        new_cache.update(k=ks, v=vs)
    if cfg.backout:  # master: take the mid-depth residual back out before the head
        x = x - params["backout_lambda"].astype(dt) * x_mid
    return rms_norm(x), new_cache


def logits_from_hidden(params: Params, h_BxTxD, cfg: ModelConfig):
    logits = jnp.dot(h_BxTxD, params["lm_head"].astype(h_BxTxD.dtype), preferred_element_type=jnp.float32)
    logits = constrain(logits, ("batch", "seq", "act_vocab"))[..., :cfg.vocab_size]  # padded rows never count
    return cfg.softcap * jnp.tanh(logits / cfg.softcap)


def forward(params: Params, tokens_BxT, cfg: ModelConfig, *, cache=None, lengths_B=None, fresh: bool = False,
            window_idx=None):
    """Logits [B, T, V] (float32, soft-capped). With a cache, returns (logits, new_cache)."""
    h, new_cache = hidden_states(params, tokens_BxT, cfg, cache=cache, lengths_B=lengths_B, fresh=fresh,
                                 window_idx=window_idx)
    logits = logits_from_hidden(params, h, cfg)
    return logits if cache is None else (logits, new_cache)


def token_nll(params: Params, tokens_BxT, targets_BxT, cfg: ModelConfig):
    """Per-token NLL [B, T] (float32; 0 where target < 0): logsumexp − gold of the capped logits, by hand (optax's
    cross-entropy behind the soft-cap was 3× slower backward on CPU). `cfg.loss_chunk > 0` runs the head over
    chunks along T under remat, so the [B, T, V] float32 logits never exist at once."""
    h, _ = hidden_states(params, tokens_BxT, cfg)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _local_nll(h, targets_BxT, params["lm_head"], cfg)
    # Under a mesh the head runs per device (shard_map): each device gathers the head once, scores its own
    # rows, and its gradient leaves as one reduce-scatter after all chunks. Left to the partitioner, the
    # head's gradient was all-reduced whole once per chunk (and the chunks of flattened tokens made every
    # chunk's logits whole on every device).
    w_spec = spec_for(("embed", "vocab"), params["lm_head"].shape, mesh)
    t_spec = spec_for(BATCH, targets_BxT.shape, mesh)
    local = partial(_local_nll, cfg=cfg, gather_axis=w_spec[0], vocab_axis=w_spec[1])
    return jax.shard_map(local, in_specs=(P(*t_spec, None), t_spec, w_spec), out_specs=t_spec)(
        h, targets_BxT, params["lm_head"])


def _local_nll(h_BxTxD, t_BxT, w_DxV, cfg: ModelConfig, gather_axis=None, vocab_axis=None):
    """token_nll's head on one device's rows. The float32 head is gathered (over `gather_axis`) and cast per
    chunk, so its gradient is summed over chunks in float32; with `vocab_axis` each device holds a slice of
    the vocabulary and the log-sum-exp and gold logit are combined across that axis."""
    if gather_axis is not None:
        w_DxV = jax.lax.all_gather(w_DxV, gather_axis, axis=0, tiled=True)
    B, T, D = h_BxTxD.shape
    V = w_DxV.shape[1]

    def chunk_nll(a):
        h, t = a[0].reshape(-1, D), a[1].reshape(-1)  # one [tokens, D] product (XLA:CPU: ~20% faster step)
        z = jnp.dot(h, w_DxV.astype(h.dtype), preferred_element_type=jnp.float32)
        z = cfg.softcap * jnp.tanh(z / cfg.softcap)
        if cfg.padded_vocab != cfg.vocab_size:  # padded rows never count
            col = jnp.arange(V) + (0 if vocab_axis is None else jax.lax.axis_index(vocab_axis) * V)
            z = jnp.where(col < cfg.vocab_size, z, -jnp.inf)
        if vocab_axis is None:
            lse = jax.nn.logsumexp(z, axis=-1)
            gold = jnp.take_along_axis(z, jnp.maximum(t, 0)[..., None], axis=-1)[..., 0]
        else:
            m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(z, axis=-1)), vocab_axis)  # any m works: no gradient
            lse = m + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(z - m[..., None]), axis=-1), vocab_axis))
            idx = t - jax.lax.axis_index(vocab_axis) * V
            mine = (idx >= 0) & (idx < V)
            gold = jnp.take_along_axis(z, jnp.clip(idx, 0, V - 1)[..., None], axis=-1)[..., 0]
            gold = jax.lax.psum(jnp.where(mine, gold, 0.0), vocab_axis)
        return jnp.where(t >= 0, lse - gold, 0.0).reshape(a[1].shape)

    n = cfg.loss_chunk
    if n <= 0 or n >= B * T:
        return chunk_nll((h_BxTxD, t_BxT))
    Tc = max(1, min(T, n // B))  # chunk = all rows × Tc positions, about loss_chunk tokens
    while T % Tc:
        Tc -= 1
    h_CxBxTcxD = jnp.moveaxis(h_BxTxD.reshape(B, T // Tc, Tc, D), 1, 0)
    t_CxBxTc = jnp.moveaxis(t_BxT.reshape(B, T // Tc, Tc), 1, 0)
    nll_CxBxTc = jax.lax.map(jax.checkpoint(chunk_nll), (h_CxBxTcxD, t_CxBxTc))
    return jnp.moveaxis(nll_CxBxTc, 0, 1).reshape(B, T)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None):
    """An empty KV cache pytree: {"k", "v": one zeros [B, K, S, Dh] array per layer, "pos": zeros [B] int32, and
    with smear "prev": zeros [B, D], the last token's embedding}.

    Not one stacked [L, B, S, K, Dh] array, for decode speed: heads come before positions, so attention reads each
    head's keys as one contiguous [S, Dh] matrix (positions-major made XLA copy the whole cache into this
    order for every layer at every step: 9x slower decode attention); and layers are separate arrays, because
    slicing one layer out of a stacked cache is another full copy per layer per step."""
    dtype = jnp.dtype(dtype or cfg.compute_dtype)
    shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
    return {"k": [jnp.zeros(shape, dtype) for _ in range(cfg.n_layer)],
            "v": [jnp.zeros(shape, dtype) for _ in range(cfg.n_layer)],
            "pos": jnp.zeros((batch,), jnp.int32),
            **({"prev": jnp.zeros((batch, cfg.n_embd), dtype)} if cfg.smear else {})}
