"""The compiled program is the test: the real train step and decode loop, lowered for the 8-device mesh from
abstract inputs with a GPU preset's settings (scan, remat, chunked loss, bf16) at CI size, must hold the
collectives FSDP calls for — and nothing that scales with batch × vocabulary or a whole parameter."""
import math

import jax
import pytest

from jaxchat import compiled as cp
from jaxchat import config as C
from jaxchat import model as gpt
from jaxchat import sharding as shd

# d20's recipe (bf16, scan, remat minimal, chunked loss, FSDP) at CI size: width 256, vocab 8192, T 256.
SMALL = ["--preset=d20", "--depth=2", "--aspect_ratio=128", "--vocab_size=8192", "--max_seq_len=256",
         "--device_batch_size=4", "--loss_chunk=2048", "--total_batch_size=-1"]


def compile_step(*overrides, mesh=None):
    cfg = C.load(["model", "mesh", "base"], SMALL + list(overrides))
    mesh = shd.make_mesh(mesh or cfg.mesh)
    return cfg, mesh, cp.lower_train_step(cfg.model, cfg.base, mesh).compile().as_text()


def param_sizes(mc):
    return {jax.tree_util.keystr(k): math.prod(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(gpt.param_shapes(mc))[0]}


@pytest.fixture(scope="module")
def fsdp8():
    return compile_step()


def test_no_all_reduce_of_logits_or_whole_parameters(fsdp8):
    cfg, mesh, hlo = fsdp8
    smallest = min(param_sizes(cfg.model).values())
    big = [c.line for c in cp.collectives(hlo) if c.kind == "all-reduce" and c.largest >= smallest]
    assert not big, "all-reduce of a parameter-sized or logits-sized tensor:\n" + "\n".join(big)
    assert not cp.host_transfers(hlo)


def test_collective_bytes_are_fsdps(fsdp8):
    """Weights all-gathered for the forward and again for the rematerialised backward (the head once, kept for
    its backward), gradients reduce-scattered once: wire bytes within 10% of that (float32 on XLA:CPU, which
    widens bf16 collectives)."""
    cfg, mesh, hlo = fsdp8
    sizes = param_sizes(cfg.model)
    blocks = sum(v for k, v in sizes.items() if "blocks" in k)
    head, n = sizes["['lm_head']"], mesh.size
    ring = 4 * (n - 1) / n
    got = cp.collective_bytes(cp.collectives(hlo))
    assert got["all-gather"] == pytest.approx((2 * blocks + head) * ring, rel=0.10)
    assert got["reduce-scatter"] == pytest.approx((blocks + head) * ring, rel=0.10)
    assert got["all-reduce"] < 1e4  # scalars only (loss, norms)


def test_tensor_mesh_keeps_logits_and_gradients_sharded():
    """fsdp 4 × tensor 2: the head's logits stay sharded on the vocabulary (no all-reduce of batch × vocab),
    and across the FSDP axis only gathers, scatters and scalars move (the tensor axis may all-reduce
    activations; the embedding's gradient is still all-reduced over the tensor pair: dev/LOG.md)."""
    cfg, mesh, hlo = compile_step(mesh=C.MeshConfig(fsdp=4, tensor=2))
    V, fsdp = cfg.model.vocab_size, mesh.shape["fsdp"]
    rows = cfg.base.device_batch_size * 2  # a device's rows: the batch is split over fsdp only
    chunk = rows * (cfg.model.loss_chunk // (rows * fsdp)) * V // 2  # one loss chunk's logits on a device
    colls = cp.collectives(hlo)
    logits = [c.line for c in colls if c.kind == "all-reduce" and c.largest >= chunk]
    assert not logits, "\n".join(logits)
    grads = [c.line for c in colls if c.kind == "all-reduce" and c.group >= fsdp and c.largest > 64]
    assert not grads, "\n".join(grads)
    assert sum(c.kind == "reduce-scatter" for c in colls) >= 2


def test_decode_loop_gathers_no_weights_per_step():
    cfg = C.load(["model", "mesh"], SMALL[:5])
    mesh = shd.make_mesh(cfg.mesh)
    hlo = cp.lower_decode_loop(cfg.model, mesh, batch=8, cache_len=256).compile().as_text()
    body = cp.loop_bodies(hlo)
    assert body, "no while loop found: the decode loop is not where expected"
    smallest = min(param_sizes(cfg.model).values())
    per_step = [c.line for c in cp.collectives(body) if c.kind in ("all-gather", "all-reduce") and c.largest >= smallest]
    assert not per_step, "weights gathered inside the decode loop:\n" + "\n".join(per_step)


def test_collective_parser_reads_groups_trip_counts_and_async_pairs():
    hlo = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[64,32]{1,0} all-gather(f32[8,32]{1,0} %x), replica_groups=[1,8]<=[8], dimensions={0}
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %rs = f32[4,32]{1,0} reduce-scatter(f32[32,32]{1,0} %y), replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  %ars = (f32[16]{0}, f32[16]{0}) all-reduce-start(f32[16]{0} %z), replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}
}
"""
    colls = {c.kind: c for c in cp.collectives(hlo)}
    assert (colls["all-gather"].group, colls["all-gather"].times) == (8, 5)
    assert colls["all-gather"].wire_bytes == pytest.approx(64 * 32 * 4 * 7 / 8 * 5)
    assert colls["reduce-scatter"].wire_bytes == pytest.approx(32 * 32 * 4 * 7 / 8)
    assert colls["all-reduce"].group == 4 and colls["all-reduce"].bytes == 64
    assert "all-gather" in cp.loop_bodies(hlo) and "reduce-scatter" not in cp.loop_bodies(hlo)


def test_perf_model_reads_the_program(capsys):
    from scripts import perf_model

    res = perf_model.main(SMALL)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
    tr = res["train"]
    # XLA's FLOPs include the rematerialised forward: above nanochat's count, below twice it
    assert tr["model_flops_per_device"] < tr["xla_flops_per_device"] < 2 * tr["model_flops_per_device"]
    h100 = tr["devices"]["H100 SXM"]
    assert 0 < h100["mfu_no_overlap"] <= h100["mfu"] < 1
    assert h100["step_s"] == max(h100["compute_s"], h100["memory_s"], h100["network_s"])
    assert tr["wire_bytes_per_device"]["reduce-scatter"] > 0 and tr["wire_bytes_per_device"]["all-reduce"] < 1e4


def test_remat_minimal_recomputes_no_projection():
    """remat "minimal" keeps the raw q/k/v projections and (on GPU) cuDNN attention's outputs and statistics:
    the backward reruns norms, rotary and XLA attention's scores, not the projections (it used to redo all
    three: ~4 projections' FLOPs of recompute)."""
    import dataclasses
    from types import SimpleNamespace

    cfg = C.load(["model", "mesh", "base"], SMALL + ["--scan_layers=false", "--loss_chunk=0"])
    mesh = shd.make_mesh(C.MeshConfig(fsdp=1), jax.devices()[:1])
    flops = {r: cp.analyse(cp.lower_train_step(dataclasses.replace(cfg.model, remat=r), cfg.base, mesh, rows=8)
                           .compile())["flops"] for r in ("none", "minimal")}
    B, T, D, L = 8, cfg.model.max_seq_len, cfg.model.n_embd, cfg.model.n_layer
    projection = 2 * B * T * D * D * L  # one D×D product over the batch, every layer
    assert 0 < flops["minimal"] - flops["none"] < 2 * projection
    policy = gpt._remat_policy(cfg.model)
    assert policy(SimpleNamespace(name="dot_product_attention_fwd_wrapper"))  # cuDNN's forward is kept
