"""scripts/gpu_check.py on a CPU: every check runs or says why it cannot, the last line is JSON, exit 0. Its
decisions that need a GPU node (the CUDA-wheels fallback, picking the performance model's device entry) are
tested with fake inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

from scripts import gpu_check

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = {"cudnn_attention", "memory"}


def test_gpu_check_on_cpu():
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--loader_seconds=1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    r = json.loads(lines[-1])
    assert r["platform"] == "cpu" and r["ok"] and set(r["checks"]) == set(gpu_check.CHECKS.split(","))
    assert len(lines) == len(r["checks"]) + 1  # one human line per check, the bench scripts' output on stderr
    for name, c in r["checks"].items():
        if name in GPU_ONLY:
            assert c["status"] == "skip" and c["reason"], (name, c)
        else:
            assert c["status"] == "pass", (name, c)
    att = r["checks"]["attention"]["figures"]
    assert set(att) == {"jaxchat_xla", "jaxchat_cached", "jax_xla"} and all(
        0 < e <= gpu_check.TOL for case in att.values() for e in case.values()), att
    train = r["checks"]["train_step"]["figures"]
    assert train["label"].startswith("cpu smoke") and train["tokens_per_s"] > 0
    assert r["checks"]["decode"]["figures"]["decode_step_ms"] > 0
    assert r["checks"]["loader"]["figures"]["tokens_per_s"] > 0


def test_cpu_backend_under_a_visible_gpu_is_a_failure():
    smi = "580.65.06, NVIDIA H100 80GB HBM3, 81559 MiB"
    status, reason = gpu_check.backend_verdict("cpu", smi)
    assert status == "fail" and "580.65.06" in reason and "run_all.sh setup" in reason and "gpu13" in reason
    assert gpu_check.backend_verdict("gpu", smi)[0] == "pass"
    status, reason = gpu_check.backend_verdict("cpu", "error NVIDIA-SMI has failed because it couldn't communicate")
    assert status == "fail" and "driver does not work" in reason
    assert gpu_check.backend_verdict("cpu", None)[0] == "pass"  # a CPU machine
    assert gpu_check.backend_verdict("cpu", smi, "cpu")[0] == "pass"  # CPU asked for: said, not failed


def test_prediction_picks_the_local_device(monkeypatch):
    devices = {"H100 SXM": {"tokens_per_s": 1.0}, "H20": {"tokens_per_s": 2.0}, "H200": {"tokens_per_s": 3.0}}
    fake = types.SimpleNamespace(main=lambda argv: {"preset": "d20", "train": {"devices": devices}})
    monkeypatch.setattr(gpu_check, "perf_model", fake)
    assert gpu_check.predict([], "NVIDIA H200") == {"device": "H200", "tokens_per_s": 3.0}
    assert gpu_check.predict([], "NVIDIA H100 80GB HBM3")["device"] == "H100 SXM"
    assert gpu_check.predict([], "Tesla T4").startswith("unavailable: no entry")
    fake.main = lambda argv: {}
    assert gpu_check.predict([], "NVIDIA H200").startswith("unavailable: KeyError")


def test_a_crashing_check_is_a_failure_and_the_rest_still_run(monkeypatch, capsys):
    def boom(x):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(gpu_check, "check_devices", boom)
    r = gpu_check.main(["--checks=devices,memory"])
    assert not r["ok"] and r["checks"]["devices"] == {"status": "fail", "reason": "RuntimeError: no such kernel",
                                                      "figures": {}}
    assert r["checks"]["memory"]["status"] == "skip"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == r
