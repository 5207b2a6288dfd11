"""Muon touches exactly the block matrices, AdamW exactly wte + lm_head; updates equal NumPy references;
LR and momentum schedules have nanochat's values. The same for master's MuonAdamW (optimizer="master")."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.config import MeshConfig, ModelConfig, TrainConfig
from jaxchat.optim import (NS_COEFFS, lr_multiplier, make_optimizer, master_muon, muon_momentum, opt_state_shardings,
                           param_labels, schedules)

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


# ---------------------------------------------------------------------------------------------------------------
# nanochat master's MuonAdamW. The NumPy references below are float64 transliterations of master's
# nanochat/optim.py (muon_step_fused, adamw_step_fused) and scripts/base_train.py (schedules), in torch's
# [out, in] orientation: our [in, out] matrices are transposed going in.

BLOCKS = ("wq", "wk", "wv", "wo", "w_fc", "w_proj")
PE = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
      (4.042929935166739, -2.808917465908714, 0.5000178451051316),
      (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
      (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
      (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))
S = (64 / 768) ** -0.5
# master's AdamW groups at TrainConfig's default LRs: lr, beta1, beta2, weight decay
ADAMW = {"lm_head": (0.004 * S, 0.8, 0.96, 0.01), "wte": (0.2 * S, 0.8, 0.995, 0.001),
         "value_embeds": (0.1 * S, 0.8, 0.995, 0.01), "resid_lambdas": (0.005, 0.8, 0.95, 0.05),
         "x0_lambdas": (0.5, 0.96, 0.95, 0.0), "smear_gate": (0.2, 0.8, 0.95, 0.0)}
ADAMW["smear_lambda"] = ADAMW["backout_lambda"] = ADAMW["smear_gate"]


def master_params(seed=0, L=2, D=64, K=2, Dh=32, Vp=64):
    """Master's layout by hand, D=64, 2 heads of 32: square (wq), wide (w_fc) and tall (w_proj) matrices."""
    r = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(r.normal(size=s) * 0.1, jnp.float32)  # noqa: E731
    shapes = dict(wq=(D, K * Dh), wk=(D, K * Dh), wv=(D, K * Dh), wo=(K * Dh, D), w_fc=(D, 4 * D), w_proj=(4 * D, D))
    return {"wte": n(Vp, D), "lm_head": n(D, Vp), "blocks": {k: n(L, *s) for k, s in shapes.items()},
            "value_embeds": n(1, Vp, K * Dh), "ve_gate": n(1, 12, K), "resid_lambdas": n(L), "x0_lambdas": n(L),
            "smear_gate": n(24, 1), "smear_lambda": n(1), "backout_lambda": n(1)}


def np_lr(it, n, warmup, warmdown_ratio, final):
    wd = round(warmdown_ratio * n)
    if it < warmup:
        return (it + 1) / warmup
    if it <= n - wd:
        return 1.0
    progress = (n - it) / wd
    return progress * 1.0 + (1 - progress) * final


def np_momentum(it, n, warmdown_ratio, start=0.85, end=0.97, warmup=400, final=0.90):
    wd = round(warmdown_ratio * n)
    if it < warmup:
        return (1 - it / warmup) * start + it / warmup * end
    if it >= n - wd:
        progress = (it - (n - wd)) / wd
        return end * (1 - progress) + final * progress
    return end


def np_wd(it, n, wd):
    return wd * 0.5 * (1 + math.cos(math.pi * it / n))


def np_muon(G, W, buf, v, momentum, lr, wd, beta2=0.9):
    """Master's fused Muon step on one [out, in] matrix (float64). Returns W, buf, v and a mask of the cautious
    decay's near-ties (|g·W| at rounding level, where float32 may legitimately decide the other way)."""
    buf = buf + (1 - momentum) * (G - buf)
    X = G + momentum * (buf - G)
    X = X * (np.linalg.norm(X) / X.shape[0] ** 0.5 / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-6))
    X = X / (np.linalg.norm(X) * 1.01 + 1e-6)
    for a, b, c in PE:
        if X.shape[0] > X.shape[1]:
            A = X.T @ X
            X = a * X + X @ (b * A + c * A @ A)
        else:
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
    g = X * (min(X.shape) ** 0.5 / max(np.linalg.norm(X), 1e-6))
    red = 1 if g.shape[0] >= g.shape[1] else 0
    v_mean = (g * g).mean(axis=red, keepdims=True)
    k = g.shape[red]
    v_norm = np.sqrt(v_mean.sum() * k)
    v = v + (1 - beta2) * (v_mean - v)
    step = 1 / np.sqrt(np.maximum(v, 1e-10))
    g = g * step * (v_norm / max(np.sqrt((v_mean * k * step ** 2).sum()), 1e-10))
    lr = lr * max(1.0, g.shape[0] / g.shape[1]) ** 0.5
    tie = np.abs(g * W) < 1e-5 * np.abs(g * W).mean()
    return W - (lr * g + lr * wd * W * (g * W >= 0)), buf, v, tie


def np_adamw(p, g, m, v, t, lr, b1, b2, wd, eps=1e-10):
    p = p * (1 - lr * wd)
    m, v = m + (1 - b1) * (g - m), v + (1 - b2) * (g * g - v)
    return p - lr / (1 - b1 ** t) * m / (np.sqrt(v / (1 - b2 ** t)) + eps), m, v


def flat(tree):
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_master_groups_and_state_layout():
    p = master_params()
    want = {f"['blocks']['{n}']": "muon" for n in BLOCKS} | {"['ve_gate']": "muon", "['wte']": "wte",
            "['lm_head']": "lm_head", "['value_embeds']": "value_embeds", "['resid_lambdas']": "resid_lambdas",
            "['x0_lambdas']": "x0_lambdas", "['smear_gate']": "scalars", "['smear_lambda']": "scalars",
            "['backout_lambda']": "scalars"}
    assert flat(param_labels(p, master=True)) == want
    tx = make_optimizer(CFG, TrainConfig(optimizer="master"), num_iterations=100)
    state = tx.init(p)
    muon = state.inner_states["muon"].inner_state
    assert set(flat(muon.mu)) == {k for k, v in want.items() if v == "muon"}
    # NorMuon's factored second moment: master's (rows, 1) when rows >= cols else (1, cols), transposed to ours
    nu = {k: v.shape for k, v in flat(muon.nu).items()}
    assert nu["['blocks']['wq']"] == (2, 1, 64) and nu["['blocks']['w_fc']"] == (2, 1, 256)
    assert nu["['blocks']['w_proj']"] == (2, 256, 1) and nu["['ve_gate']"] == (1, 12, 1)
    for label in ("wte", "value_embeds", "scalars"):
        assert set(flat(state.inner_states[label].inner_state[0].mu)) == {k for k, v in want.items() if v == label}
    # sharded state: mirrors of a param take its sharding, the factored moment and the counters are replicated
    mesh = shd.make_mesh(MeshConfig())
    p_sh = jax.tree.map(lambda x: NamedSharding(mesh, P(*[None] * (x.ndim - 1), "fsdp" if x.shape[-1] % 8 == 0
                                                        else None)), p)
    rep = NamedSharding(mesh, P())
    o_sh = opt_state_shardings(tx, jax.eval_shape(lambda: p), p_sh, rep)
    m_sh = o_sh.inner_states["muon"].inner_state
    assert m_sh.mu["blocks"]["w_fc"] == p_sh["blocks"]["w_fc"] and m_sh.count == rep
    assert m_sh.nu["blocks"]["w_fc"] == rep and o_sh.inner_states["wte"].inner_state[0].nu["wte"] == p_sh["wte"]
    # ... and Muon's update under the mesh (each device Polar Express on whole matrices, stacks padded to 8) agrees
    small = {"w_fc": p["blocks"]["w_fc"], "w_proj": p["blocks"]["w_proj"], "ve_gate": p["ve_gate"]}
    ref = muon_update(small, grads_like(small, 7), 0.5)
    with shd.scope(mesh):
        sh = {k: p_sh["blocks"].get(k, p_sh["ve_gate"]) for k in small}
        out = muon_update(jax.device_put(small, sh), grads_like(small, 7), 0.5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), out, ref)


def test_master_two_updates_equal_numpy_reference():
    n, wd = 10, 0.3
    tc = TrainConfig(optimizer="master", weight_decay=wd, warmup_steps=3, warmdown_ratio=0.5, final_lr_frac=0.05,
                     muon_momentum_start=0.85, muon_momentum_end=0.97, muon_momentum_warmup=1,
                     muon_momentum_warmdown=0.9)
    tx = make_optimizer(CFG, tc, num_iterations=n)
    p0 = master_params()
    state, p = tx.init(p0), p0
    grads = [grads_like(p0, 10), grads_like(p0, 11)]
    for g in grads:
        u, state = jax.jit(tx.update)(g, state, p)
        p = optax.apply_updates(p, u)
    ours = flat(p)
    ref = {k: np.asarray(v, np.float64) for k, v in flat(p0).items()}
    mom = {k: np.zeros_like(v) for k, v in ref.items()}
    sec = {}
    ties = {k: np.zeros(v.shape, bool) for k, v in ref.items()}
    for t, g in enumerate(grads):
        lr = np_lr(t, n, 3, 0.5, 0.05)
        for k, gk in flat(g).items():
            gk = np.asarray(gk, np.float64)
            if "blocks" in k or "ve_gate" in k:
                for i in range(gk.shape[0]):  # each layer's matrix, transposed to torch's [out, in]
                    w, b, v, tie = np_muon(gk[i].T, ref[k][i].T, mom[k][i].T, sec.get((k, i), 0.0),
                                           np_momentum(t, n, 0.5, warmup=1), 0.02 * lr, np_wd(t, n, wd))
                    ref[k][i], mom[k][i], sec[k, i] = w.T, b.T, v
                    ties[k][i] |= tie.T
            else:
                name = k[2:-2]
                glr, b1, b2, gwd = ADAMW[name]
                ref[k], mom[k], sec[k] = np_adamw(ref[k], gk, mom[k], sec.get(k, 0.0), t + 1, glr * lr, b1, b2, gwd)
    assert sum(t.sum() for t in ties.values()) < 1e-4 * sum(t.size for t in ties.values())  # compared apart
    for k, x0 in flat(p0).items():  # the total change of every param, near-ties apart
        ok = ~ties[k]
        np.testing.assert_allclose((ours[k] - x0)[ok], (ref[k] - x0)[ok], rtol=1e-4, atol=3e-7, err_msg=k)


def test_master_schedules():
    n, wdr = 1000, 0.65  # master's warmdown starts at 350, before its momentum warmup (400 steps) ends
    tc = TrainConfig(optimizer="master", weight_decay=0.28, warmup_steps=40, warmdown_ratio=wdr, final_lr_frac=0.05,
                     muon_momentum_end=0.97, muon_momentum_warmup=400, muon_momentum_warmdown=0.90)
    refs = (lambda s: np_lr(s, n, 40, wdr, 0.05), lambda s: np_momentum(s, n, wdr), lambda s: np_wd(s, n, 0.28))
    for ours, ref in zip(schedules(tc, n), refs):
        for it in (0, 39, 40, 200, 349, 350, 351, 399, 400, 500, 999, 1000):
            assert float(ours(it)) == pytest.approx(ref(it), abs=1e-6)
    assert float(muon_momentum(350, 0.85, 0.97, 400, 0.90, n, wdr)) == pytest.approx(0.955)  # warmup checked first
    assert float(muon_momentum(1000, 0.85, 0.97, 400, 0.90, n, wdr)) == pytest.approx(0.90)
    assert lr_multiplier(0, n, 0.5, 0.2, 0.0, warmup_steps=40) == pytest.approx(1 / 40)  # steps win over the ratio
    # The real update with zero gradients is only the weight decay: Muon's cautious cosine decay (the mask holds
    # where the step is 0) and each AdamW group's own fixed decay, all at the scheduled LR.
    tc = TrainConfig(optimizer="master", weight_decay=0.5, warmup_steps=2, warmdown_ratio=0.5)
    tx = make_optimizer(CFG, tc, num_iterations=8)
    p = master_params()
    state, zeros = tx.init(p), jax.tree.map(jnp.zeros_like, p)
    for t in range(8):
        u, state = jax.jit(tx.update)(zeros, state, p)
        lr = np_lr(t, 8, 2, 0.5, 0.0)
        for name, width in (("wq", 1.0), ("w_fc", 2.0), ("w_proj", 1.0)):
            np.testing.assert_allclose(u["blocks"][name], -0.02 * width * lr * np_wd(t, 8, 0.5) * p["blocks"][name],
                                       rtol=1e-5, atol=1e-12)
        for name in ("wte", "value_embeds", "resid_lambdas", "lm_head"):
            glr, _, _, gwd = ADAMW[name]
            np.testing.assert_allclose(u[name], -glr * lr * gwd * p[name], rtol=1e-5, atol=1e-12)


@functools.partial(jax.jit, static_argnums=(2, 3))
def muon_update(params, grads, wd, ns_dtype="float32"):
    tx = master_muon(lambda c: 0.02, lambda c: 0.9, lambda c: wd, ns_dtype=ns_dtype)
    return tx.update(grads, tx.init(params), params)[0]


def test_master_cautious_weight_decay_and_bf16():
    """Muon decays a weight only where the step agrees with its sign; bf16 Polar Express stays close to f32."""
    p = {k: master_params()["blocks"][k] for k in ("w_fc", "w_proj")}  # a wide and a tall matrix
    g = grads_like(p, 5)
    plain, decayed = muon_update(p, g, 0.0), muon_update(p, g, 0.5)
    for k, w in p.items():
        d, step, w = np.asarray(decayed[k]), np.asarray(plain[k]), np.asarray(w)
        agree = step * w <= 0  # the update is -lr·O, so O·W >= 0
        assert 0.2 < agree.mean() < 0.8
        np.testing.assert_array_equal(d[~agree], step[~agree])
        lr = 0.02 * math.sqrt(max(1.0, w.shape[-1] / w.shape[-2]))
        np.testing.assert_allclose((d - step)[agree], (-lr * 0.5 * w)[agree], rtol=1e-4, atol=1e-9)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(muon_update(p, g, 0.0, "bfloat16"))):
        assert np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
