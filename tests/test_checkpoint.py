"""Checkpoints: restore across meshes, damaged steps are named and skipped, incompatible configs refused, and a
SIGKILLed base_train resumes bit-exactly."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.checkpoint import CheckpointError, Checkpoints, abstract_like
from jaxchat.config import MeshConfig, ModelConfig
from helpers import tiny_tokenizer, write_corpus

CFG = ModelConfig(depth=2, vocab_size=128, max_seq_len=16, aspect_ratio=32, head_dim_target=16)
ROOT = Path(__file__).resolve().parent.parent


def sharded_params(mesh_cfg, devices):
    mesh = shd.make_mesh(mesh_cfg, devices)
    sh = gpt.param_shardings(CFG, mesh)
    return shd.init_sharded(lambda k: gpt.init_params(CFG, k), sh, jax.random.key(3)), sh


def test_save_on_8_devices_restore_on_1_and_back(tmp_path):
    p8, _ = sharded_params(MeshConfig(fsdp=4, tensor=2), jax.devices())
    ck = Checkpoints(tmp_path / "a", async_save=False)
    ck.save(5, params=p8, meta={"model": {"depth": 2}})
    ck.wait()
    _, sh1 = sharded_params(MeshConfig(fsdp=1), jax.devices()[:1])
    items, meta = ck.restore(abstract_params=abstract_like(gpt.param_shapes(CFG), sh1))
    p1 = items["params"]
    assert meta["step"] == 5
    assert p1["wte"].sharding.mesh.size == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p1, p8)
    ck.save(6, params=p1, meta={})
    ck.wait()
    _, sh8 = sharded_params(MeshConfig(fsdp=8), jax.devices())
    back = ck.restore(6, abstract_params=abstract_like(gpt.param_shapes(CFG), sh8))[0]["params"]
    assert back["blocks"]["w_fc"].sharding.spec == sh8["blocks"]["w_fc"].spec
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, p8)


def test_damaged_checkpoint_is_named_and_skipped(tmp_path, capsys):
    p, sh = sharded_params(MeshConfig(fsdp=1), jax.devices()[:1])
    ck = Checkpoints(tmp_path / "b", keep=3, async_save=False)
    ck.save(1, params=p, meta={})
    ck.save(2, params=jax.tree.map(lambda x: x + 1, p), meta={})
    ck.wait()
    # truncate every array data file of step 2 (as a full disk or a killed copy would leave it)
    damaged = [f for f in (tmp_path / "b" / "2" / "params").rglob("*") if f.is_file() and f.stat().st_size > 0
               and "metadata" not in f.name and f.suffix != ".json"]
    assert damaged
    for f in damaged:
        f.write_bytes(f.read_bytes()[:7])
    abstract = abstract_like(gpt.param_shapes(CFG), sh)
    items, meta = ck.restore(abstract_params=abstract)
    assert meta["step"] == 1
    assert "b/2 is damaged and was skipped" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="b/2 is damaged"):
        ck.restore(2, abstract_params=abstract)


def test_incompatible_model_is_refused(tmp_path):
    p, sh = sharded_params(MeshConfig(fsdp=1), jax.devices()[:1])
    ck = Checkpoints(tmp_path / "c", async_save=False)
    ck.save(1, params=p, meta={"model": {"depth": 2, "vocab_size": 128}})
    ck.wait()
    with pytest.raises(CheckpointError, match="incompatible.*depth: checkpoint=2 requested=3"):
        ck.restore(abstract_params=abstract_like(gpt.param_shapes(CFG), sh), expect_model={"depth": 3, "vocab_size": 128})


# ---------------------------------------------------------------- kill -9 and resume


def _base_train(env, *extra):
    args = [sys.executable, "-m", "scripts.base_train", "--depth=2", "--aspect_ratio=32", "--head_dim_target=32",
            "--max_seq_len=32", "--device_batch_size=4", "--num_iterations=10", "--eval_every=-1",
            "--sample_every=-1", "--save_every=3", "--keep_checkpoints=5", *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(log: Path) -> dict:
    out = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            out[r["step"]] = r["loss"]  # a resumed run re-logs its steps; the last record wins
    return out


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(tmp_path):
    tok = tiny_tokenizer()
    corpus = write_corpus(tmp_path / "corpus")
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    runs = {}
    for name in ("straight", "killed"):
        base = tmp_path / name
        (base / "tokenizer").mkdir(parents=True)
        tok.save(base / "tokenizer" / "tokenizer.model")
        env_n = {**env, "JAXCHAT_BASE_DIR": str(base)}
        runs[name] = (base, env_n)
    base, env_s = runs["straight"]
    p = _base_train(env_s, f"--source={corpus}")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    straight = _losses(base / "base_checkpoints" / "d2" / "log.jsonl")
    assert sorted(straight) == list(range(10))

    base, env_k = runs["killed"]
    p = _base_train(env_k, f"--source={corpus}")
    ck_dir = base / "base_checkpoints" / "d2"
    deadline = time.time() + 240
    while time.time() < deadline and not (ck_dir / "3" / "meta").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (ck_dir / "3").exists(), "the first checkpoint never appeared"
    first = _losses(ck_dir / "log.jsonl")
    assert max(first) < 9, "the run finished before it could be killed"
    p = _base_train(env_k, f"--source={corpus}", "--resume")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "resumed from" in out
    resumed = _losses(ck_dir / "log.jsonl")
    assert sorted(resumed) == list(range(10))
    assert resumed == straight  # bit-exact, step for step
