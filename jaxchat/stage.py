"""What every stage script does around the shared loop: distributed init, mesh, tokenizer, batch arithmetic,
checkpoint folders, logs, and the stage summary the report reads. Kept here so the scripts stay short."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import jax

from jaxchat import sharding as shd
from jaxchat.checkpoint import STAGE_DIRS
from jaxchat.common import JsonlLog, base_dir, print0

SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
    "def fibonacci(n):",
]


@dataclass
class Context:
    mesh: object
    n_devices: int
    process_index: int
    process_count: int


# XLA preallocates 75% of a GPU by default; the GPU presets' memory plans (scripts/memory_plan.py) budget this
# fraction instead. Set before the backend starts; a user's own setting wins.
GPU_MEM_FRACTION = "0.92"


def init(mesh_cfg, *, training: bool = False, dry_run: bool = False) -> Context:
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)
    shd.maybe_initialize_distributed()
    if training and mesh_cfg.accelerator and not (dry_run or mesh_cfg.allow_cpu):
        require_accelerator()
    mesh = shd.make_mesh(mesh_cfg)
    return Context(mesh, mesh.size, jax.process_index(), jax.process_count())


def require_accelerator() -> None:
    """A GPU preset on a CPU backend would start a weeks-long run on one CPU device: stop at once instead."""
    backend = jax.default_backend()
    if backend != "cpu":
        return
    raise SystemExit(
        f"this preset trains on GPUs (or TPUs), but JAX found only the {backend!r} backend "
        f"({len(jax.devices())} device(s)). Install CUDA JAX for your driver: `bash run_all.sh setup --preset "
        f"<preset>` (or pip install -e '.[gpu,hub]' for CUDA 12, '.[gpu13,hub]' for CUDA 13, driver >= 580), "
        f"then check with `python -m scripts.gpu_check`. To run it on the CPU anyway, pass --allow_cpu; "
        f"--dry_run prints the plan without a GPU.")


def model_tag(tag: str, model_cfg) -> str:
    return tag or f"d{model_cfg.depth}"


def out_dir(stage: str, tag: str) -> Path:
    d = base_dir() / STAGE_DIRS[stage] / tag
    d.mkdir(parents=True, exist_ok=True)
    return d


def logger(stage: str, tag: str) -> JsonlLog:
    """The stage's metrics log; train.run clears it when a run starts afresh (a resumed run appends)."""
    return JsonlLog(out_dir(stage, tag) / "log.jsonl")


def write_summary(stage: str, tag: str, summary: dict) -> Path:
    """`<stage dir>/summary.json`: the figures the report shows for this stage."""
    path = out_dir(stage, tag) / "summary.json"
    if jax.process_index() == 0:
        path.write_text(json.dumps({"stage": stage, "model_tag": tag, "finished": time.time(), **summary},
                                   indent=2, default=float))
    return path


def finish(section: str, summary: dict, *, checkpoints=None) -> dict:
    """What every stage does at the end: write its report section (the report's input and the pipeline's
    "done" marker) and close its checkpoints. (Interim form; the fixed schema comes next.)"""
    from jaxchat.common import log_section

    log_section(section, summary)
    if checkpoints is not None:
        checkpoints.close()
    return summary


def rows_per_process(device_batch_size: int, ctx: Context) -> tuple[int, int]:
    """(global rows, this process's rows) for one micro-step."""
    rows = device_batch_size * ctx.n_devices
    if rows % ctx.process_count:
        raise ValueError(f"{rows} rows cannot be split over {ctx.process_count} processes")
    return rows, rows // ctx.process_count


def banner(name: str, **items) -> None:
    print0(f"[{name}] " + " | ".join(f"{k}: {v}" for k, v in items.items()))


def load_source(stage_name: str, model_tag: str, ctx: Context, step: int = -1):
    """Params + model config of the previous stage's checkpoint (largest model if no tag), on this mesh."""
    from jaxchat.checkpoint import load_model

    params, mc, meta = load_model(stage_name, model_tag or None, None if step < 0 else step, mesh=ctx.mesh)
    return params, mc, meta


def estimate_tokens(task, tokenizer, max_tokens: int, sample: int = 2000, seed: int = 0) -> float:
    """Rendered tokens in a task: exact for small tasks, a seeded sample's mean × size for large ones."""
    import numpy as np

    n = len(task)
    idx = range(n) if n <= sample else np.random.default_rng(seed).choice(n, sample, replace=False)
    lengths = [len(tokenizer.render_conversation(task[int(i)], max_tokens=max_tokens)[0]) for i in idx]
    return float(np.sum(lengths)) if n <= sample else float(np.mean(lengths) * n)
