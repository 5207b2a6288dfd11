"""--run=NAME mirrors a training stage's JSONL log to a Weights & Biases run (the track extra), read back here from
wandb's offline run file (no network); the default run name, dummy, never imports wandb and writes nothing for it;
asked for without wandb installed, the error says how to install it."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxchat import config as C
from jaxchat import sharding as shd
from jaxchat import stage, train
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import read_jsonl
from jaxchat.config import BaseConfig, ConfigError, MeshConfig, ModelConfig

CFG = ModelConfig(depth=1, vocab_size=64, max_seq_len=16, aspect_ratio=32, head_dim_target=16)


def wandb_records(run_file):
    """The protobuf records of an offline .wandb file: W&B's LevelDB-style log (a 7-byte file header, 32 KiB blocks;
    each chunk: CRC32, uint16 length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = run_file.read_bytes(), 7, b""
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        if (room := 32768 - pos % 32768) < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        n, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            yield pb.Record.FromString(buf)
            buf = b""


def items(updates) -> dict:
    return {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}


def test_run_mirrors_the_stage_log_to_wandb(tmp_path, monkeypatch):
    """The shared loop (train.run) with a stage's log and summary, as every training stage runs them, on a tiny
    model (base_train itself would take ~30 s: data, evals, samples)."""
    wandb = pytest.importorskip("wandb", reason="the track extra: pip install -e '.[track]'")
    for k, v in {"JAXCHAT_BASE_DIR": tmp_path, "WANDB_DIR": tmp_path / "wb", "WANDB_MODE": "offline",
                 "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(k, str(v))
    tc = C.load(["base"], ["--num_iterations=4", "--eval_every=2", "--run=test"]).base  # every training stage's flag
    seqs = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 1, 2, CFG.max_seq_len + 1), dtype=np.int32)
    ck, log = Checkpoints(stage.out_dir("base", "d1")), stage.logger("base", "d1", tc)
    _, summary = train.run(train.create_train_state(CFG, tc, shd.make_mesh(MeshConfig(fsdp=1), jax.devices()[:1]), 4),
                           lambda step, state: {"inputs": seqs[step, ..., :-1], "targets": seqs[step, ..., 1:]},
                           name="base_train", ck=ck, log=log, evaluate=lambda state, step: {"val_bpb": 1 / step})
    keys = stage.SECTIONS["base-model-training"][1].split()
    stage.finish("base-model-training", {k: summary.get(k, 0) for k in keys}, checkpoints=ck)  # ends the W&B run
    wandb.teardown()  # wandb-core writes the run file's last records after finish() returns: wait for it to exit
    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, run.job_type) == ("jaxchat", "test", "base")
    assert items(run.config.update)["run"] == "test"  # the stage config
    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    log = read_jsonl(log.path)
    for kind, key in (("train", "loss"), ("train", "lr_mult"), ("eval", "val_bpb")):
        logged = [(r["step"], r[key]) for r in log if r["kind"] == kind]
        assert [(h["_step"], h[f"{kind}/{key}"]) for h in history if f"{kind}/{key}" in h] == logged, key
    assert [s for s, _ in logged] == [2, 4]
    final = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            final.update(items(r.summary.update))
    assert final["val_bpb"] == 0.25 and final["steps"] == 4  # the stage summary's numbers


def test_dummy_never_imports_wandb(tmp_path):
    """The default: the JSONL log only; wandb (a second to import) is not even imported."""
    code = ("import sys; from jaxchat.common import JsonlLog; JsonlLog(sys.argv[1], 'dummy', 'base')"
            ".write(kind='train', step=0, loss=1.5); print('wandb' in sys.modules)")
    env = {**os.environ, "WANDB_DIR": str(tmp_path / "wb"), "JAXCHAT_BASE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "log.jsonl")], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
    assert [r["loss"] for r in read_jsonl(tmp_path / "log.jsonl")] == [1.5]
    assert not (tmp_path / "wb").exists() and not (tmp_path / "wandb").exists()


def test_run_without_wandb_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as without the track extra
    with pytest.raises(ConfigError, match=r"--run=test .* not installed: `\.venv/bin/pip install -e '\.\[track\]'` "
                                          r"\(or `JAXCHAT_EXTRAS=dev,track bash run_all\.sh setup`\)"):
        stage.logger("base", "d1", BaseConfig(run="test"))
    assert stage.logger("base", "d1", BaseConfig()).wandb is None  # dummy needs no wandb
