"""The GPT against nanochat's numbers and an independent NumPy reference; causality; the KV-cache contract."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat import model as gpt
from jaxchat.config import ModelConfig

TINY = ModelConfig(depth=2, vocab_size=97, max_seq_len=32, aspect_ratio=32, head_dim_target=16)  # D=64, H=4


def fwd(params, tokens, cfg, **kw):
    """gpt.forward under jit (eager op-by-op dispatch would compile every primitive separately)."""
    return _jit_forward(params, tokens, cfg, **kw)


_jit_forward = jax.jit(gpt.forward, static_argnums=2)


def random_params(cfg, seed=0, scale=1.0):
    """Non-zero everywhere (nanochat zero-inits lm_head and the output projections, which would hide bugs)."""
    shapes = gpt.param_shapes(cfg)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    vals = [scale * jax.random.normal(k, s.shape, s.dtype) / math.sqrt(s.shape[-2] if len(s.shape) > 1 else 1)
            for k, s in zip(keys, leaves)]
    p = jax.tree.unflatten(treedef, vals)
    p["wte"] = p["wte"] * math.sqrt(p["wte"].shape[0])  # embedding ~ N(0, 1)
    return p


# ---------------------------------------------------------------- NumPy reference (written from the spec)

def np_rmsnorm(x):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.finfo(np.float32).eps)


def np_forward(p, tokens, cfg):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    B, T = tokens.shape
    H, K, Dh = cfg.n_head, cfg.kv_heads, cfg.head_dim
    x = np_rmsnorm(p["wte"][tokens])
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, Dh, 2) / Dh))
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]

    def rot(u):
        u1, u2 = u[..., : Dh // 2], u[..., Dh // 2:]
        return np.concatenate([u1 * cos + u2 * sin, -u1 * sin + u2 * cos], -1)

    for layer in range(cfg.n_layer):
        b = {k: v[layer] for k, v in p["blocks"].items()}
        h = np_rmsnorm(x)
        q = (h @ b["wq"]).reshape(B, T, H, Dh)
        k = (h @ b["wk"]).reshape(B, T, K, Dh)
        v = (h @ b["wv"]).reshape(B, T, K, Dh)
        q, k = np_rmsnorm(rot(q)), np_rmsnorm(rot(k))
        k = np.repeat(k, H // K, axis=2)
        v = np.repeat(v, H // K, axis=2)
        att = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(Dh)
        att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshd->bthd", att, v).reshape(B, T, H * Dh)
        x = x + o @ b["wo"]
        u = np.maximum(np_rmsnorm(x) @ b["w_fc"], 0) ** 2
        x = x + u @ b["w_proj"]
    logits = np_rmsnorm(x) @ p["lm_head"]
    return cfg.softcap * np.tanh(logits / cfg.softcap)


# ---------------------------------------------------------------- tests


def test_nanochat_param_counts_and_flops():
    d20 = ModelConfig(depth=20, vocab_size=65536, max_seq_len=2048)
    assert (d20.n_embd, d20.n_head, d20.head_dim, d20.mlp_dim) == (1280, 10, 128, 5120)
    assert gpt.num_params(d20) == 560_988_160
    assert gpt.flops_per_token(d20) == pytest.approx(3.491758e9, rel=1e-6)
    d32 = ModelConfig(depth=32, vocab_size=65536, max_seq_len=2048)
    assert gpt.num_params(d32) == 1_879_048_192
    assert gpt.flops_per_token(d32) == pytest.approx(1.207960e10, rel=1e-6)
    assert gpt.num_params(ModelConfig(depth=26, vocab_size=65536)) == 1_081_999_360


def test_init_matches_nanochat():
    cfg = ModelConfig(depth=2, vocab_size=512, max_seq_len=16)
    p = jax.jit(lambda k: gpt.init_params(cfg, k))(jax.random.key(0))
    for name in ("lm_head",):
        assert float(jnp.abs(p[name]).max()) == 0.0
    for name in ("wo", "w_proj"):
        assert float(jnp.abs(p["blocks"][name]).max()) == 0.0
    assert float(jnp.std(p["wte"])) == pytest.approx(1.0, rel=0.05)
    D = cfg.n_embd
    assert float(jnp.std(p["blocks"]["wq"])) == pytest.approx(1 / math.sqrt(D), rel=0.05)
    assert float(jnp.std(p["blocks"]["w_fc"])) == pytest.approx(1 / math.sqrt(D), rel=0.05)  # min(1, 4) = 1


@pytest.mark.parametrize("n_kv_head", [0, 2])
def test_forward_matches_numpy_reference(n_kv_head):
    cfg = ModelConfig(**{**TINY.__dict__, "n_kv_head": n_kv_head})
    p = random_params(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12))
    ref = np_forward(p, tokens, cfg)
    out = np.asarray(fwd(p, jnp.asarray(tokens), cfg))
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4)
    assert np.abs(out).max() <= cfg.softcap
    # scan over layers and remat compute the same function
    for variant in ({"scan_layers": True}, {"remat": "full"}, {"remat": "minimal", "scan_layers": True}):
        c2 = ModelConfig(**{**cfg.__dict__, **variant})
        np.testing.assert_allclose(np.asarray(fwd(p, jnp.asarray(tokens), c2)), out, rtol=1e-5, atol=1e-5)


def test_future_tokens_never_change_past_logits():
    p = random_params(TINY, seed=1)
    rng = np.random.default_rng(1)
    a = rng.integers(0, TINY.vocab_size, (1, 16))
    b = a.copy()
    b[0, 9:] = rng.integers(0, TINY.vocab_size, 7)
    la, lb = fwd(p, jnp.asarray(a), TINY), fwd(p, jnp.asarray(b), TINY)
    np.testing.assert_array_equal(np.asarray(la[0, :9]), np.asarray(lb[0, :9]))
    assert not np.allclose(np.asarray(la[0, 9:]), np.asarray(lb[0, 9:]))


def test_logits_are_softcapped():
    p = random_params(TINY, seed=2, scale=30.0)
    out = fwd(p, jnp.arange(16)[None] % TINY.vocab_size, TINY)
    assert float(jnp.abs(out).max()) <= 15.0
    assert float(jnp.abs(out).max()) > 14.0  # the cap is actually reached with huge weights


@pytest.mark.parametrize("scan", [False, True])
def test_cache_contract_prefix_then_token(scan):
    cfg = ModelConfig(**{**TINY.__dict__, "scan_layers": scan})
    p = random_params(cfg, seed=3)
    seq = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 11)))
    full = fwd(p, seq, cfg)
    cache = gpt.init_cache(cfg, batch=2, max_len=16)
    logits_pre, cache = fwd(p, seq[:, :10], cfg, cache=cache)
    np.testing.assert_allclose(np.asarray(logits_pre), np.asarray(full[:, :10]), rtol=1e-5, atol=1e-5)
    assert cache["pos"].tolist() == [10, 10]
    logits_one, cache = fwd(p, seq[:, 10:11], cfg, cache=cache)
    np.testing.assert_allclose(np.asarray(logits_one[:, 0]), np.asarray(full[:, 10]), rtol=1e-5, atol=1e-5)
    assert cache["pos"].tolist() == [11, 11]


def test_ragged_prefill_with_lengths_reads_the_right_positions():
    """Right-padded rows of different lengths: each row's logits and next-token decode equal its own
    unpadded forward, and pad tokens never leak into later attention."""
    p = random_params(TINY, seed=4)
    rng = np.random.default_rng(4)
    rows = [rng.integers(0, TINY.vocab_size, n) for n in (5, 9)]
    nxt = [int(rng.integers(0, TINY.vocab_size)) for _ in rows]
    padded = np.full((2, 9), 7, np.int64)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    cache = gpt.init_cache(TINY, batch=2, max_len=16)
    lens = jnp.asarray([5, 9])
    logits, cache = fwd(p, jnp.asarray(padded), TINY, cache=cache, lengths_B=lens)
    assert cache["pos"].tolist() == [5, 9]
    step_logits, cache = fwd(p, jnp.asarray(nxt)[:, None], TINY, cache=cache)
    for i, r in enumerate(rows):
        ref = fwd(p, jnp.asarray(np.r_[r, nxt[i]])[None], TINY)[0]
        np.testing.assert_allclose(np.asarray(logits[i, len(r) - 1]), np.asarray(ref[len(r) - 1]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(step_logits[i, 0]), np.asarray(ref[len(r)]), rtol=1e-5, atol=1e-5)


def test_chunked_loss_equals_full_loss_and_grads():
    p = random_params(TINY, seed=5)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.integers(0, TINY.vocab_size, (3, 10)))
    y = np.asarray(rng.integers(0, TINY.vocab_size, (3, 10)))
    y[0, :4] = -1
    y = jnp.asarray(y)
    chunked = ModelConfig(**{**TINY.__dict__, "loss_chunk": 7})

    def loss(params, cfg):
        return jnp.sum(gpt.token_nll(params, x, y, cfg))

    vg = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    l1, g1 = vg(p, TINY)
    l2, g2 = vg(p, chunked)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6), g1, g2)
    # and the loss is the textbook cross-entropy of the soft-capped logits; ignored targets contribute 0
    logits = fwd(p, x, TINY)
    ref = -jax.nn.log_softmax(np.asarray(logits))[jnp.arange(3)[:, None], jnp.arange(10)[None], jnp.maximum(y, 0)]
    ref = jnp.where(y >= 0, ref, 0.0)
    nll = jax.jit(gpt.token_nll, static_argnums=3)(p, x, y, TINY)
    np.testing.assert_allclose(np.asarray(nll), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_nnx_module_and_pure_functions_agree():
    from flax import nnx

    m = gpt.GPT(TINY, rngs=nnx.Rngs(params=jax.random.key(7)))
    p = gpt.init_params(TINY, jax.random.key(7))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), m.params(), p)
    tokens = jnp.arange(8)[None]
    np.testing.assert_allclose(np.asarray(m(tokens)), np.asarray(fwd(p, tokens, TINY)), rtol=1e-5, atol=1e-5)
    axes = gpt.param_axes(TINY)
    assert axes["wte"] == ("vocab", "embed") and axes["blocks"]["w_fc"] == ("layers", "embed", "mlp")


def test_windowed_decode_step_equals_full_cache_attention():
    """A decode step that attends over a key window (128 or 256 of a 512-slot cache) gives the same logits as
    attending over the whole cache when the window holds every row's keys, and different ones when it cuts
    a row's keys off (so the window really limits what is read)."""
    p = random_params(TINY, seed=5)
    rng = np.random.default_rng(5)
    lens = [140, 20]  # row 0 lives past the first 128-key window, row 1 inside it
    padded = np.zeros((2, max(lens)), np.int64)
    for i, n in enumerate(lens):
        padded[i, :n] = rng.integers(0, TINY.vocab_size, n)
    cache = gpt.init_cache(TINY, batch=2, max_len=512)
    _, cache = fwd(p, jnp.asarray(padded), TINY, cache=cache, lengths_B=jnp.asarray(lens))
    nxt = jnp.asarray(rng.integers(0, TINY.vocab_size, (2, 1)))
    full, full_cache = fwd(p, nxt, TINY, cache=cache)
    need = int(cache["pos"].max()) + 1
    idx = gpt.window_index(jnp.asarray(need), 512)
    assert int(idx) == 1  # 141 keys -> the 256 window
    win, win_cache = fwd(p, nxt, TINY, cache=cache, window_idx=idx)
    np.testing.assert_allclose(np.asarray(win), np.asarray(full), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(win_cache), jax.tree.leaves(full_cache)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    cut, _ = fwd(p, nxt, TINY, cache=cache, window_idx=jnp.asarray(0))  # 128 keys: too few for row 0
    np.testing.assert_allclose(np.asarray(cut[1]), np.asarray(full[1]), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(cut[0]) - np.asarray(full[0])).max() > 1e-3
