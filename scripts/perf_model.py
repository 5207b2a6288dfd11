"""A performance model read off the compiled program: predicted step time, tokens/s and MFU of a preset's train
step (and its decode step) on a table of accelerators, from XLA's own accounting of the program.

    python -m scripts.perf_model --preset=d20                      # 8 emulated devices, nanochat's batch
    python -m scripts.perf_model --preset=d26 --fsdp=4 --tensor=2
    python -m scripts.perf_model --preset=d20 --depth=4 --aspect_ratio=320 --devices=1   # gpu_check's shape

How: the real train step is compiled ahead of time for the preset's mesh on emulated CPU devices, at the preset's
width, vocabulary and batch with 1 and 2 layers, layers unrolled and the loss unchunked (XLA's cost analysis does
not multiply loop bodies by their trip counts). FLOPs, bytes accessed and collective wire bytes are then linear in
depth; extrapolated to the preset's depth. Per device and step:
    compute  = XLA FLOPs (rematerialisation included) / (peak bf16 FLOP/s × --efficiency)
    memory   = HBM bytes (estimated, below) / HBM bandwidth
    network  = collective wire bytes (ring algorithms) / interconnect bandwidth per device
    step     = max of the three (perfect overlap) .. their sum (none)
Assumptions, printed with the result:
- matmuls reach --efficiency (default 0.6) of the datasheet peak; 1.0 gives the roofline (an MFU upper bound).
- XLA:CPU's bytes accessed is reported but not used: it widens bf16 to f32, fuses differently and stores the
  [T, T] attention scores that cuDNN's flash attention never writes. HBM bytes are estimated instead: weights read
  3× in bf16 (forward, remat, backward), gradients written and read once in f32, the optimizer's pass over this
  device's shard (28 bytes a parameter), 192·D bytes of activations per token and layer (bf16 inputs and outputs of
  every matmul: forward, remat and a backward of twice the forward) and 16·V bytes of logits per token.
- weight gathers and activation all-to-alls carry bf16 on a GPU (XLA:CPU shows them widened to f32); the head's
  gather and every gradient reduce-scatter stay float32 by design.
- decode: one token per row, every device reading the whole bf16 weights and its KV cache once per step.
The last line is JSON.
"""
from __future__ import annotations

from jaxchat.common import cli

import dataclasses
import json
import os
import sys

# name: (bf16 dense FLOP/s, HBM bytes/s, interconnect bytes/s per device for a ring collective), as published
DEVICES = {
    "H100 SXM": (989e12, 3.35e12, 450e9),
    "H200": (989e12, 4.8e12, 450e9),
    "A100 SXM 80GB": (312e12, 2.04e12, 300e9),
    "TPU v5e": (197e12, 0.819e12, 200e9),
    "TPU v5p": (459e12, 2.765e12, 600e9),
    "TPU v6e": (918e12, 1.64e12, 448e9),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    n_dev = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--devices=")), 8)
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={n_dev}").strip()
    import jax

    from jaxchat import compiled
    from jaxchat import config as C
    from jaxchat import model as gpt
    from jaxchat import sharding as shd
    from jaxchat import train

    cfg = C.load(["model", "mesh", "base"], argv,
                 extra={"devices": 8, "efficiency": 0.6, "decode_batch": 8, "decode_cache": 2048})
    mc, tc = cfg.model, cfg.base
    if len(jax.devices()) < n_dev:
        raise SystemExit(f"need {n_dev} devices, have {len(jax.devices())} (run as its own process: it sets XLA_FLAGS)")
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:n_dev])
    T, width = mc.max_seq_len, mc.n_embd
    accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, T, n_dev)
    tokens = accum * tc.device_batch_size * n_dev * T

    def measure(depth):  # one micro-step at this depth, the preset's width, unrolled and unchunked
        m = dataclasses.replace(mc, depth=depth, aspect_ratio=width // depth, scan_layers=False, loss_chunk=0)
        return compiled.analyse(compiled.lower_train_step(m, tc, mesh).compile())

    one, two = measure(1), measure(2)

    def at_depth(key, sub=None):
        a, b = (one[key], two[key]) if sub is None else (one[key][sub], two[key][sub])
        return accum * (a + (mc.depth - 1) * (b - a))

    flops, xla_bytes = at_depth("flops"), at_depth("bytes_accessed")
    wire = {k: at_depth("collective_bytes", k) for k in compiled.COLLECTIVES}
    if mc.compute_dtype != "float32":  # see the docstring: what a GPU moves in bf16
        head = mc.n_embd * mc.vocab_size * 4 * (mesh.shape["fsdp"] - 1) / max(mesh.shape["fsdp"], 1) * accum
        wire["all-gather"] = head + (wire["all-gather"] - head) / 2
        wire["all-to-all"] /= 2
    net = sum(wire.values())
    model_flops = gpt.flops_per_token(mc) * tokens / n_dev  # nanochat's count, per device
    n_params = gpt.num_params(mc)
    per_token = 192 * width * mc.depth + 16 * mc.vocab_size
    hbm = accum * (3 * 2 + 2 * 4) * n_params + 28 * n_params / n_dev + per_token * tokens / n_dev
    decode_bytes = 2 * n_params + 2 * 2 * mc.n_layer * cfg.extra.decode_batch * mc.kv_heads * mc.head_dim * \
        cfg.extra.decode_cache / n_dev  # bf16 weights (whole on every device) + this device's K and V
    table = {}
    for name, (peak, bw, link) in DEVICES.items():
        t = {"compute_s": flops / (peak * cfg.extra.efficiency), "memory_s": hbm / bw, "network_s": net / link}
        lo, hi = max(t.values()), sum(t.values())
        table[name] = {**t, "step_s": lo, "step_s_no_overlap": hi, "tokens_per_s": tokens / lo,
                       "tokens_per_s_no_overlap": tokens / hi, "mfu": model_flops / (lo * peak),
                       "mfu_no_overlap": model_flops / (hi * peak), "bound": max(t, key=t.get)[:-2],
                       "decode_step_s": decode_bytes / bw, "decode_tokens_per_s": cfg.extra.decode_batch * n_dev
                       * bw / decode_bytes}
    res = {"preset": cfg.preset, "depth": mc.depth, "width": width, "vocab": mc.vocab_size, "seq_len": T,
           "params": n_params, "mesh": dict(mesh.shape), "devices": n_dev, "tokens_per_step": tokens,
           "grad_accum": accum, "compute_dtype": mc.compute_dtype, "remat": mc.remat,
           "train": {"xla_flops_per_device": flops, "model_flops_per_device": model_flops,
                     "hbm_bytes_per_device": hbm, "xla_cpu_bytes_accessed": xla_bytes,
                     "wire_bytes_per_device": wire, "devices": table},
           "decode": {"batch_per_device": cfg.extra.decode_batch, "cache_len": cfg.extra.decode_cache,
                      "bytes_per_step_per_device": decode_bytes},
           "assumptions": f"matmuls at {cfg.extra.efficiency:.0%} of datasheet peak; HBM bytes estimated (see "
                          "docstring); bf16 weight gathers/all-to-alls, f32 head gather and reduce-scatters; "
                          "datasheet HBM and interconnect bandwidths; decode bandwidth-bound"}
    print(f"{cfg.preset} d{mc.depth} ({n_params / 1e6:.0f}M params) on {dict(mesh.shape)}, {tokens:,} tokens/step: "
          f"{flops / 1e12:.1f} TFLOP (model {model_flops / 1e12:.1f}), HBM {hbm / 1e9:.1f} GB, network "
          f"{net / 1e9:.2f} GB per device per step", file=sys.stderr)
    for name, r in table.items():
        print(f"  {name:14s} step {r['step_s'] * 1e3:7.1f}..{r['step_s_no_overlap'] * 1e3:7.1f} ms  "
              f"{r['tokens_per_s']:12,.0f} tok/s  MFU {100 * r['mfu']:5.1f}%..{100 * r['mfu_no_overlap']:5.1f}%"
              f"  ({r['bound']}-bound)  decode {r['decode_tokens_per_s']:9,.0f} tok/s", file=sys.stderr)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    cli(main)
