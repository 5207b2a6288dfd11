"""Benchmark the jitted train step: tokens/s, achieved FLOP/s, MFU (on GPUs/TPUs with a known peak), compile time
and memory. The last line of output is JSON.

    python -m scripts.bench_train                                  # the tiny preset: depth 4, vocab 8192, seq 512, batch 8
    python -m scripts.bench_train --preset d20 --device_batch_size=8 --compute_dtype=bfloat16
    python -m scripts.bench_train --steps=3 --warmup=1 --depth=2   # CI-size smoke run
"""
import json
import sys
import time

import jax
import numpy as np

from jaxchat import config as C
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat import train
from jaxchat.common import cli


def main(argv=None):
    cfg = C.load(["model", "mesh", "base"], argv, extra={"steps": 10, "warmup": 2})
    mc, tc = cfg.model, cfg.base  # the preset's pretraining step: its model, optimizer and batch
    mesh = shd.make_mesh(cfg.mesh)
    n_dev, T = mesh.size, mc.max_seq_len
    B = tc.device_batch_size * n_dev
    accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, T, n_dev)
    tokens_per_step = accum * B * T
    setup = train.create_train_state(mc, tc, mesh, num_iterations=1000)
    seqs = np.random.default_rng(0).integers(0, mc.vocab_size, (accum, B, T + 1), dtype=np.int32)
    batch = train.put_batch(setup, {"inputs": seqs[..., :-1], "targets": seqs[..., 1:]})

    t0 = time.perf_counter()
    step = train.jit_train_step(setup).lower(setup.state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, times = setup.state, []
    for i in range(cfg.extra.warmup + cfg.extra.steps):
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        if i >= cfg.extra.warmup:
            times.append(time.perf_counter() - t)
    dt, fpt, peak = float(np.median(times)), gpt.flops_per_token(mc), train.device_peak_flops()
    mem, stats = step.memory_analysis(), jax.devices()[0].memory_stats()  # stats: None on CPU backends
    out = {
        "bench": "train", "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
        "n_devices": n_dev, "jax": jax.__version__,
        "depth": mc.depth, "vocab_size": mc.vocab_size, "seq_len": T, "global_batch": B, "grad_accum": accum,
        "compute_dtype": mc.compute_dtype, "scan_layers": mc.scan_layers, "remat": mc.remat,
        "attn_impl": mc.attn_impl, "loss_chunk": mc.loss_chunk, "params": gpt.num_params(mc),
        "step_s": dt, "step_s_min": float(np.min(times)), "tokens_per_s": tokens_per_step / dt,
        "flops_per_token": fpt, "flops_per_s": fpt * tokens_per_step / dt,
        "mfu": (fpt * tokens_per_step / dt) / (peak * n_dev) if peak else None, "peak_flops_per_device": peak,
        "compile_s": compile_s, "loss": float(m["loss"]),
        "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
        **({"peak_bytes_in_use": int(stats.get("peak_bytes_in_use", 0))} if stats else {}),
    }
    print(f"train step {dt * 1e3:.1f} ms | {out['tokens_per_s']:,.0f} tokens/s | "
          f"{out['flops_per_s'] / 1e12:.3f} TFLOP/s" + (f" | MFU {out['mfu'] * 100:.1f}%" if out["mfu"] else "")
          + f" | compile {compile_s:.1f} s", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli(main)
