"""Checkpoints with orbax under `<base_dir>/<stage>_checkpoints/<model_tag>/<step>/`: params, optimizer state,
the data iterator's state (grain, one file per process) and a JSON meta. Saves are asynchronous and keep the last
N steps; orbax renames a step into place only when it is complete, and a step damaged anyway is named and skipped.
Restores target the *current* mesh, so a run saved on 8 devices restores on 1 and back. A checkpoint of another
model shape is refused with both shapes named."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from jaxchat import config as C
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.common import base_dir, print0

STAGE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
              "rl": "chatrl_checkpoints"}


class CheckpointError(RuntimeError):
    pass


logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO


def stage_dir(stage: str, model_tag: str) -> Path:
    if stage not in STAGE_DIRS:
        raise CheckpointError(f"unknown stage {stage!r}; one of {list(STAGE_DIRS)}")
    return base_dir() / STAGE_DIRS[stage] / model_tag


def abstract_like(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpoints:
    """A directory of steps. `save(step, params=..., opt_state=..., data=..., meta=...)`."""

    def __init__(self, directory: str | Path, *, keep: int = 2, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep if keep > 0 else None, create=True,
                                            enable_async_checkpointing=async_save)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.manager = ocp.CheckpointManager(self.directory, options=opts)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        s = self.steps()
        return s[-1] if s else None

    def save(self, step: int, *, params, opt_state=None, data=None, meta: dict | None = None) -> None:
        items = {"params": ocp.args.StandardSave(params),
                 "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data)
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        path = self.directory / str(step) / "meta" / "metadata"
        if not path.exists():
            raise CheckpointError(f"checkpoint {self.directory / str(step)} has no meta (damaged or not a jaxchat "
                                  f"checkpoint)")
        return json.loads(path.read_text())

    def restore(self, step: int | None = None, *, abstract_params, abstract_opt_state=None, data=None,
                expect_model: dict | None = None) -> tuple[dict, dict]:
        """Restore (items, meta). With step=None, the newest step that restores cleanly; damaged steps are
        reported by path and skipped."""
        steps = [step] if step is not None else list(reversed(self.steps()))
        if not steps:
            raise CheckpointError(f"no checkpoints in {self.directory}")
        errors = []
        for s in steps:
            try:
                meta = self.read_meta(s)
                if expect_model is not None:
                    check_model_compatible(meta.get("model", {}), expect_model, self.directory / str(s))
                return self._restore(s, abstract_params, abstract_opt_state, data), meta
            except CheckpointError as e:
                if "incompatible" in str(e):
                    raise
                errors.append(str(e))
            except Exception as e:  # orbax/tensorstore errors for truncated or missing files
                msg = f"checkpoint {self.directory / str(s)} is damaged and was skipped: {type(e).__name__}: " \
                      f"{str(e).splitlines()[0][:300]}"
                print0(msg)
                errors.append(msg)
        raise CheckpointError("no usable checkpoint:\n  " + "\n  ".join(errors))

    def _restore(self, step, abstract_params, abstract_opt_state, data):
        items = {"params": ocp.args.StandardRestore(abstract_params)}
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {k: out[k] for k in items}

    def delete_after(self, step: int) -> None:
        """Drop steps newer than `step` (a resumed run overwrites its own future)."""
        for s in self.steps():
            if s > step:
                self.manager.delete(s)


def check_model_compatible(saved: dict, wanted: dict, where) -> None:
    keys = ("depth", "vocab_size", "aspect_ratio", "head_dim_target", "n_kv_head")
    diff = {k: (saved.get(k), wanted.get(k)) for k in keys if k in saved and saved.get(k) != wanted.get(k)}
    if diff:
        pretty = ", ".join(f"{k}: checkpoint={a} requested={b}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {where} is incompatible with the requested model ({pretty}); pass the "
                              f"matching --depth/--vocab_size or use another --model_tag")


def find_model_dir(stage: str, model_tag: str | None = None) -> Path:
    """The checkpoint folder of a stage: the given tag, or the largest model there (nanochat's rule)."""
    root = base_dir() / STAGE_DIRS[stage]
    if model_tag:
        d = root / model_tag
        if not d.exists():
            raise CheckpointError(f"no {stage} checkpoint {d}; train it first (see README) or pass --model_tag")
        return d
    tags = [p for p in root.glob("*") if p.is_dir()] if root.exists() else []
    if not tags:
        hint = {"base": "scripts.base_train", "mid": "scripts.mid_train", "sft": "scripts.chat_sft",
                "rl": "scripts.chat_rl"}[stage]
        raise CheckpointError(f"no {stage} checkpoints under {root}; run `python -m {hint}` first")

    def depth(p):
        try:
            return int(p.name.lstrip("d"))
        except ValueError:
            return -1

    return max(tags, key=lambda p: (depth(p), p.stat().st_mtime))


def load_model(stage: str, model_tag: str | None = None, step: int | None = None, mesh=None):
    """Load a stage's params (sharded on `mesh`) plus its model config and meta: (params, model_cfg, meta)."""
    d = find_model_dir(stage, model_tag)
    ck = Checkpoints(d, async_save=False)
    step = step if step is not None else ck.latest_step()
    if step is None:
        raise CheckpointError(f"no finished checkpoint in {d}")
    meta = ck.read_meta(step)
    model_cfg = C.build(C.ModelConfig, meta["model"])
    mesh = mesh or shd.make_mesh()
    shardings = gpt.param_shardings(model_cfg, mesh)
    abstract = abstract_like(gpt.param_shapes(model_cfg), shardings)
    items, meta = ck.restore(step, abstract_params=abstract)
    return items["params"], model_cfg, meta
