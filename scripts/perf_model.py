"""Predicted step time, tokens/s and MFU of a preset's train step, and its decode rate, on a table of accelerators,
read off the compiled program (default: 8 emulated devices, the preset's batch). The last line is JSON.
    python -m scripts.perf_model --preset=d26 --fsdp=4 --tensor=2 --efficiency=0.5 --decode_batch=8 --decode_cache=2048
    python -m scripts.perf_model --preset=d20 --depth=4 --aspect_ratio=320 --devices=1   # gpu_check's shape

Compiled at depth 1 and 2 (unrolled: XLA's cost analysis ignores trip counts), extrapolated. Per device: compute =
XLA FLOPs / (bf16 peak × --efficiency), memory = HBM bytes / bandwidth, network = ring wire bytes / interconnect; a
step takes their max (perfect overlap) up to their sum. HBM bytes are estimated: weights read 3× in bf16, f32
gradients written and read, 28 B a parameter for the optimizer's shard, 192·D B per token and layer of bf16 matmul
inputs/outputs, 16·V B of logits per token. Decode reads all bf16 weights and the KV cache.
"""
import dataclasses
import json
import os
import sys

from jaxchat.common import cli

DEVICES = {"H100 SXM": (989e12, 3.35e12, 450e9), "H200": (989e12, 4.8e12, 450e9),  # bf16 dense FLOP/s, HBM bytes/s,
           "A100 SXM 80GB": (312e12, 2.04e12, 300e9), "TPU v5e": (197e12, 0.819e12, 200e9),  # interconnect bytes/s
           "TPU v5p": (459e12, 2.765e12, 600e9), "TPU v6e": (918e12, 1.64e12, 448e9)}  # per device (ring), as published


def emulated_devices(argv: list[str] | None) -> list:
    """The first --devices=N (default 8) devices; a fresh process first asks XLA to emulate N on the host."""
    n = next((int(a[10:]) for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--devices=")), 8)
    if "jax" not in sys.modules:  # the flag counts only before JAX starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    import jax  # only now, after XLA_FLAGS
    if len(jax.devices()) < n:
        raise SystemExit(f"need {n} devices, have {len(jax.devices())} (run as its own process: it sets XLA_FLAGS)")
    return jax.devices()[:n]


def main(argv=None):
    devices = emulated_devices(argv)
    from jaxchat import compiled, train, config as C, model as gpt, sharding as shd  # they import JAX: not before
    cfg = C.load(["model", "mesh", "base"], argv,
                 extra={"devices": 8, "efficiency": 0.6, "decode_batch": 8, "decode_cache": 2048})
    mc, x = cfg.model, cfg.extra
    tc, _ = train.depth_dial(mc, cfg.base)  # the batch a speedrun-style preset derives from its depth
    mesh, n_dev, T = shd.make_mesh(cfg.mesh, devices), len(devices), mc.max_seq_len
    accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, T, n_dev)
    tokens = accum * tc.device_batch_size * n_dev * T
    one, two = (compiled.analyse(compiled.lower_train_step(dataclasses.replace(mc,  # a micro-step, unrolled, unchunked
        depth=d, aspect_ratio=mc.n_embd // d, scan_layers=False, loss_chunk=0), tc, mesh).compile()) for d in (1, 2))

    def at_depth(get):  # linear in depth
        return accum * (get(one) + (mc.depth - 1) * (get(two) - get(one)))

    flops, xla_bytes = at_depth(lambda r: r["flops"]), at_depth(lambda r: r["bytes_accessed"])
    wire = {k: at_depth(lambda r: r["collective_bytes"][k]) for k in compiled.COLLECTIVES}
    if mc.compute_dtype != "float32":  # a GPU gathers weights and all-to-alls in bf16 (XLA:CPU: f32), the head f32
        head = mc.n_embd * mc.vocab_size * 4 * (mesh.shape["fsdp"] - 1) / max(mesh.shape["fsdp"], 1) * accum
        wire["all-gather"], wire["all-to-all"] = head + (wire["all-gather"] - head) / 2, wire["all-to-all"] / 2
    net, n_params, model_flops = sum(wire.values()), gpt.num_params(mc), gpt.flops_per_token(mc) * tokens / n_dev
    hbm = accum * (3 * 2 + 2 * 4) * n_params + 28 * n_params / n_dev + \
        (192 * mc.n_embd * mc.depth + 16 * mc.vocab_size) * tokens / n_dev
    decode_bytes = 2 * n_params + 2 * 2 * mc.n_layer * x.decode_batch * mc.kv_heads * mc.head_dim * \
        x.decode_cache / n_dev  # bf16 weights (whole on every device) + this device's K and V
    print(f"{cfg.preset} d{mc.depth} ({n_params / 1e6:.0f}M params) on {dict(mesh.shape)}, {tokens:,} tokens/step: "
          f"{flops / 1e12:.1f} TFLOP (model {model_flops / 1e12:.1f}), HBM {hbm / 1e9:.1f} GB, network "
          f"{net / 1e9:.2f} GB per device per step", file=sys.stderr)
    table = {}
    for name, (peak, bw, link) in DEVICES.items():
        t = {"compute_s": flops / (peak * x.efficiency), "memory_s": hbm / bw, "network_s": net / link}
        lo, hi = max(t.values()), sum(t.values())
        table[name] = r = {**t, "step_s": lo, "step_s_no_overlap": hi, "tokens_per_s": tokens / lo,
                           "tokens_per_s_no_overlap": tokens / hi, "mfu": model_flops / (lo * peak),
                           "mfu_no_overlap": model_flops / (hi * peak), "bound": max(t, key=t.get)[:-2],
                           "decode_step_s": decode_bytes / bw,
                           "decode_tokens_per_s": x.decode_batch * n_dev * bw / decode_bytes}
        print(f"  {name:14s} step {r['step_s'] * 1e3:7.1f}..{r['step_s_no_overlap'] * 1e3:7.1f} ms  "
              f"{r['tokens_per_s']:12,.0f} tok/s  MFU {100 * r['mfu']:5.1f}%..{100 * r['mfu_no_overlap']:5.1f}%"
              f"  ({r['bound']}-bound)  decode {r['decode_tokens_per_s']:9,.0f} tok/s", file=sys.stderr)
    res = {"preset": cfg.preset, "depth": mc.depth, "width": mc.n_embd, "vocab": mc.vocab_size, "seq_len": T,
           "params": n_params, "mesh": dict(mesh.shape), "devices": n_dev, "tokens_per_step": tokens,
           "grad_accum": accum, "compute_dtype": mc.compute_dtype, "remat": mc.remat, "train": {
               "xla_flops_per_device": flops, "model_flops_per_device": model_flops, "hbm_bytes_per_device": hbm,
               "xla_cpu_bytes_accessed": xla_bytes, "wire_bytes_per_device": wire, "devices": table},
           "decode": {"batch_per_device": x.decode_batch, "cache_len": x.decode_cache,
                      "bytes_per_step_per_device": decode_bytes},
           "assumptions": f"matmuls at {x.efficiency:.0%} of datasheet peak; HBM bytes estimated (see docstring); bf16 "
                          "weight gathers/all-to-alls, f32 head gather and reduce-scatters; datasheet HBM and "
                          "interconnect bandwidths; decode bandwidth-bound"}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    cli(main)
