"""Muon touches exactly the block matrices, AdamW exactly wte + lm_head; updates equal NumPy references;
LR and momentum schedules have nanochat's values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxchat import model as gpt
from jaxchat.config import ModelConfig, TrainConfig
from jaxchat.optim import NS_COEFFS, lr_multiplier, make_optimizer, muon_momentum, param_labels

CFG = ModelConfig(depth=2, vocab_size=64, max_seq_len=8, aspect_ratio=32, head_dim_target=16)  # D=64


def np_newton_schulz(g, steps=5, eps=1e-7):
    a, b, c = NS_COEFFS
    x = g.astype(np.float64)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if transposed else x


def grads_like(params, seed):
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tdef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda k: gpt.init_params(CFG, k))(jax.random.key(0))


def test_groups_are_exactly_nanochats(params):
    labels = param_labels(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
    assert flat.pop("['wte']") == "embed"
    assert flat.pop("['lm_head']") == "head"
    assert set(flat.values()) == {"muon"} and len(flat) == 6  # wq wk wv wo w_fc w_proj
    tx = make_optimizer(CFG, TrainConfig(), num_iterations=100)
    state = tx.init(params)
    muon_mu = state.inner_states["muon"].inner_state[0].inner_state.mu
    has = lambda t: {jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}  # noqa: E731
    assert has(muon_mu) == {f"['blocks']['{n}']" for n in ("w_fc", "w_proj", "wk", "wo", "wq", "wv")}
    assert has(state.inner_states["embed"].inner_state[0].mu) == {"['wte']"}
    assert has(state.inner_states["head"].inner_state[0].mu) == {"['lm_head']"}


def test_one_update_equals_numpy_reference(params):
    tc = TrainConfig(num_iterations=1000)
    tx = make_optimizer(CFG, tc, num_iterations=1000)
    state = tx.init(params)
    g1, g2 = grads_like(params, 1), grads_like(params, 2)
    step = jax.jit(tx.update)
    u1, state = step(g1, state, params)
    u2, state = step(g2, state, params)
    # Muon, step 1: the Nesterov mix is a multiple of g, so the update is -lr * scale * NS(g), per layer.
    for name in ("wq", "w_fc", "w_proj"):
        g = np.asarray(g1["blocks"][name])
        scale = math.sqrt(max(1.0, g.shape[-1] / g.shape[-2]))
        for layer in range(CFG.n_layer):
            ref = -0.02 * scale * np_newton_schulz(g[layer])
            np.testing.assert_allclose(np.asarray(u1["blocks"][name][layer]), ref, rtol=2e-3, atol=2e-5)
    # Muon, step 2: optax's bias-corrected Nesterov momentum (beta from the warmup schedule), then NS.
    b1, b2 = 0.85, float(muon_momentum(1, 0.85, 0.95, 300))
    ga, gb = np.asarray(g1["blocks"]["wk"][0]), np.asarray(g2["blocks"]["wk"][0])
    mu1 = (1 - b1) * ga
    mu2 = b2 * mu1 + (1 - b2) * gb
    mu_hat = b2 * mu2 / (1 - b2 ** 3) + (1 - b2) * gb / (1 - b2 ** 2)
    np.testing.assert_allclose(np.asarray(u2["blocks"]["wk"][0]), -0.02 * np_newton_schulz(mu_hat), rtol=2e-3, atol=2e-5)
    # AdamW, step 1: bias-corrected m/sqrt(v) = g/|g|, so the update is -lr * sign(g) (eps 1e-10 is negligible).
    dscale = (CFG.n_embd / 768) ** -0.5
    np.testing.assert_allclose(np.asarray(u1["wte"]), -0.2 * dscale * np.sign(np.asarray(g1["wte"])), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(u1["lm_head"]), -0.004 * dscale * np.sign(np.asarray(g1["lm_head"])),
                               rtol=1e-5)


def test_ns_output_is_nearly_orthogonal():
    g = np.random.default_rng(0).normal(size=(64, 256))
    o = np_newton_schulz(g)
    s = np.linalg.svd(o, compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.3  # the quintic pushes singular values into ~[0.7, 1.2]


def test_lr_schedule_values():
    n = 1000
    f = lambda s, **kw: float(lr_multiplier(s, n, kw.get("wu", 0.0), kw.get("wd", 0.2), kw.get("fin", 0.0)))  # noqa: E731
    assert f(0) == 1.0 and f(500) == 1.0 and f(800) == 1.0  # constant until the warmdown starts
    assert f(900) == pytest.approx(0.5) and f(1000) == pytest.approx(0.0)  # linear to final_lr_frac
    assert f(1000, fin=0.1) == pytest.approx(0.1) and f(900, fin=0.1) == pytest.approx(0.55)
    assert f(0, wu=0.1) == pytest.approx(0.01) and f(49, wu=0.1) == pytest.approx(0.5) and f(100, wu=0.1) == 1.0
    # SFT/RL: warmdown over everything = 1 - step/n
    assert f(0, wd=1.0) == 1.0 and f(250, wd=1.0) == pytest.approx(0.75) and f(1000, wd=1.0) == pytest.approx(0.0)


def test_momentum_warmup_values():
    m = lambda s: float(muon_momentum(s, 0.85, 0.95, 300))  # noqa: E731
    assert m(0) == pytest.approx(0.85) and m(150) == pytest.approx(0.90) and m(300) == pytest.approx(0.95)
    assert m(5000) == pytest.approx(0.95)


def test_schedules_drive_the_real_updates(params):
    """The LR reaching the params follows the schedule: a warmdown step's AdamW update is scaled down."""
    tc = TrainConfig(num_iterations=10, warmdown_ratio=0.5, init_lr_frac=0.5)
    tx = make_optimizer(CFG, tc, num_iterations=10)
    state = tx.init(params)
    g = grads_like(params, 3)
    step = jax.jit(tx.update)
    seen = []
    for _ in range(10):
        u, state = step(g, state, params)
        seen.append(float(jnp.abs(u["lm_head"]).max()))
    base = 0.004 * (CFG.n_embd / 768) ** -0.5 * 0.5
    expect = [base * float(lr_multiplier(i, 10, 0.0, 0.5, 0.0)) for i in range(10)]
    np.testing.assert_allclose(seen, expect, rtol=1e-4)  # constant-g Adam step is exactly lr * sign(g)
    hyper = state.inner_states["muon"].inner_state[0].hyperparams
    assert float(hyper["beta"]) == pytest.approx(float(muon_momentum(9, 0.85, 0.95, 300)), rel=1e-6)


def test_grad_clip_is_optional(params):
    tx = make_optimizer(CFG, TrainConfig(grad_clip=1e-3), num_iterations=10)
    assert isinstance(tx, optax.GradientTransformation)
    u, _ = tx.update(grads_like(params, 4), tx.init(params), params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(u))
