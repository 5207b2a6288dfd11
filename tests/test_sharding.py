"""One train step on 1 device equals the same step on 8 devices in every mesh layout; every array carries the
sharding the rules table gives."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat import train
from jaxchat.config import MeshConfig, ModelConfig, TrainConfig

CFG = ModelConfig(depth=2, vocab_size=128, max_seq_len=16, aspect_ratio=32, head_dim_target=16)  # D=64, H=4
TC = TrainConfig(num_iterations=10)


def setup_and_batch(mesh_cfg, devices):
    mesh = shd.make_mesh(mesh_cfg, devices)
    setup = train.create_train_state(CFG, TC, mesh, num_iterations=10)
    rng = np.random.default_rng(0)
    seq = rng.integers(0, CFG.vocab_size, (1, 8, CFG.max_seq_len + 1), dtype=np.int32)
    return setup, train.put_batch(setup, {"inputs": seq[..., :-1], "targets": seq[..., 1:]})


def loss_grads(setup, batch):
    loss, _, grads = jax.jit(lambda p, b: train.loss_and_grads(p, b, CFG))(setup.state["params"], batch)
    return float(loss), jax.device_get(grads)


@pytest.fixture(scope="module")
def reference():
    setup, batch = setup_and_batch(MeshConfig(fsdp=1), jax.devices()[:1])
    loss, grads = loss_grads(setup, batch)
    state, _ = train.jit_train_step(setup)(setup.state, batch)
    return loss, grads, jax.device_get(state["params"])


@pytest.mark.parametrize("mesh_cfg", [MeshConfig(fsdp=8), MeshConfig(data=8, fsdp=1), MeshConfig(data=2, fsdp=2, tensor=2)],
                         ids=["fsdp8", "data8", "data2_fsdp2_tensor2"])
def test_loss_and_grads_match_single_device(reference, mesh_cfg):
    assert len(jax.devices()) == 8, "conftest must give 8 CPU devices"
    setup, batch = setup_and_batch(mesh_cfg, jax.devices())
    loss, grads = loss_grads(setup, batch)
    np.testing.assert_allclose(loss, reference[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, reference[1])
    check_shardings(setup, setup.state)


def test_full_step_on_tensor_mesh_matches_single_device(reference):
    """The whole optimizer step (Muon's Newton-Schulz on sharded matrices included) is layout-independent,
    and its output keeps the rules-table layout."""
    setup, batch = setup_and_batch(MeshConfig(fsdp=4, tensor=2), jax.devices())
    state, _ = train.jit_train_step(setup)(setup.state, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 jax.device_get(state["params"]), reference[2])
    check_shardings(setup, state)


def check_shardings(setup, state):
    mesh = setup.mesh
    axes = gpt.param_axes(CFG)
    shapes = gpt.param_shapes(CFG)
    expect = jax.tree.map(lambda ax, s: shd.spec_for(ax, s.shape, mesh), axes, shapes,
                          is_leaf=lambda x: isinstance(x, tuple))
    got = jax.tree.map(lambda x: x.sharding.spec, state["params"])
    assert got == expect
    # every optimizer-state leaf that mirrors a param has that param's spec; the rest are replicated
    flat_p = {tuple(str(k) for k in path): spec for path, spec in
              jax.tree_util.tree_flatten_with_path(expect, is_leaf=lambda x: isinstance(x, P))[0]}
    n_mirrors = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]:
        key = tuple(str(k) for k in path)
        match = [v for k, v in flat_p.items() if key[-len(k):] == k]
        if match and leaf.ndim >= 2:
            assert leaf.sharding.spec == match[0], key
            n_mirrors += 1
        else:
            assert leaf.sharding.spec == P() or all(s is None for s in leaf.sharding.spec), key
    # muon momentum for 6 block matrices + adam mu/nu for wte and lm_head
    assert n_mirrors == 6 + 2 * 2


def test_rules_table_layouts():
    mesh = shd.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert shd.spec_for(("vocab", "embed"), (128, 64), mesh) == P("tensor", "fsdp")
    assert shd.spec_for(("layers", "embed", "mlp"), (2, 64, 256), mesh) == P(None, "fsdp", "tensor")
    assert shd.spec_for(("batch", "seq"), (8, 16), mesh) == P(("data", "fsdp"), None)
    # a dim the mesh axis does not divide is replicated along it
    assert shd.spec_for(("vocab", "embed"), (97, 64), mesh) == P(None, "fsdp")
    assert shd.batch_divisor(mesh) == 4
    with pytest.raises(ValueError, match="devices"):
        shd.make_mesh(MeshConfig(data=3, fsdp=1))


def test_params_are_created_sharded():
    """jit(init, out_shardings) gives each device only its shard (nothing is materialised whole first)."""
    mesh = shd.make_mesh(MeshConfig(fsdp=8))
    sh = gpt.param_shardings(CFG, mesh)
    params = shd.init_sharded(lambda k: gpt.init_params(CFG, k), sh, jax.random.key(0))
    wte = params["wte"]
    assert wte.sharding.spec == P(None, "fsdp")
    assert {s.data.shape for s in wte.addressable_shards} == {(CFG.vocab_size, CFG.n_embd // 8)}


FSDP8, MIXED = MeshConfig(fsdp=8), MeshConfig(data=2, fsdp=2, tensor=2)
MASTER = dict(value_embeds=True, layer_lambdas=True, smear=True, backout=True, window_pattern="SSSL", qk_scale=1.2,
              vocab_multiple=64, init="master")  # nanochat master's switches (the padded vocab split over tensor)


@pytest.mark.parametrize("mesh_cfg,dtype,arch", [(FSDP8, "float32", {}), (FSDP8, "bfloat16", {}),
                                                 (MIXED, "float32", {}), (MIXED, "bfloat16", {}),
                                                 (MIXED, "float32", MASTER)],
                         ids=["fsdp8", "fsdp8-bf16", "fsdp2_tensor2", "fsdp2_tensor2-bf16", "fsdp2_tensor2-master"])
def test_per_device_loss_and_fsdp_layers_match_single_device(mesh_cfg, dtype, arch):
    """Under the mesh the loss head runs per device over chunks along T (vocabulary split over `tensor`) and the
    layers gather weights / reduce-scatter gradients by hand: loss and gradients equal one device's."""
    import dataclasses

    cfg = dataclasses.replace(CFG, loss_chunk=32, compute_dtype=dtype, **arch)  # 8 rows x 4 positions a chunk
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=0.05, atol=2e-3)
    seq = np.random.default_rng(0).integers(0, CFG.vocab_size, (1, 8, CFG.max_seq_len + 1), dtype=np.int32)
    batch = {"inputs": seq[..., :-1], "targets": seq[..., 1:]}
    fn = jax.jit(lambda p, b: train.loss_and_grads(p, b, cfg))
    rng = np.random.default_rng(1)  # every weight non-zero (nanochat zero-inits the head and projections)
    params = jax.tree.map(lambda x: (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32),
                          jax.device_get(gpt.init_params(cfg, jax.random.key(0))))
    tc = dataclasses.replace(TC, optimizer="master" if arch else "v1")
    one = train.create_train_state(cfg, tc, shd.make_mesh(MeshConfig(fsdp=1), jax.devices()[:1]), 10, params=params)
    ref_loss, _, ref_grads = fn(one.state["params"], train.put_batch(one, batch))
    setup = train.create_train_state(cfg, tc, shd.make_mesh(mesh_cfg), 10, params=params)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(jax.device_get(ref_grads)))
    loss, _, grads = shd.in_mesh(setup.mesh, fn)(setup.state["params"], train.put_batch(setup, batch))
    np.testing.assert_allclose(float(loss), float(ref_loss), **tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), jax.device_get(grads), jax.device_get(ref_grads))
