"""Ahead-of-time memory plan: compile the train step of a preset for an N-device mesh from abstract inputs
(`jit(...).lower(...).compile()`, nothing is allocated) and report each device's bytes against a budget.

    python -m scripts.memory_plan --preset d20                       # 8 emulated devices, nanochat's batch
    python -m scripts.memory_plan --preset d32 --remat=minimal --device_batch_size=8

The budget is an 80 GB H100 × the memory fraction the stages give XLA (stage.GPU_MEM_FRACTION; XLA's own default
preallocates 75%). Runs anywhere: without 8 real devices it emulates them on the CPU (XLA_FLAGS), so the partitioning is the real
one. Caveat printed with the result: the CPU compiler's attention materialises the [T, T] scores that cuDNN's
flash attention on GPU never stores, so on GPU the figure is an upper bound. The last line is JSON.
"""
from __future__ import annotations

from jaxchat.common import cli

import json
import os
import sys
import time


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    n_dev = 8
    for a in argv:
        if a.startswith("--devices="):
            n_dev = int(a.split("=", 1)[1])
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={n_dev}").strip()
    import jax

    from jaxchat import compiled
    from jaxchat import config as C
    from jaxchat import model as gpt
    from jaxchat import sharding as shd
    from jaxchat import stage
    from jaxchat import train

    cfg = C.load(["model", "mesh", "base"], argv, extra={"devices": 8, "budget_gb": 80.0 * float(stage.GPU_MEM_FRACTION)})
    mc, tc = cfg.model, cfg.base
    devices = jax.devices()[:n_dev]
    if len(devices) < n_dev:
        raise SystemExit(f"need {n_dev} devices, have {len(jax.devices())} (set XLA_FLAGS before importing jax)")
    mesh = shd.make_mesh(cfg.mesh, devices)
    T = mc.max_seq_len
    accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, T, n_dev)
    t0 = time.time()
    lowered = compiled.lower_train_step(mc, tc, mesh, accum=accum)
    t1 = time.time()
    compiled = lowered.compile()
    t2 = time.time()
    mem = compiled.memory_analysis()
    gb = 1024 ** 3
    arg = mem.argument_size_in_bytes
    out_b = mem.output_size_in_bytes
    alias = mem.alias_size_in_bytes
    temp = mem.temp_size_in_bytes
    total = arg + out_b - alias + temp
    res = {"preset": cfg.preset, "depth": mc.depth, "devices": n_dev, "mesh": dict(mesh.shape),
           "device_batch_size": tc.device_batch_size, "grad_accum": accum, "seq_len": T,
           "compute_dtype": mc.compute_dtype, "remat": mc.remat, "scan_layers": mc.scan_layers,
           "loss_chunk": mc.loss_chunk, "params": gpt.num_params(mc),
           "per_device_gb": {"arguments": arg / gb, "outputs": out_b / gb, "aliased": alias / gb, "temp": temp / gb,
                             "total": total / gb},
           "budget_gb": cfg.extra.budget_gb, "fits": total / gb <= cfg.extra.budget_gb,
           "lower_s": t1 - t0, "compile_s": t2 - t1, "backend": jax.default_backend()}
    print(f"{cfg.preset} d{mc.depth} on {n_dev} devices, batch {tc.device_batch_size}/device x {accum} accum, "
          f"remat={mc.remat}: {total / gb:.1f} GB per device (state {arg / gb:.1f}, temp {temp / gb:.1f}) vs "
          f"{cfg.extra.budget_gb:.0f} GB -> {'fits' if res['fits'] else 'DOES NOT FIT'}; compile {t2 - t1:.0f} s",
          file=sys.stderr)
    if jax.default_backend() == "cpu":
        print("note: compiled by XLA:CPU; its attention stores [T,T] scores that cuDNN flash attention does not, so "
              "on GPU this is an upper bound", file=sys.stderr)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    cli(main)
