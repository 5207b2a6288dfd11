"""The first ten minutes on a GPU node: is JAX on the GPU, does cuDNN attention agree with XLA's, how fast are a
d20-width train step and a decode step against their models, peak memory, the host loader's rate. One line per
check (a skip says why), then JSON {"checks": {name: {"status": ...}}, "platform", "ok"}; exit 1 if a check failed.
    python -m scripts.gpu_check [--checks=devices,attention,...] [--device_batch_size=32] [--loader_seconds=3]
"""
import contextlib
import functools
import json
import os
import subprocess
import sys
import traceback

import jax
import jax.numpy as jnp
from jax._src import lib

from jaxchat import config as C
from jaxchat import model as gpt
from jaxchat.common import cli
from jaxchat.stage import GPU_MEM_FRACTION
from scripts import bench_data, bench_decode, bench_train, perf_model

CHECKS = "devices,attention,cudnn_attention,train_step,decode,memory,loader"
ENV = ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")  # reported by `devices`
SMALL = ["--depth=2", "--max_seq_len=64", "--vocab_size=512"]  # the CPU smoke runs' model
TOL = 2e-2  # bf16: max |x - reference| / max |reference|, reference = float32 XLA attention


def backend_verdict(platform: str, nvidia_smi: str | None, jax_platforms: str = "") -> tuple[str, str]:
    """(status, reason); a GPU that nvidia-smi sees under a CPU backend is the CUDA-wheels mismatch: a fail."""
    if platform == "gpu" or not nvidia_smi:
        return "pass", f"JAX backend {platform}" + ("" if nvidia_smi or platform == "gpu" else ", no nvidia-smi")
    if jax_platforms and "cuda" not in jax_platforms and "gpu" not in jax_platforms:
        return "pass", f"JAX_PLATFORMS={jax_platforms} keeps JAX off the GPU nvidia-smi sees; unset it to check it"
    if nvidia_smi.startswith("error"):
        return "fail", f"nvidia-smi fails ({nvidia_smi[6:200]}): the NVIDIA driver does not work on this node"
    return "fail", (f"nvidia-smi sees a GPU (driver {nvidia_smi.split(',')[0].strip()}) but JAX fell back to "
                    f"{platform}: reinstall JAX's CUDA wheels to match the driver: `bash run_all.sh setup` (the "
                    "preset's), or pip install -e '.[gpu]' (CUDA 12) / '.[gpu13]' (CUDA 13, driver >= 580)")


def check_devices(x):
    q = ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
    try:
        p = subprocess.run(q, capture_output=True, text=True, timeout=30)
        smi = p.stdout.strip() if p.returncode == 0 else f"error {(p.stdout + p.stderr).strip()}"
    except Exception as e:  # noqa: BLE001 (no nvidia-smi; a hung or broken driver)
        smi = None if isinstance(e, FileNotFoundError) else f"error {e}"
    devs, env = jax.devices(), {k: os.environ.get(k) for k in ENV}
    status, reason = backend_verdict(jax.default_backend(), smi, env["JAX_PLATFORMS"] or "")
    figs = {"platform": jax.default_backend(), "device_kind": devs[0].device_kind, "count": len(devs),
            "jax": jax.__version__, "nvidia_smi": smi, **env, "platform_version": devs[0].client.platform_version}
    for name in ("cuda_runtime_get_version", "cuda_driver_get_version", "cudnn_get_version"):
        with contextlib.suppress(Exception):  # only CUDA plugins have these
            figs[name.removesuffix("_get_version")] = getattr(lib.cuda_versions, name)()
    return status, f"{reason}; {len(devs)} x {devs[0].device_kind}", figs


def check_attention(x, impl: str = "xla"):
    """`impl` attention (jax's, jaxchat's; for XLA also jaxchat's cached one) in bf16 against float32 XLA attention:
    forward and gradients at the last n positions, GQA, causal."""
    backend = jax.default_backend()
    if impl == "cudnn" and (backend != "gpu" or "rocm" in jax.devices()[0].client.platform_version.lower()):
        return "skip", f"cuDNN attention needs an NVIDIA GPU (backend: {backend})", {}
    B, T, H, K, Dh, n = 2, 512, 8, 2, 128, 64
    q, k, v, g = (jax.random.normal(jax.random.key(i), s) for i, s in
                  enumerate([(B, T, H, Dh), (B, T, K, Dh), (B, T, K, Dh), (B, n, H, Dh)]))
    cfg = C.ModelConfig(attn_impl=impl, compute_dtype="bfloat16")
    sdpa = functools.partial(jax.nn.dot_product_attention, is_causal=True)

    def cached(q, k, v):  # the last n queries against a cache holding n stale slots past the prompt
        kc, vc = (jnp.pad(a.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n), (0, 0)), constant_values=3.0)
                  for a in (k, v))
        return gpt.cached_attention(q[:, -n:], kc, vc, jnp.broadcast_to(jnp.arange(T - n, T), (B, n)))

    def run(fn, dt):  # output and gradients at the last n positions, in float32
        out, vjp = jax.vjp(jax.jit(lambda *a: fn(*a)[:, -n:]), *(a.astype(dt) for a in (q, k, v)))
        return [a.astype(jnp.float32) for a in (out, *vjp(g.astype(dt)))]

    with jax.default_matmul_precision("highest"):  # no TF32 in the reference
        ref = run(functools.partial(sdpa, implementation="xla"), jnp.float32)
    cases = {f"jax_{impl}": functools.partial(sdpa, implementation=impl),
             f"jaxchat_{impl}": functools.partial(gpt.causal_attention, cfg=cfg),
             **({"jaxchat_cached": cached} if impl == "xla" else {})}
    errs = {name: {w: float(jnp.abs(a - r).max() / jnp.abs(r).max())
                   for w, a, r in zip(("out", "dq", "dk", "dv"), run(fn, jnp.bfloat16), ref)}
            for name, fn in cases.items()}
    worst = max(e for c in errs.values() for e in c.values())
    return ("pass" if worst <= TOL else "fail"), f"worst relative error {worst:.2e} (tolerance {TOL:g}) over " \
        f"{', '.join(errs)}, forward and gradients", errs


check_cudnn_attention = functools.partial(check_attention, impl="cudnn")


def predict(argv: list[str], kind: str) -> dict | str:
    """The performance model's figures for this device kind (longest matching name), or why there are none."""
    try:
        devices = perf_model.main(argv)["train"]["devices"]
        match = [n for n in devices if n.split()[0].lower() in kind.lower()]
        if not match:
            return f"unavailable: no entry for {kind!r} (has {', '.join(devices)})"
        return {"device": (best := max(match, key=lambda n: len(n.split()[0]))), **devices[best]}
    except (Exception, SystemExit) as e:  # noqa: BLE001 (a rejected flag, a changed format)
        return f"unavailable: {type(e).__name__}: {e}"


def check_train_step(x):
    if jax.default_backend() == "gpu":  # d20's width (1280 = 4 x 320), heads, vocab, sequence; 4 layers
        shape = ["--preset=d20", "--depth=4", "--aspect_ratio=320", f"--device_batch_size={x.device_batch_size}"]
        r = bench_train.main(shape + ["--total_batch_size=-1", "--steps=5", "--warmup=2"])
        pred, label = predict(shape + [f"--devices={r['n_devices']}"], r["device"]), "d20 width, depth 4"
    else:
        r = bench_train.main(SMALL + ["--device_batch_size=1", "--steps=2", "--warmup=1"])
        pred, label = "skipped: no GPU", "cpu smoke (not a GPU figure)"
    figs = {**r, "label": label, "predicted": pred,
            **({"measured_over_predicted": r["tokens_per_s"] / pred["tokens_per_s"]} if isinstance(pred, dict) else {})}
    line = f"{label}: {r['tokens_per_s']:,.0f} tokens/s" + (f", MFU {r['mfu']:.1%}" if r.get("mfu") else "") + \
        (f", model predicts {pred['tokens_per_s']:,.0f}" if isinstance(pred, dict) else f"; prediction {pred}")
    return ("pass" if jnp.isfinite(r["loss"]) else "fail"), line + f", loss {r['loss']:.3f}", figs


def check_decode(x):
    argv = (["--preset=d20", "--new_tokens=128", "--reps=2"] if jax.default_backend() == "gpu" else
            SMALL + ["--prompt_len=8", "--new_tokens=8", "--reps=1"])
    r = bench_decode.main(argv + ["--batches=1"])["results"][0]
    bound = (f", {r['step_vs_roofline']:.2f}x the bandwidth bound ({r['roofline_step_ms']:.2f} ms)"
             if "roofline_step_ms" in r else ", bandwidth bound unknown for this device")
    return "pass", f"batch 1 decode step {r['decode_step_ms']:.2f} ms" + bound, r


def check_memory(x):
    if not (s := jax.devices()[0].memory_stats()):  # None on a CPU
        return "skip", f"device memory stats are GPU-only (backend: {jax.default_backend()})", {}
    f = {k: s[k] for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}
    return "pass", f"peak {f['peak_bytes_in_use'] / 2**30:.1f} GiB of {f['bytes_limit'] / 2**30:.1f} GiB", f


def check_loader(x):
    r = bench_data.main([f"--seconds={x.loader_seconds}", "--rows=8", "--seq_len=2048"])
    return "pass", f"{r['tokens_per_s'] / 1e6:.3f}M tokens/s per process on {r['cores']} cores", r


def main(argv=None):
    cfg = C.load([], argv, extra={"checks": CHECKS, "device_batch_size": 32, "loader_seconds": 3.0})
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)  # as the stages run
    names, results = cfg.extra.checks.split(","), {}
    if unknown := set(names) - set(CHECKS.split(",")):
        raise C.ConfigError(f"unknown check(s) {sorted(unknown)}; checks: {CHECKS}")
    for name in names:
        try:  # the bench scripts' own output goes to stderr: our stdout ends with our JSON
            with contextlib.redirect_stdout(sys.stderr):
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
