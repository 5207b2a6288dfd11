"""The first ten minutes on a GPU node: is JAX on the GPU, does cuDNN attention agree with XLA's, how fast are
one d20-width train step and one decode step against their models, how much memory, how fast the host loader.
One line per check, then JSON on the last line: {"checks": {name: {"status": "pass"|"fail"|"skip", ...}},
"platform": ..., "ok": ...}. Exits 1 when a check failed; skips (each says why: on a CPU, the GPU-only ones)
are fine.

    python -m scripts.gpu_check                          # all checks
    python -m scripts.gpu_check --checks=devices,attention --device_batch_size=16
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import traceback

from jaxchat.common import cli

CHECKS = "devices,attention,cudnn_attention,train_step,decode,memory,loader"
REINSTALL = ("reinstall JAX's CUDA wheels to match the driver: `bash run_all.sh setup` (the preset's), or "
             "pip install -e '.[gpu]' (CUDA 12) / '.[gpu13]' (CUDA 13, driver >= 580)")
TOL = 2e-2  # bf16: max |x - reference| / max |reference|, reference = float32 XLA attention


def backend_verdict(platform: str, nvidia_smi: str | None, jax_platforms: str = "") -> tuple[str, str]:
    """(status, reason) for the backend JAX picked, given nvidia-smi's output (None: no nvidia-smi). A GPU the
    driver sees while JAX runs on the CPU is the classic wheels-do-not-match-the-driver fallback: a fail."""
    if platform == "gpu" or not nvidia_smi:
        return "pass", f"JAX backend {platform}" + ("" if nvidia_smi or platform == "gpu" else ", no nvidia-smi")
    if jax_platforms and "cuda" not in jax_platforms and "gpu" not in jax_platforms:
        return "pass", f"JAX_PLATFORMS={jax_platforms} keeps JAX off the GPU nvidia-smi sees; unset it to check it"
    if nvidia_smi.startswith("error"):
        return "fail", f"nvidia-smi fails ({nvidia_smi[6:200]}): the NVIDIA driver does not work on this node"
    driver = nvidia_smi.split(",")[0].strip()
    return "fail", (f"nvidia-smi sees a GPU (driver {driver}) but JAX fell back to {platform}: " + REINSTALL)


def nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    q = ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
    try:
        p = subprocess.run(q, capture_output=True, text=True, timeout=30)
        return p.stdout.strip() if p.returncode == 0 else f"error {(p.stdout + p.stderr).strip()}"
    except Exception as e:  # noqa: BLE001 (a hung or broken driver)
        return f"error {e}"


def on_gpu() -> bool:
    import jax
    return jax.default_backend() == "gpu"


def quiet(fn, argv):
    """A bench script's main(argv), its own output sent to stderr: our stdout ends with our JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        return fn(argv)


def check_devices(x):
    import jax
    from jax._src import lib
    devs, smi = jax.devices(), nvidia_smi()
    status, reason = backend_verdict(jax.default_backend(), smi, os.environ.get("JAX_PLATFORMS", ""))
    env = ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")
    figs = {"platform": jax.default_backend(), "device_kind": devs[0].device_kind, "count": len(devs),
            "jax": jax.__version__, "nvidia_smi": smi, **{k: os.environ.get(k) for k in env},
            "platform_version": getattr(devs[0].client, "platform_version", None)}
    for name in ("cuda_runtime_get_version", "cuda_driver_get_version", "cudnn_get_version"):
        with contextlib.suppress(Exception):  # only CUDA plugins have these
            figs[name.removesuffix("_get_version")] = getattr(lib.cuda_versions, name)()
    return status, f"{reason}; {len(devs)} x {devs[0].device_kind}", figs


def attention_check(impl: str):
    """jax's and jaxchat's `impl` attention in bf16 against float32 XLA attention, forward and gradients w.r.t.
    q, k, v at the last 64 positions: GQA 8:2 heads, head_dim 128, T=512, causal. For XLA also jaxchat's cached
    attention: the last 64 queries against a cache holding 64 stale slots past the prompt."""
    import jax
    import jax.numpy as jnp
    from jaxchat import config as C
    from jaxchat import model as gpt
    B, T, H, K, Dh, n = 2, 512, 8, 2, 128, 64
    q, k, v, g = (jax.random.normal(jax.random.key(i), s) for i, s in
                  enumerate([(B, T, H, Dh), (B, T, K, Dh), (B, T, K, Dh), (B, n, H, Dh)]))
    cfg = dataclasses.replace(C.ModelConfig(), attn_impl=impl, compute_dtype="bfloat16")

    def jax_attn(i):
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=i)[:, -n:]

    def cached(q, k, v):
        kc, vc = (jnp.pad(a.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n), (0, 0)), constant_values=3.0)
                  for a in (k, v))
        return gpt.cached_attention(q[:, -n:], kc, vc, jnp.broadcast_to(jnp.arange(T - n, T), (B, n)))

    def run(fn, dt):
        out, vjp = jax.vjp(jax.jit(fn), *(a.astype(dt) for a in (q, k, v)))
        return [a.astype(jnp.float32) for a in (out, *vjp(g.astype(dt)))]

    with jax.default_matmul_precision("highest"):  # no TF32 in the reference
        ref = run(jax_attn("xla"), jnp.float32)
    cases = {f"jax_{impl}": jax_attn(impl),
             f"jaxchat_{impl}": lambda q, k, v: gpt.causal_attention(q, k, v, cfg)[:, -n:],
             **({"jaxchat_cached": cached} if impl == "xla" else {})}
    errs = {name: {w: float(jnp.abs(a - r).max() / jnp.abs(r).max())
                   for w, a, r in zip(("out", "dq", "dk", "dv"), run(fn, jnp.bfloat16), ref)}
            for name, fn in cases.items()}
    worst = max(e for c in errs.values() for e in c.values())
    return ("pass" if worst <= TOL else "fail"), f"worst relative error {worst:.2e} (tolerance {TOL:g}) over " \
        f"{', '.join(errs)}, forward and gradients", errs


def check_attention(x):
    return attention_check("xla")


def check_cudnn_attention(x):
    import jax
    if not on_gpu() or "rocm" in str(getattr(jax.devices()[0].client, "platform_version", "")).lower():
        return "skip", f"cuDNN attention needs an NVIDIA GPU (backend: {jax.default_backend()})", {}
    return attention_check("cudnn")


def predict(argv: list[str], kind: str) -> dict | str:
    """The performance model's figures for this device kind (longest matching name), or why there are none."""
    try:
        devices = importlib.import_module("scripts.perf_model").main(argv)["train"]["devices"]
        match = [n for n in devices if n.split()[0].lower() in kind.lower()]
        if not match:
            return f"unavailable: no entry for {kind!r} (has {', '.join(devices)})"
        return {"device": (best := max(match, key=lambda n: len(n.split()[0]))), **devices[best]}
    except (Exception, SystemExit) as e:  # noqa: BLE001 (a missing module, a rejected flag, a changed format)
        return f"unavailable: {type(e).__name__}: {e}"


def check_train_step(x):
    import math

    from scripts import bench_train
    if on_gpu():  # d20's width (1280 = 4 x 320), heads, vocab and sequence, 4 layers instead of 20
        shape = ["--preset=d20", "--depth=4", "--aspect_ratio=320", f"--device_batch_size={x.device_batch_size}"]
        r = quiet(bench_train.main, shape + ["--total_batch_size=-1", "--steps=5", "--warmup=2"])
        pred = predict(shape + [f"--devices={r['n_devices']}"], r["device"])
        label = "d20 width, depth 4"
    else:
        r = quiet(bench_train.main, ["--depth=2", "--max_seq_len=64", "--vocab_size=512", "--device_batch_size=1",
                                     "--steps=2", "--warmup=1"])
        pred, label = "skipped: no GPU", "cpu smoke (not a GPU figure)"
    figs = {k: r.get(k) for k in ("device", "n_devices", "depth", "seq_len", "global_batch", "step_s",
                                  "tokens_per_s", "mfu", "compile_s", "loss", "peak_bytes_in_use")}
    figs.update(label=label, predicted=pred)
    if isinstance(pred, dict) and pred.get("tokens_per_s"):
        figs["measured_over_predicted"] = r["tokens_per_s"] / pred["tokens_per_s"]
    line = f"{label}: {r['tokens_per_s']:,.0f} tokens/s" + (f", MFU {r['mfu']:.1%}" if r.get("mfu") else "") + \
        (f", model predicts {pred['tokens_per_s']:,.0f}" if isinstance(pred, dict) else f"; prediction {pred}")
    return ("pass" if math.isfinite(r["loss"]) else "fail"), line + f", loss {r['loss']:.3f}", figs


def check_decode(x):
    from scripts import bench_decode
    argv = (["--preset=d20", "--new_tokens=128", "--reps=2"] if on_gpu() else
            ["--depth=2", "--max_seq_len=64", "--vocab_size=512", "--prompt_len=8", "--new_tokens=8", "--reps=1"])
    r = quiet(bench_decode.main, argv + ["--batches=1"])["results"][0]
    bound = (f", {r['step_vs_roofline']:.2f}x the bandwidth bound ({r['roofline_step_ms']:.2f} ms)"
             if "roofline_step_ms" in r else ", bandwidth bound unknown for this device")
    return "pass", f"batch 1 decode step {r['decode_step_ms']:.2f} ms" + bound, r


def check_memory(x):
    import jax
    if not on_gpu():
        return "skip", f"device memory stats are GPU-only (backend: {jax.default_backend()})", {}
    s = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in s:
        return "skip", "memory_stats() reported no limit", s
    f = {k: s.get(k) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}
    return "pass", f"peak {f['peak_bytes_in_use'] / 2**30:.1f} GiB of {f['bytes_limit'] / 2**30:.1f} GiB", f


def check_loader(x):
    try:
        bench = importlib.import_module("scripts.bench_data")
    except ImportError as e:
        return "skip", f"no data benchmark available ({e})", {}
    r = quiet(bench.main, [f"--seconds={x.loader_seconds}", "--rows=8", "--seq_len=2048"])
    return "pass", f"{r['tokens_per_s'] / 1e6:.3f}M tokens/s per process on {r['cores']} cores", r


def main(argv=None):
    from jaxchat import config as C
    from jaxchat.stage import GPU_MEM_FRACTION

    cfg = C.load([], argv, extra={"checks": CHECKS, "device_batch_size": 32, "loader_seconds": 3.0})
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)  # as the stages run (before JAX starts)
    import jax
    names, results = cfg.extra.checks.split(","), {}
    if unknown := set(names) - set(CHECKS.split(",")):
        raise C.ConfigError(f"unknown check(s) {sorted(unknown)}; checks: {CHECKS}")
    for name in names:
        try:
            status, text, figs = globals()[f"check_{name}"](cfg.extra)
        except Exception as e:  # noqa: BLE001 (a crashing check is a failed check; the others still run)
            traceback.print_exc()
            status, text, figs = "fail", f"{type(e).__name__}: {e}", {}
        results[name] = {"status": status, ("summary" if status == "pass" else "reason"): text, "figures": figs}
        print(f"[{status}] {name}: {text}", flush=True)
    out = {"checks": results, "platform": jax.default_backend(),
           "ok": all(r["status"] != "fail" for r in results.values())}
    print(json.dumps(out, default=str))
    return out


if __name__ == "__main__":
    cli(lambda: sys.exit(0 if main()["ok"] else 1))
