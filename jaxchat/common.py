"""Small shared helpers: the base directory layout, process-0 printing, JSONL metric logs."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from jaxchat.config import ConfigError


def base_dir() -> Path:
    """Where every artifact lives (nanochat's layout): `$JAXCHAT_BASE_DIR`, default `~/.cache/jaxchat`.

    tokenizer/            trained tokenizer (+ token byte lengths)
    base_data/            FineWeb-edu parquet shards (online presets)
    base_data_climbmix/   ClimbMix parquet shards (the speedrun presets)
    base_checkpoints/<tag>/ mid_checkpoints/<tag>/ chatsft_checkpoints/<tag>/ chatrl_checkpoints/<tag>/
    report/               per-stage report sections, plots, report.md
    """
    d = Path(os.environ.get("JAXCHAT_BASE_DIR", Path.home() / ".cache" / "jaxchat")).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def bucket(n: int, buckets) -> int:
    """The smallest of the ascending `buckets` that holds n; past the largest, a clear error."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


def process_index() -> int:
    """Process id, without importing JAX (that would initialise it before a script sets its XLA flags)."""
    jax = sys.modules.get("jax")
    try:
        return jax.process_index() if jax else int(os.environ.get("JAX_PROCESS_ID", "0"))
    except Exception:  # backend not initialisable (e.g. during interpreter shutdown)
        return 0


def print0(*args, **kwargs) -> None:
    """print() on process 0 only (multi-host runs would otherwise repeat every line)."""
    if process_index() == 0:
        print(*args, **kwargs, flush=True)


class JsonlLog:
    """Append-only JSONL metrics log (one dict per line, with a wall-clock timestamp). Process 0 writes. Given a run
    name other than "dummy" (nanochat's `--run`), it also mirrors each record's numbers to a Weights & Biases run
    (project "jaxchat", job type `stage`, step = the record's) until close(); the JSONL stays the report's source."""

    def __init__(self, path: str | os.PathLike | None, run: str = "dummy", stage: str = "", config: dict | None = None):
        self.path = Path(path) if path else None
        if self.path is not None and process_index() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = None
        if run and run != "dummy":
            try:
                import wandb  # here, not at the top: it takes ~1 s to import and only a tracked run needs it
            except ImportError:
                raise ConfigError(f"--run={run} logs to Weights & Biases, which is not installed: "
                                  "`.venv/bin/pip install -e '.[track]'` (or `JAXCHAT_EXTRAS=dev,track bash run_all.sh "
                                  "setup`), then `wandb login`; or leave --run at dummy (the JSONL log only)") from None
            if process_index() == 0:  # W&B's files go under the base dir, not the working directory
                self.wandb = wandb.init(project="jaxchat", name=run, job_type=stage or None, config=config,
                                        dir=os.environ.get("WANDB_DIR", str(base_dir())))

    def clear(self) -> None:
        if self.path is not None and process_index() == 0:
            self.path.unlink(missing_ok=True)

    def write(self, **record) -> None:
        if self.path is None or process_index() != 0:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
        if self.wandb is not None:  # under the record's kind (train/loss, eval/val_bpb); text (samples) stays here
            kind = f"{record['kind']}/" if "kind" in record else ""
            self.wandb.log({kind + k: v for k, v in _numbers(record).items() if k not in ("step", "time")},
                           step=record.get("step"))

    def close(self, summary: dict | None = None) -> None:
        """End the W&B run, if any, with the stage summary's numbers as its summary."""
        if self.wandb is not None:
            self.wandb.summary.update(_numbers(summary or {}))
            self.wandb.finish()
            self.wandb = None


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def _json_default(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)  # numpy / jax scalars and arrays


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def report_dir() -> Path:
    """Where stages leave their report sections (`<section>.json`, see jaxchat.stage), logs and report.md."""
    d = base_dir() / "report"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cli(main) -> None:
    """Run a script's main(): errors a user can fix (bad config, missing data/checkpoint/tokenizer) print one
    clear message and exit with status 2 instead of a traceback."""
    try:
        main()
    except Exception as e:
        # looked up only now, from modules already loaded: importing them up front would initialise JAX
        # before a script (memory_plan, bench_*) sets its XLA flags
        kinds = [FileNotFoundError] + [getattr(sys.modules[m], n) for m, n in (
            ("jaxchat.config", "ConfigError"), ("jaxchat.checkpoint", "CheckpointError"),
            ("jaxchat.corpus", "CorpusError")) if hasattr(sys.modules.get(m), n)]
        if not isinstance(e, tuple(kinds)):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
