"""What every stage script does around the shared loop: distributed init, mesh, batch arithmetic, checkpoint folders,
logs, and `finish`: the summary, checked against SECTIONS, to `report/<section>.json` (report input, "done" marker)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax._src import distributed  # the coordination service's state (orbax reads it the same way)

from jaxchat import config as C
from jaxchat import optim
from jaxchat import sharding as shd
from jaxchat.checkpoint import STAGE_DIRS, Checkpoints, abstract_like, find_model_dir, load_model
from jaxchat.common import JsonlLog, base_dir, print0, report_dir
from jaxchat.engine import Engine
from jaxchat.tokenizer import Tokenizer

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is",
                  "If yesterday was Friday, then tomorrow will be", "The opposite of hot is",
                  "The planets of the solar system are:", "My favorite color is", "If 5*x + 3 = 13, then x is",
                  "def fibonacci(n):"]
GPU_MEM_FRACTION = "0.92"  # XLA's default is 0.75; scripts/memory_plan.py budgets the GPU presets for this


TRAIN = "steps train_time_s final_loss wall_time_s depth "  # train.run's + every training script's
EVAL = "source model_tag step time_s json tasks "  # every CORE and chat evaluation's
CORE = EVAL + "core core_tasks_run core_tasks_total not_run data max_per_task examples examples_per_s"
CHAT = EVAL + "chatcore chatcore_tasks max_problems num_samples temperature max_new_tokens"

# each stage's report section, in pipeline order: (title, the keys its summary holds); OPTIONAL: keys it may hold
SECTIONS = {
    "tokenizer-training": ("Tokenizer training", "vocab_size source max_chars doc_cap digit_group train_chars "
                           "train_documents train_time_s num_special_tokens special_ids token_bytes_min "
                           "token_bytes_max token_bytes_mean token_bytes_std model_path sha256"),
    "tokenizer-evaluation": ("Tokenizer evaluation", "vocab_size columns rows tiktoken_skipped time_s"),
    "base-model-training": ("Base model training", TRAIN + "val_bpb val_loss params tokens tokens_per_step "
                            "tok_per_sec flops_per_token preset source"),
    "base-model-loss": ("Base model loss", "train_bpb train_loss train_tokens val_bpb val_loss val_tokens xz_bpb "
                        "xz_bytes vs_xz samples time_s"),
    "base-model-evaluation": ("Base model evaluation (CORE)", CORE),
    "chat-evaluation-base": ("Chat evaluation: base", CHAT),
    "midtraining": ("Midtraining", TRAIN + "val_loss val_bpb tokens epochs conversations online tok_per_sec params"),
    "core-evaluation-mid": ("CORE evaluation: mid", CORE),
    "chat-evaluation-mid": ("Chat evaluation: mid", CHAT),
    "chat-sft": ("Chat SFT", TRAIN + "val_loss conversations epochs examples online"),
    "core-evaluation-sft": ("CORE evaluation: sft", CORE),
    "chat-evaluation-sft": ("Chat evaluation: sft", CHAT),
    "chat-rl": ("Chat RL", TRAIN + "pass@1 reward_first reward_last reward_window rollout_tok_per_sec task "
                "heldout_reward heldout_reward_before heldout_gain heldout_gain_se heldout_problems heldout_samples"),
    "core-evaluation-rl": ("CORE evaluation: rl", CORE),
    "chat-evaluation-rl": ("Chat evaluation: rl", CHAT),
}
OPTIONAL = {"base-model-training": "core_metric core_tasks_run core_history gpt2_core time_to_gpt2_s",
            "chat-sft": "mmlu_acc arc_easy_acc",
            "chat-rl": " ".join(f"pass@{k}" for k in range(2, 9))}


def finish(section: str, summary: dict, checkpoints=None) -> dict:
    """Close the checkpoints and W&B runs, check the summary against SECTIONS[section], write it (process 0,
    atomically)."""
    if checkpoints is not None:
        checkpoints.close()
    while _tracked:
        _tracked.pop().close(summary)
    keys, optional = SECTIONS[section][1].split(), OPTIONAL.get(section, "").split()
    missing, extra = [k for k in keys if k not in summary], [k for k in summary if k not in keys + optional]
    if missing or extra:
        raise ValueError(f"the {section!r} summary lacks keys {missing}, has undeclared keys {extra} (stage.SECTIONS)")
    if distributed.global_state.process_id == 0:  # not jax.process_index(): tok_train starts no backend
        tmp = report_dir() / f".{section}.json.tmp"
        tmp.write_text(json.dumps({"section": section, "time": time.time(), **summary}, indent=2, default=float))
        os.replace(tmp, report_dir() / f"{section}.json")
    return summary


@dataclass
class Context:
    mesh: object
    n_devices: int
    process_index: int
    process_count: int


def init(mesh_cfg, *, training: bool = False, dry_run: bool = False) -> Context:
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)
    shd.maybe_initialize_distributed()
    # a GPU preset on a CPU backend would start a weeks-long run on one CPU device: stop at once instead
    if training and mesh_cfg.accelerator and not (dry_run or mesh_cfg.allow_cpu) and jax.default_backend() == "cpu":
        raise SystemExit(
            f"this preset trains on GPUs (or TPUs), but JAX found only the 'cpu' backend ({len(jax.devices())} "
            "device(s)). Install CUDA JAX: `bash run_all.sh setup --preset <preset>` (or pip install -e '.[gpu,hub]' "
            "for CUDA 12, '.[gpu13,hub]' for CUDA 13, driver >= 580), then check with `python -m scripts.gpu_check`. "
            "To run it on the CPU anyway, pass --allow_cpu; --dry_run prints the plan without a GPU.")
    mesh = shd.make_mesh(mesh_cfg)
    return Context(mesh, mesh.size, jax.process_index(), jax.process_count())


def model_tag(tag: str, model_cfg) -> str:
    return tag or f"d{model_cfg.depth}"


def out_dir(stage: str, tag: str) -> Path:
    d = base_dir() / STAGE_DIRS[stage] / tag
    d.mkdir(parents=True, exist_ok=True)
    return d


_tracked: list[JsonlLog] = []  # logs mirrored to W&B: finish() ends their runs (scripts keep no handle to close)


def logger(stage: str, tag: str, tc: C.TrainConfig) -> JsonlLog:
    """The stage's JSONL log; with the stage config's `run` (--run=NAME) mirrored to a Weights & Biases run."""
    log = JsonlLog(out_dir(stage, tag) / "log.jsonl", tc.run, stage, dataclasses.asdict(tc))
    if log.wandb is not None:
        _tracked.append(log)
    return log


def rows_per_process(device_batch_size: int, ctx: Context) -> tuple[int, int]:
    """(global rows, this process's rows) for one micro-step."""
    rows = device_batch_size * ctx.n_devices
    if rows % ctx.process_count:
        raise ValueError(f"{rows} rows cannot be split over {ctx.process_count} processes")
    return rows, rows // ctx.process_count


def banner(name: str, **items) -> None:
    print0(f"[{name}] " + " | ".join(f"{k}: {v}" for k, v in items.items()))


def load_source(stage_name: str, model_tag: str, ctx: Context, step: int = -1):
    """Params, model config and meta of the previous stage's checkpoint (largest model if no tag), on this mesh."""
    return load_model(stage_name, model_tag or None, None if step < 0 else step, mesh=ctx.mesh)


def start_finetune(section: str, argv):
    """mid/SFT/RL's opening: config ([mesh] + `section`, --source_step), the mesh, the tokenizer, and the source
    stage's checkpoint (with `inherit`, its batch and LRs too: `inherit_settings`). Returns (cfg, ctx, section cfg,
    tokenizer, params, model cfg, source meta)."""
    cfg = C.load(["mesh", section], argv, extra={"source_step": -1})
    ctx = init(cfg.mesh, training=True)
    tc = getattr(cfg, section)
    params, mc, src_meta = load_source(tc.source, tc.model_tag, ctx, cfg.extra.source_step)
    if getattr(tc, "inherit", False):
        tc = inherit_settings(tc, src_meta, sys.argv[1:] if argv is None else argv)
        setattr(cfg, section, tc)
    return cfg, ctx, tc, Tokenizer.load(), params, mc, src_meta


def inherit_settings(tc, src_meta: dict, argv: list[str]):
    """nanochat master's SFT takes the pretraining run's batch as it ran (the depth dial's resolved total_batch_size)
    and its LRs as configured (before the dial's √(B/2^19): master reads them from the checkpoint's user_config),
    except those given on the command line."""
    given = {key.rpartition(".")[2] for key in C.parse_overrides(argv)[1]}
    ran, configured = src_meta.get("train", {}), src_meta.get("user_config", src_meta.get("train", {}))
    src = {**{k: ran[k] for k in ("device_batch_size", "total_batch_size") if k in ran},
           **{k: configured[k] for k in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr")
              if k in configured}}
    new = {k: v for k, v in src.items() if k not in given}
    print0(f"[inherit] from the {tc.source} run: " + ", ".join(f"{k}={v}" for k, v in new.items()))
    return dataclasses.replace(tc, **new)


def inherit_optimizer(setup, tc, src_meta: dict) -> None:
    """Replace setup's fresh optimizer state by the source checkpoint's (nanochat master's SFT): Muon's momentum
    and NorMuon buffers and Adam's moments go on; every schedule restarts at step 0 (master sets fresh LRs and Muon
    momentum each step); Adam's step count goes on (master's does: its bias correction stays ~1)."""
    d, step, src = find_model_dir(tc.source, tc.model_tag or None), int(src_meta["step"]), src_meta.get("train", {})
    if not (d / str(step) / "opt_state").exists():
        print0(f"WARNING: {d / str(step)} holds no optimizer state; starting with a fresh optimizer (as master)")
        return
    for key, same in (("optimizer", src.get("optimizer") == tc.optimizer),
                      ("grad_clip", (src.get("grad_clip", 0) > 0) == (tc.grad_clip > 0))):
        if not same:  # another state layout
            raise C.ConfigError(f"inherit = true continues the {tc.source} run's optimizer state, which has "
                                f"{key} = {src.get(key)!r}: set --{key}={src.get(key)} (or inherit = false)")
    sh = setup.state_shardings
    ck = Checkpoints(d, async_save=False)
    items, _ = ck.restore(step, abstract_params=abstract_like(setup.state["params"], sh["params"]),
                          abstract_opt_state=abstract_like(setup.state["opt_state"], sh["opt_state"]))
    ck.close()
    setup.state = {**setup.state, "params": items["params"], "opt_state": optim.restart_schedules(items["opt_state"])}
    print0(f"[inherit] the optimizer state of {d / str(step)} (momenta kept, schedules from step 0)")


def sample_completions(params, mc, tok, mesh) -> dict:
    prompts = [tok.encode(p, prepend=tok.bos_id) for p in SAMPLE_PROMPTS]
    seqs, _ = Engine(params, mc, tok, mesh=mesh).generate_batch(prompts, max_tokens=16, temperature=0.0,
                                                                use_tools=False)
    samples = {p: tok.decode(s) for p, s in zip(SAMPLE_PROMPTS, seqs)}
    print0("\n".join(f"    {p!r} -> {s!r}" for p, s in samples.items()))
    return samples


def estimate_tokens(task, tokenizer, max_tokens: int, sample: int = 2000, seed: int = 0) -> float:
    """Rendered tokens in a task: exact for small tasks, a seeded sample's mean × size for large ones."""
    n = len(task)
    idx = range(n) if n <= sample else np.random.default_rng(seed).choice(n, sample, replace=False)
    lengths = [len(tokenizer.render_conversation(task[int(i)], max_tokens=max_tokens)[0]) for i in idx]
    return float(np.sum(lengths)) if n <= sample else float(np.mean(lengths) * n)
