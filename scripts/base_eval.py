"""CORE evaluation of a checkpoint (nanochat's base_eval.py): the DCLM in-context suite, centered accuracy per
task, CORE = their mean over the tasks run. Offline: 17 of the 22 tasks (see jaxchat/core_tasks.py); with the
DCLM eval bundle unzipped under $JAXCHAT_BASE_DIR/eval_bundle (or --core_bundle=download, the GPU presets'
setting), all 22.

    python -m scripts.base_eval                                # base checkpoint, every example
    python -m scripts.base_eval --max_per_task=500             # nanochat's in-training setting
    python -m scripts.base_eval --source=sft --tasks="arc_easy|hellaswag" --step=200
    python -m scripts.base_eval --core_bundle=download         # fetch the eval bundle (online)

Writes $JAXCHAT_BASE_DIR/base_eval/<source>_<tag>_step<step>.json (or --output) and the report section
"base-model-evaluation" (source base) / "core-evaluation-<source>" (other sources). Bits per byte is
scripts/base_loss.py's job.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from jaxchat import config as C
from jaxchat import evaluate, stage
from jaxchat.common import base_dir, cli, print0, process_index
from jaxchat.tokenizer import Tokenizer


def main(argv=None):
    cfg = C.load(["mesh", "eval"], argv, extra=dict(source="base", model_tag="", step=-1, tasks="", output=""))
    x, ec = cfg.extra, cfg.eval
    ctx = stage.init(cfg.mesh)
    tok = Tokenizer.load()
    params, mc, meta = stage.load_source(x.source, x.model_tag, ctx, x.step)
    tag, step = meta.get("model_tag") or stage.model_tag(x.model_tag, mc), meta.get("step", x.step)
    stage.banner("base_eval", source=x.source, model=f"{tag} step {step}", devices=ctx.n_devices,
                 max_per_task=ec.max_per_task, batch_size=ec.batch_size, bundle=ec.core_bundle)
    scorer = evaluate.Scorer.for_model(params, mc, ctx.mesh, batch_size=ec.batch_size)
    res = evaluate.evaluate_core(scorer, tok, max_per_task=ec.max_per_task, bundle=ec.core_bundle,
                                 only=[t for t in re.split(r"[|,]", x.tasks) if t.strip()] or None, log=print0)
    print0(evaluate.format_core_table(res))
    print0(f"[base_eval] {res['examples']} examples in {res['time_s']:.1f}s ({res['examples_per_s']:.1f}/s)")
    out = Path(x.output) if x.output else base_dir() / "base_eval" / f"{x.source}_{tag}_step{step}.json"
    res.update(source=x.source, model_tag=tag, step=step, json=str(out))
    if process_index() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**res, "compiled_shapes": sorted(scorer.shapes)}, indent=2, default=float))
    return stage.finish("base-model-evaluation" if x.source == "base" else f"core-evaluation-{x.source}", res)


if __name__ == "__main__":
    cli(main)
