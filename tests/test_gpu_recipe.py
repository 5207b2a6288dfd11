"""The GPU recipe's guards, checked on this CPU: a GPU preset refuses to train on a CPU backend (and says what to
install), the loop's logging computes the LR on the host, d20 clips like nanochat V1, XLA's memory fraction is set."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxchat import config as C
from jaxchat import optim, stage

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args, timeout=120):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_preset_refuses_a_cpu_backend_but_dry_runs():
    r = run_script("scripts.base_train", "--preset=d20")
    assert r.returncode != 0
    assert "'cpu' backend" in r.stderr and "--allow_cpu" in r.stderr and "gpu_check" in r.stderr
    r = run_script("scripts.base_train", "--preset=d20", "--dry_run", "--devices=8")
    assert r.returncode == 0 and '"tokens_per_step": 524288' in r.stdout


def test_lr_multiplier_for_logging_is_a_host_float():
    m = optim.lr_multiplier(950, 1000, 0.0, 0.2, 0.0)
    assert type(m) is float and m == np.float32(0.25)  # 50 of 200 warmdown steps left
    traced = optim.lr_multiplier(np.int32(950), 1000, 0.0, 0.2, 0.0)
    assert type(traced) is float


def test_d20_recipe_clips_gradients_and_is_an_accelerator_preset():
    cfg = C.load(["mesh", "base"], ["--preset=d20"])
    assert cfg.base.grad_clip == 1.0 and cfg.mesh.accelerator and not cfg.mesh.allow_cpu
    assert not C.load(["mesh"], ["--preset=tiny"]).mesh.accelerator


def test_stage_sets_xla_memory_fraction(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    stage.init(C.MeshConfig())
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == stage.GPU_MEM_FRACTION
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")  # a user's own setting wins
    stage.init(C.MeshConfig())
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"


def test_v1_presets_plan_as_before_the_depth_dial():
    """depth_dial off: the V1 presets' horizon counts every param (ratio 20), their batch and LRs stay as set."""
    from scripts import base_train

    for preset, steps, accum, fpt in (("d20", 21_400, 1, 3_491_758_080), ("d26", 41_275, 2, 6_900_940_800),
                                      ("d32", 71_680, 4, 12_079_595_520)):
        plan = base_train.main([f"--preset={preset}", "--dry_run", "--devices=8"])
        assert (plan["steps"], plan["grad_accum"], plan["tokens_per_step"], plan["flops_per_token"]) == (
            steps, accum, 524_288, fpt), preset
        assert plan["lr_scale"] == 1.0 and plan["weight_decay"] == 0.0, preset
