"""The run's markdown report: environment, one section per stage, the summary table and plots.

    python -m jaxchat.report reset [--preset=P] [--keep-sections] [--no-devices]   # a run starts: header.json
    python -m jaxchat.report generate       # the stages' sections (jaxchat.stage.SECTIONS) + logs -> report.md"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import psutil

from jaxchat.checkpoint import STAGE_DIRS
from jaxchat.common import base_dir, report_dir
from jaxchat.evaluate import paired_gain
from jaxchat.stage import SECTIONS
from jaxchat.tasks import CHAT_EVALS

REPO_ROOT = Path(__file__).resolve().parents[1]
DASH = "–"
COLUMNS = ("BASE", "MID", "SFT", "RL")
ROWS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE")
OPTIONAL_ROWS = ("SpellingBee", "Arithmetic")  # shown when some stage measured them
TRAINING = {"base": "base-model-training", "mid": "midtraining", "sft": "chat-sft", "rl": "chat-rl"}
SPLITS = (  # which split each summary number comes from; the chat tasks' from jaxchat.tasks.CHAT_EVALS
    ("CORE", "each CORE task's evaluation split (per task: Base model evaluation); mean centered accuracy"),
    *((name, e.split) for name, e in CHAT_EVALS.items()),
    ("ChatCORE", "mean centered accuracy over the chat tasks above that ran (baseline 0.25 ARC/MMLU, 0 others)"),
    ("bits per byte", "held-out validation documents of the pretraining corpus (train bpb: training documents)"),
    ("xz -9", "the same validation text, compressed with xz preset 9 (at most the first few MB)"),
    ("RL reward", "rollouts on the RL task's train split; pass@k on its held-out test split"))


def _num(v) -> float | None:
    """A finite number, else None (NaN: not measured)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def load_sections() -> dict:
    """{section: its JSON} for every section of jaxchat.stage.SECTIONS that a stage wrote, in pipeline order."""
    return {s: json.loads(p.read_text()) for s in SECTIONS if (p := report_dir() / f"{s}.json").is_file()}


def read_log(path: Path) -> dict:
    """{kind: records by step}, the last per (kind, step) (resumed runs re-log); torn lines (killed writer) skipped."""
    by_key = {}
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            r = json.loads(line)
            by_key[(r.get("kind", "train"), r["step"])] = r
    ordered = sorted(by_key.items(), key=lambda kv: kv[0][1])
    return {kind: [r for (k, _), r in ordered if k == kind] for kind in {k for k, _ in by_key}}


def load_logs(sections: dict) -> dict:
    """{stage: its training log}: `<base>/<stage dir>/d<depth>/log.jsonl`, else the stage's newest log."""
    out = {}
    for stage, slug in TRAINING.items():
        root = base_dir() / STAGE_DIRS[stage]
        want = root / f"d{sections[slug]['depth']}" / "log.jsonl" if slug in sections else None
        logs = sorted(root.glob("*/log.jsonl"), key=lambda p: p.stat().st_mtime)
        if logs:
            out[stage] = read_log(want if want in logs else logs[-1])
    return out


def summary_table(sections: dict) -> dict:
    """{row: {column: value or None}}: CORE from the CORE evaluations, the other rows from the chat evaluations."""
    def value(row, col):
        if row == "CORE":
            return sections.get("base-model-evaluation" if col == "BASE" else f"core-evaluation-{col.lower()}",
                                {}).get("core")
        chat = sections.get(f"chat-evaluation-{col.lower()}", {})
        return chat.get("chatcore") if row == "ChatCORE" else chat.get("tasks", {}).get(row, {}).get("accuracy")

    table = {row: {col: _num(value(row, col)) for col in COLUMNS} for row in ROWS + OPTIONAL_ROWS}
    return {r: v for r, v in table.items() if r in ROWS or any(x is not None for x in v.values())}


def _git(*args) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # no git binary, or it hung: None
        r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None


def device_info(timeout: float = 180.0) -> dict:
    """The JAX backend and its devices, probed in a subprocess (a JAX that hangs or fails is reported)."""
    probe = ("import collections, json, jax; d = jax.devices(); print('JAXCHAT_DEVICES', json.dumps({'backend': "
             "jax.default_backend(), 'device_count': len(d), 'process_count': jax.process_count(), 'device_kinds': "
             "collections.Counter(x.device_kind for x in d)}))")
    try:
        r = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        return {"error": f"JAX did not start within {timeout:.0f}s"}
    if line := next((ln for ln in r.stdout.splitlines() if ln.startswith("JAXCHAT_DEVICES ")), None):
        return json.loads(line.split(" ", 1)[1])
    tail = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return {"error": "JAX could not start: " + (tail[-1][:300] if tail else f"exit status {r.returncode}")}


def header_info(preset: str | None, query_devices: bool = True) -> dict:
    cpu = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
           if ln.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    commit = _git("rev-parse", "HEAD")
    sources = [p.read_text() for folder in ("jaxchat", "scripts", "tests") for p in (REPO_ROOT / folder).rglob("*.py")]
    return {"time": time.time(), "started": dt.datetime.now().isoformat(timespec="seconds"), "preset": preset,
            "git": commit and {"branch": _git("rev-parse", "--abbrev-ref", "HEAD"), "commit": commit[:12],
                               "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                               "message": (_git("log", "-1", "--pretty=%s") or "")[:200]},
            "machine": {"cpu": (cpu or [platform.machine()])[0], "cores": os.cpu_count(),
                        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "os": platform.platform()},
            "devices": device_info() if query_devices else {"error": "not queried"},
            "versions": {"python": platform.python_version(), **{p: metadata.version(p) for p in (
                "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "sentencepiece")}},
            "bloat": {"files": len(sources), "lines": sum(len(s.splitlines()) for s in sources),
                      "characters": sum(map(len, sources))}}


def reset(preset: str | None = None, keep_sections: bool = False, query_devices: bool = True) -> Path:
    """Remove report.md, plots/ and the old sections (`keep_sections`, a resumed run: they and the start time stay)."""
    d = report_dir()
    path = d / "header.json"
    old = json.loads(path.read_text()) if keep_sections and path.is_file() else {}
    for p in d.glob("header.json" if keep_sections else "*.json"):
        p.unlink()
    (d / "report.md").unlink(missing_ok=True)
    shutil.rmtree(d / "plots", ignore_errors=True)
    info = header_info(preset, query_devices)
    if old:
        info.update(time=old["time"], started=old["started"], resumed=old.get("resumed", []) + [info["started"]])
    path.write_text(json.dumps(info, indent=2))
    return path


def fmt_seconds(s) -> str:
    if _num(s) is None:
        return DASH
    if abs(s) < 60:
        return f"{s:.1f}s"
    sign, s = "-" * (s < 0), int(round(abs(s)))
    return f"{sign}{s // 60}m{s % 60:02d}s" if s < 3600 else f"{sign}{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def fmt_value(v, key: str = "") -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(map(fmt_value, v))
    if v is None or isinstance(v, bool):
        return {None: DASH, True: "yes", False: "no"}[v]
    if isinstance(v, int):
        return f"{v:,}"
    if not isinstance(v, float) or not math.isfinite(v):
        return str(v)
    a = abs(v)
    out = (f"{v:,.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 10 else "0" if a == 0
           else f"{v:.4f}" if a >= 1e-3 else f"{v:.3e}")
    return out + (f" ({fmt_seconds(v)})" if key.endswith("_s") and a >= 60 else "")


def fmt(v, spec: str = ".4f") -> str:
    return DASH if _num(v) is None else format(v, spec)


def _when(t) -> str:
    return DASH if t is None else dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def md_table(columns, rows) -> list[str]:
    def cell(x) -> str:
        s = str(x) if len(str(x)) <= 320 else str(x)[:319] + "…"
        return s.replace("\r", "").replace("\n", " ↵ ").replace("|", "\\|")

    return (["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(map(cell, r)) + " |" for r in rows] + [""])


def render_section(slug: str, data: dict, start: float | None) -> list[str]:
    """Its figures; per-task (or per-kind) records as a table of their own; samples and completions as texts."""
    meta = f"finished {_when(data['time'])}" + (f" ({fmt_seconds(data['time'] - start)} after the start)" if start
                                                 else "")
    if (report_dir() / "logs" / f"{slug}.log").exists():  # scripts/pipeline.sh's console log of the stage
        meta += f"; console log: [logs/{slug}.log](logs/{slug}.log)"
    figures, tables, texts = [], [], []
    for k, v in data.items():
        if k == "samples":
            texts += [(f"samples: {p}", s) for p, s in v.items()]
        elif k in ("tasks", "rows") and v:  # {task: record} (CORE, chat evaluations), [record] (tok_eval)
            tables.append((k, list(v.items()) if isinstance(v, dict) else [(None, x) for x in v]))
        elif k == "core_history" and v:  # base_train's [[step, training seconds, CORE]]
            tables.append((k, [(None, {"step": s, "train_time_s": t, "core": c}) for s, t, c in v]))
        elif k not in ("section", "time"):
            figures += [(f"{k}.{kk}", fmt_value(x, kk)) for kk, x in v.items()] if isinstance(v, dict) else [
                (k, fmt_value(v, k))]
    lines = [f"### {SECTIONS[slug][0]}", "", f"_{meta}_", ""] + _time_to_gpt2(data)
    lines += md_table(["figure", "value"], figures)
    for name, items in tables:
        body, cols = [], [c for c in dict.fromkeys(c for _, rec in items for c in rec)
                          if any(rec.get(c) != label for label, rec in items)]  # not a copy of the row's name
        for label, rec in items:  # a chat task's sample completions (a CORE task's "examples" is a count)
            if isinstance(completions := rec.get("examples"), list):
                texts += [(f"{name}.{label}.examples[{i}] (index={x['index']}, correct={fmt_value(x['correct'])})",
                           x["completion"]) for i, x in enumerate(completions[:3])]
                rec = {**rec, "examples": f"{len(completions)} (texts below)"}
            body.append(([] if label is None else [label]) + [fmt_value(rec.get(c), c) for c in cols])
        lines += [f"**{name}**", ""] + md_table(([""] if items[0][0] is not None else []) + cols, body)
    if texts:
        more = f" (first 16 of {len(texts)})" if len(texts) > 16 else ""
        lines += [f"**texts**{more}", ""] + md_table(["where", "text"], [(w, t[:300]) for w, t in texts[:16]])
    return lines


def _time_to_gpt2(data: dict) -> list[str]:
    """Base training with CORE evaluations: the final CORE against GPT-2's, when CORE first reached it, the time."""
    if (bar := data.get("gpt2_core")) is None:
        return []
    step = next((s for s, _, c in data.get("core_history", []) if c >= bar), None)
    when = "not reached" if step is None else (
        f"reached after **{fmt_seconds(data['time_to_gpt2_s'])}** of training (step {step:,})")
    return [f"**Time to GPT-2**: final CORE {fmt(data.get('core_metric'))} against GPT-2 (1.6B)'s {bar:g}: {when}; "
            f"training time {fmt_seconds(data.get('train_time_s'))} (steps only: evaluations excluded).", ""]


def _line(log: dict, kind: str, key: str, **kw) -> tuple[list, list, dict]:
    pts = [(r["step"], r[key]) for r in log.get(kind, []) if _num(r.get(key)) is not None]
    return [x for x, _ in pts], [y for _, y in pts], {"label": key.replace("_", " "), **kw}


def _figure(path: Path, panels: list, width: float = 3.4, bars: dict | None = None) -> Path | None:
    """Subplots of (title, [(xs, ys, plot kwargs)]) panels, or bars of {label: {column: value}}; None if empty."""
    from matplotlib.figure import Figure  # on use: the report's other parts do not need it (no pyplot: no display)

    panels = [(title, [ln for ln in lines if ln[0]]) for title, lines in panels if any(ln[0] for ln in lines)]
    if not panels and not bars:
        return None
    fig = Figure(figsize=(width * max(1, len(panels)), 2.8))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for xs, ys, kw in lines:
            ax.plot(xs, ys, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    if bars:
        ax, cols = axes[0][0], [c for c in COLUMNS if any(v[c] is not None for v in bars.values())]
        for j, c in enumerate(cols):
            pts = [(i + (j - (len(cols) - 1) / 2) * 0.8 / len(cols), v[c]) for i, v in enumerate(bars.values())
                   if v[c] is not None]
            ax.bar(*zip(*pts), width=0.8 / len(cols), label=c,
                   color={"BASE": "tab:gray", "MID": "tab:blue", "SFT": "tab:green", "RL": "tab:purple"}[c])
        ax.set_xticks(range(len(bars)), list(bars), fontsize=7, rotation=20)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title("evaluations by stage", fontsize=9)
    for ax in axes[0]:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def make_plots(table: dict, logs: dict, directory: Path) -> list[str]:
    """Markdown links to the PNGs that have data, written to `directory`."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    train = [(f"{s}: training loss", [_line(log, "train", "loss", lw=0.8, alpha=0.3),
                                      _line(log, "train", "ema_loss", lw=1.4)]) for s, log in logs.items()]
    val = [(f"{s}: validation", [_line(log, "eval", "val_bpb", marker="o", ms=3),
                                 _line(log, "eval", "val_loss", marker="s", ms=3, ls="--")]) for s, log in logs.items()]
    rl = logs.get("rl", {})
    ks = sorted({k for r in rl.get("eval", []) for k in r if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    rl_panels = [("RL: mean reward per step", [_line(rl, "train", "reward", label="mean reward")]),
                 ("RL: pass@k on held-out problems", [_line(rl, "eval", k, marker="o", ms=3) for k in ks])]
    shown = {r: v for r, v in table.items() if any(x is not None for x in v.values())}
    plots = [("Training loss (EMA) per stage", _figure(directory / "train_loss.png", train)),
             ("Validation bits per byte / loss per stage", _figure(directory / "validation.png", val)),
             ("RL mean reward per step and pass@k", _figure(directory / "rl_reward.png", rl_panels, 3.8)),
             ("Evaluations by stage (the summary table)",
              _figure(directory / "evals.png", [], max(4.0, len(shown) + 1.5), bars=shown))]
    return [s for caption, p in plots if p is not None for s in (f"![{caption}](plots/{p.name})", "")]


def _header_lines(h: dict) -> list[str]:
    g, m, d, b = h["git"], h["machine"], h["devices"], h["bloat"]
    rows = [("Run started", h["started"] or DASH), ("Preset", h["preset"] or DASH)]
    rows += [("Resumed", ", ".join(h["resumed"]))] if h.get("resumed") else []
    rows += [("Git", f"branch `{g['branch']}`, commit `{g['commit']}` "
                     f"({'uncommitted changes' if g['dirty'] else 'clean'}): {g['message']}" if g else "not available"),
             ("CPU", f"{m['cpu']}, {m['cores']} cores"), ("Memory", f"{m['ram_gib']} GiB"), ("OS", m["os"]),
             ("Devices", d.get("error") or f"JAX backend {d['backend']}: {d['device_count']} devices ("
              + ", ".join(f"{n} × {k}" for k, n in d["device_kinds"].items()) + f"); {d['process_count']} process(es)"),
             ("Software", ", ".join(f"{k} {x}" for k, x in h["versions"].items())),
             ("Source (jaxchat/, scripts/, tests/)", f"{b['lines']:,} lines, {b['characters']:,} characters, "
                                                     f"{b['files']} files")]
    return md_table(["", ""], rows)


def _summary_lines(sections: dict, logs: dict, start: float | None) -> list[str]:
    table = summary_table(sections)
    out = ["## Summary", ""] + md_table(["Metric", *COLUMNS], [(r, *map(fmt, v.values())) for r, v in table.items()])
    counts = {c: n for c in COLUMNS if (n := sections.get(f"chat-evaluation-{c.lower()}", {}).get("chatcore_tasks"))}
    out += ["ChatCORE averages over " + ", ".join(f"{n} task{'s' * (n != 1)} ({c})" for c, n in counts.items())
            + ".", ""] if counts else []

    out += ["### CORE coverage", ""]
    if (core := sections.get("base-model-evaluation")) is None:
        out += ["CORE was not measured (no base-model-evaluation section).", ""]
    else:
        not_run = "; ".join(f"{', '.join(task for task, _ in tasks)} — {why}" for why, tasks in itertools.groupby(
            core["not_run"].items(), key=lambda kv: kv[1])) or "none"
        out += [f"CORE averages the centered accuracy of **{core['core_tasks_run']} of {core['core_tasks_total']} "
                f"tasks** (data: {core['data']}).", "", f"CORE tasks not run ({len(core['not_run'])}): {not_run}.", ""]

    out += ["### Bits per byte vs xz -9", ""]
    out += [f"{DASH} (no base-model-loss section)", ""] if (loss := sections.get("base-model-loss")) is None else (
        md_table(["", "bits per byte"], [
            ("base model, validation text", fmt(loss["val_bpb"])), ("xz -9, the same text", fmt(loss["xz_bpb"])),
            ("model relative to xz (negative: the model compresses better)", fmt(loss["vs_xz"], "+.1%")),
            ("base model, training text", fmt(loss["train_bpb"])), ("bytes compared", f"{loss['xz_bytes']:,}")]))

    if rl := sections.get("chat-rl"):
        w, ended = rl["reward_window"], [r["ended"] for r in logs.get("rl", {}).get("train", []) if "ended" in r]
        rows = [(f"mean reward, first {w} steps", fmt(rl["reward_first"])),
                (f"mean reward, last {w} steps", fmt(rl["reward_last"])),
                ("change", f"{rl['reward_last'] - rl['reward_first']:+.4f}")]
        if ended:
            k = min(10, max(1, len(ended) // 2))
            rows.append(("rollouts ending with <|assistant_end|>, first → last steps (training log)",
                         f"{fmt(sum(ended[:k]) / k, '.1%')} → {fmt(sum(ended[-k:]) / k, '.1%')}"))
        if "heldout_gain" in rl:
            rows += [(f"held-out reward ({rl['heldout_problems']} problems × {rl['heldout_samples']} samples), "
                      "before → after", f"{fmt(rl['heldout_reward_before'])} → {fmt(rl['heldout_reward'])}"),
                     ("held-out gain per problem (paired; ± standard error)",
                      f"{rl['heldout_gain']:+.4f} ± {rl['heldout_gain_se']:.4f}")]
        rows += [(f"pass@{k} (held-out, end of training)", fmt(rl[f"pass@{k}"])) for k in range(1, 9)
                 if f"pass@{k}" in rl] + [("rollout tokens/s", fmt_value(rl["rollout_tok_per_sec"]))]
        evals = [sections.get(f"chat-evaluation-{c}", {}).get("tasks", {}) for c in ("sft", "rl")]
        for name in (n for n in evals[0] if "scores" in evals[0][n] and "scores" in evals[1].get(n, {})):
            with contextlib.suppress(ValueError):  # evaluated on different problems: no paired figure
                gain, se = paired_gain(evals[0][name], evals[1][name])
                rows.append((f"{name}, SFT → RL per problem (paired; ± standard error)", f"{gain:+.4f} ± {se:.4f}"))
        out += ["### RL reward", ""] + md_table(["", "value"], rows)

    out += ["### Which split each number comes from", ""] + md_table(["number", "data"], SPLITS)
    return out + _wall_clock(sections, start)


def _wall_clock(sections: dict, start: float | None) -> list[str]:
    rows, prev = [], start
    for slug, sec in sorted(sections.items(), key=lambda kv: kv[1]["time"]):
        timer = fmt_seconds(next((sec[k] for k in ("wall_time_s", "time_s", "train_time_s") if k in sec), None))
        rows.append((SECTIONS[slug][0], _when(sec["time"]), fmt_seconds(prev and sec["time"] - prev), timer))
        prev = sec["time"]
    why = "no stage has finished" if start else "no header: run `python -m jaxchat.report reset` first"
    total = (f"**{fmt_seconds(prev - start)}** (from the run's start, {_when(start)}, to the last stage section, "
             f"{_when(prev)})" if rows and start is not None else f"{DASH} ({why})")
    return ["### Wall clock", "", f"Total wall clock time: {total}.", ""] + (md_table(
        ["stage", "finished", "since the previous section", "stage's own timer"], rows) if rows else [])


def generate() -> Path:
    """Write `<report_dir>/report.md` (and plots/) from the sections and training logs; returns its path."""
    d, sections = report_dir(), load_sections()
    header = json.loads((d / "header.json").read_text()) if (d / "header.json").is_file() else None
    start = header["time"] if header else None
    lines = ["# jaxchat report", "", f"Generated {dt.datetime.now():%Y-%m-%d %H:%M:%S} from {d}.", ""]
    lines += ["## Environment", ""] + _header_lines(header) if header else [
        "_No header.json: the run did not start with `python -m jaxchat.report reset`._", ""]
    lines += ["## Stages", ""] + ([] if sections else [f"{DASH} (no stage has written its section yet)", ""])
    for slug, data in sections.items():
        lines += render_section(slug, data, start)
    logs = load_logs(sections)
    plots = make_plots(summary_table(sections), logs, d / "plots")
    lines += _summary_lines(sections, logs, start)
    lines += ["## Plots", ""] + plots if plots else []
    path = d / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jaxchat.report", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reset", help="start a run: clear old sections, write the header")
    r.add_argument("--keep-sections", "--keep_sections", action="store_true",
                   help="keep finished stages' sections and the start time (a resumed run)")
    r.add_argument("--no-devices", "--no_devices", action="store_true", help="do not start JAX to list devices")
    r.add_argument("--preset", default=None)
    sub.add_parser("generate", help="write report.md and plots from the sections")
    args = ap.parse_args(argv)
    if args.command == "reset":
        print(f"[report] reset: {reset(args.preset, args.keep_sections, not args.no_devices)}")
    else:
        print(f"[report] wrote {generate()}")


if __name__ == "__main__":
    main()
