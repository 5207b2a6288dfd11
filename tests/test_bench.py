"""The benchmark scripts as CI-size smoke tests: each runs as its own process (so its own XLA flags apply),
exits 0 and ends with a JSON line carrying the figures dev/BENCHMARKS.md is built from."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--depth=2", "--vocab_size=512", "--max_seq_len=64"]


def run_script(module: str, *args: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_bench_train_smoke():
    r = run_script("scripts.bench_train", *SMALL, "--steps=2", "--device_batch_size=2")
    assert r["bench"] == "train" and r["tokens_per_s"] > 0 and r["flops_per_s"] > 0 and r["compile_s"] > 0
    assert r["depth"] == 2 and r["seq_len"] == 64 and r["mfu"] is None  # no peak for a CPU


def test_bench_data_smoke():
    r = run_script("scripts.bench_data", "--vocab_size=512", "--max_chars=300000", "--seconds=0.5", "--rows=4",
                   "--seq_len=256")
    assert r["bench"] == "data" and r["batches"] >= 2 and r["threads"] >= 1 and r["cores"] >= 1
    assert r["chars_per_s"] > r["tokens_per_s"] > 0 and r["tokens_per_s_per_core"] * r["cores"] == pytest.approx(
        r["tokens_per_s"], abs=r["cores"])


def test_bench_decode_smoke():
    r = run_script("scripts.bench_decode", *SMALL, "--prompt_len=8", "--new_tokens=8", "--batches=1,2", "--reps=1")
    assert r["bench"] == "decode"
    assert [(x["batch"], x["mode"]) for x in r["results"]] == [(1, "single"), (2, "samples"), (2, "prompts")]
    for x in r["results"]:  # the stop tokens lie outside the vocabulary: every row runs its full length
        assert x["tokens_per_s"] > 0 and x["new_tokens_total"] == 8 * x["batch"]


def test_bench_decode_rejects_an_unknown_mode():
    p = subprocess.run([sys.executable, "-m", "scripts.bench_decode", *SMALL, "--modes=sample"], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert p.returncode != 0 and "--modes takes 'samples', 'prompts'" in p.stderr, p.stderr[-2000:]


def test_bench_nanochat_needs_a_checkout(tmp_path):
    """Without a nanochat checkout the side-by-side script says how to get one (it never runs in CI: no network)."""
    p = subprocess.run([sys.executable, "-m", "scripts.bench_nanochat", f"--nanochat_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode != 0 and "not a nanochat checkout" in p.stderr and "10231df" in p.stderr, p.stderr[-2000:]


def test_memory_plan_emulates_its_devices():
    """Started bare (1 CPU device), the script must emulate the mesh it plans for and compile the real step."""
    r = run_script("scripts.memory_plan", *SMALL, "--devices=4", "--device_batch_size=2", "--total_batch_size=-1")
    assert r["devices"] == 4 and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}, r
    assert 0 < r["per_device_gb"]["total"] < 1 and r["fits"], r
