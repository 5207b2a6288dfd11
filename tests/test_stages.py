"""The stage scripts end to end on a miniature model, each through its `main(argv)` in a temporary base
directory: tok_train → base_train → mid_train → chat_sft → chat_rl → chat_eval (the chain `run_all.sh` runs,
with the tiny preset's keys overridden down to a few steps of a 1-layer model), on the 8-device CPU mesh
(one row per device). The numbers a 1-layer model reaches in 3 steps mean nothing; what is checked is that
every stage finds the previous stage's output, writes its own, and reports the figures the report reads, and
that a rerun over an earlier run's checkpoints needs --resume or --overwrite.
"""
from __future__ import annotations

import json
import math

import pytest

from jaxchat.checkpoint import CheckpointError

MODEL = ["--depth=1", "--aspect_ratio=64", "--head_dim_target=32", "--max_seq_len=128"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_stage_chain(tmp_path, monkeypatch):
    base_dir = tmp_path
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(base_dir))
    from scripts import base_train, chat_eval, chat_rl, chat_sft, mid_train, tok_train

    tok = tok_train.main(["--vocab_size=512", "--max_chars=300_000", "--num_threads=1"])
    assert tok["vocab_size"] == 512 and (base_dir / "tokenizer" / "tokenizer.model").is_file()

    base = base_train.main([*MODEL, "--num_iterations=3", "--device_batch_size=1", "--eval_every=3",
                            "--eval_tokens=512", "--sample_every=-1", "--save_every=-1", "--core_metric_every=-1"])
    assert base["steps"] == 3 and _finite(base["val_bpb"]), base  # each next stage loads the checkpoint before it

    mid_args = ["--num_iterations=2", "--device_batch_size=1", "--eval_every=2", "--eval_tokens=512"]
    mid = mid_train.main(mid_args)
    assert mid["steps"] == 2 and _finite(mid["val_bpb"]), mid

    # a second run without --resume stops before any work and leaves the first run's checkpoint alone;
    # --overwrite replaces it (the same run again: the training chain is deterministic)
    mid_dir = base_dir / "mid_checkpoints" / "d1"
    before = {f: f.stat().st_mtime_ns for f in mid_dir.rglob("*") if f.is_file()}
    with pytest.raises(CheckpointError, match=r"\(steps \[2\]\)\. Pass --resume to continue from step 2, or --overwrite"):
        mid_train.main(mid_args)
    assert {f: f.stat().st_mtime_ns for f in mid_dir.rglob("*") if f.is_file()} == before
    again = mid_train.main([*mid_args, "--overwrite"])
    assert again["val_bpb"] == mid["val_bpb"] and [p.name for p in mid_dir.iterdir() if p.name.isdigit()] == ["2"]
    mid_log = [json.loads(line) for line in (mid_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in mid_log if r.get("kind") == "train"] == [0, 1]  # the new run's steps only

    sft = chat_sft.main(["--num_iterations=2", "--device_batch_size=1", "--target_examples_per_step=8",
                         "--eval_every=2", "--eval_steps=1", "--eval_metrics_every=-1"])
    assert sft["steps"] == 2, sft

    rl = chat_rl.main(["--num_iterations=2", "--examples_per_step=4", "--num_samples=2", "--max_new_tokens=8",
                       "--eval_every=2", "--eval_examples=2", "--save_every=2"])
    assert rl["steps"] == 2 and rl["reward_window"] == 1, rl
    assert 0 <= rl["reward_first"] <= 1 and 0 <= rl["reward_last"] <= 1 and rl["rollout_tok_per_sec"] > 0
    # held-out reward before (the SFT model) and after, on the same problems: the paired mean is the difference
    assert (rl["heldout_problems"], rl["heldout_samples"]) == (2, 2), rl
    assert rl["heldout_gain"] == pytest.approx(rl["heldout_reward"] - rl["heldout_reward_before"]), rl
    log = [json.loads(line) for line in (base_dir / "chatrl_checkpoints" / "d1" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("kind") == "train"] == [0, 1]
    assert any("pass@1" in r for r in log if r.get("kind") != "train")

    res = chat_eval.main(["-i", "rl", "-a", "Arithmetic", "-x", "4", "-m", "16"])
    arith = res["tasks"]["Arithmetic"]
    assert arith["total"] == 4 and 0 <= arith["accuracy"] <= 1, arith


def test_base_train_core_metric(tmp_path, monkeypatch):
    """CORE during base training: every --core_metric_every steps and at the last step, on the data that
    [eval] core_bundle names (here "download", the GPU presets' setting, from a loopback server), logged as
    core_metric eval records and in the summary; val bpb keeps its own --eval_every schedule."""
    from helpers import core_bundle_base
    from scripts import base_train

    with core_bundle_base(tmp_path, monkeypatch):
        base = base_train.main([*MODEL, "--num_iterations=5", "--device_batch_size=1", "--eval_every=4",
                                "--eval_tokens=512", "--sample_every=-1", "--save_every=-1", "--core_metric_every=2",
                                "--core_max_per_task=2", "--core_bundle=download"])
    log = [json.loads(line) for line in (tmp_path / "base_checkpoints" / "d1" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("kind") == "eval"]
    assert [r["step"] for r in evals if "core_metric" in r] == [2, 4, 5]
    assert [r["step"] for r in evals if "val_bpb" in r] == [4, 5]
    assert all(_finite(r["core_metric"]) and r["core_tasks_run"] == 2 for r in evals if "core_metric" in r)
    assert base["core_metric"] == evals[-1]["core_metric"] and base["core_tasks_run"] == 2
    assert (tmp_path / "eval_bundle" / "core.yaml").is_file()


PIPELINE = ["tok_train", "tok_eval", "base_train", "base_loss", "base_eval", "mid_train", "chat_eval_mid", "chat_sft",
            "chat_eval_sft", "chat_rl", "chat_eval_rl", "report"]


@pytest.mark.parametrize("preset,left_out", [("tiny", ()),
                                             ("master", ("mid_train", "chat_eval_mid", "chat_rl", "chat_eval_rl"))])
def test_pipeline_stage_list(tmp_path, preset, left_out):
    """The stages `run_all.sh --dry-run` lists: every one for the tiny preset; no midtraining for master's recipe,
    whose SFT starts from the base model ([sft] source = "base")."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(["bash", "scripts/pipeline.sh", f"--preset={preset}", "--dry-run"], cwd=root, text=True,
                       capture_output=True, env={**os.environ, "JAXCHAT_BASE_DIR": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]
    assert listed == [s for s in PIPELINE if s not in left_out], r.stdout
