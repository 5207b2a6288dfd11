"""Ahead-of-time memory plan: compile a preset's train step for an N-device mesh from abstract inputs
(`jit(...).lower(...).compile()`, nothing is allocated) and report each device's bytes against a budget.

    python -m scripts.memory_plan --preset d20                       # 8 emulated devices, nanochat's batch
    python -m scripts.memory_plan --preset d32 --remat=minimal --device_batch_size=8 --devices=8 --budget_gb=73.6

The budget is an 80 GB H100 × the memory fraction the stages give XLA (stage.GPU_MEM_FRACTION; XLA's own default
preallocates 75%). Without 8 real devices it emulates them on the CPU (XLA_FLAGS), so the partitioning is the real
one. Caveat printed with the result: XLA:CPU's attention materialises the [T, T] scores that cuDNN's flash
attention never stores, so for a GPU the figure is an upper bound. The last line is JSON.
"""
import json
import sys
import time

from jaxchat.common import cli
from scripts.perf_model import emulated_devices


def main(argv=None):
    devices = emulated_devices(argv)
    from jaxchat import compiled, stage, train, config as C, model as gpt, sharding as shd  # they import JAX: not before

    cfg = C.load(["model", "mesh", "base"], argv,
                 extra={"devices": 8, "budget_gb": 80.0 * float(stage.GPU_MEM_FRACTION)})
    mc, n_dev = cfg.model, len(devices)
    tc, _ = train.depth_dial(mc, cfg.base)  # the batch a speedrun-style preset derives from its depth
    mesh = shd.make_mesh(cfg.mesh, devices)
    accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, mc.max_seq_len, n_dev)
    t0 = time.time()
    lowered = compiled.lower_train_step(mc, tc, mesh, accum=accum)
    t1 = time.time()
    mem = lowered.compile().memory_analysis()
    t2 = time.time()
    gb, budget = 1024 ** 3, cfg.extra.budget_gb
    arg, out_b, alias, temp = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                               mem.temp_size_in_bytes)
    total = arg + out_b - alias + temp
    res = {"preset": cfg.preset, "depth": mc.depth, "devices": n_dev, "mesh": dict(mesh.shape),
           "device_batch_size": tc.device_batch_size, "grad_accum": accum, "seq_len": mc.max_seq_len,
           "compute_dtype": mc.compute_dtype, "remat": mc.remat, "scan_layers": mc.scan_layers,
           "loss_chunk": mc.loss_chunk, "params": gpt.num_params(mc),
           "per_device_gb": {"arguments": arg / gb, "outputs": out_b / gb, "aliased": alias / gb, "temp": temp / gb,
                             "total": total / gb},
           "budget_gb": budget, "fits": total / gb <= budget,
           "lower_s": t1 - t0, "compile_s": t2 - t1, "backend": devices[0].platform}
    print(f"{cfg.preset} d{mc.depth} on {n_dev} devices, batch {tc.device_batch_size}/device x {accum} accum, "
          f"remat={mc.remat}: {total / gb:.1f} GB per device (state {arg / gb:.1f}, temp {temp / gb:.1f}) vs "
          f"{budget:.0f} GB -> {'fits' if res['fits'] else 'DOES NOT FIT'}; compile {t2 - t1:.0f} s", file=sys.stderr)
    if devices[0].platform == "cpu":
        print("note: compiled by XLA:CPU; its attention stores [T,T] scores that cuDNN flash attention does not, so "
              "on GPU this is an upper bound", file=sys.stderr)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    cli(main)
