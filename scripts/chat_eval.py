"""Chat evaluation of a checkpoint (nanochat's chat_eval.py) and ChatCORE.

    python -m scripts.chat_eval -i sft                        # every task of jaxchat.tasks.CHAT_EVALS, all problems
    python -m scripts.chat_eval -i mid -a "ARC-Easy|MMLU" -x 500
    python -m scripts.chat_eval -i rl -a Arithmetic           # the offline RL task: accuracy + ended rate
    python -m scripts.chat_eval -i sft -a HumanEval -n 8 -t 0.8   # pass@1 and pass@8

Flags: -i source (base|mid|sft|rl), -a tasks ('|' or ',' separated), -x max_problems, -n num_samples, -t temperature,
-k top_k, -m max_new_tokens, -b batch_size, -g model_tag, -s step; --workers, --timeout (HumanEval's sandbox), --seed,
--output. Categorical tasks (ARC, MMLU) read the choice letters' logits after the prompt; generative ones sample
with the engine (calculator on). ChatCORE = mean centered accuracy over the ChatCORE tasks run. Writes
$JAXCHAT_BASE_DIR/chat_eval/<source>_<tag>_step<step>.json and the report section "chat-evaluation-<source>".
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from jaxchat import config as C
from jaxchat import evaluate, stage
from jaxchat.common import base_dir, cli, print0, process_index
from jaxchat.engine import Engine
from jaxchat.tasks import CHAT_EVALS, CHATCORE_BASELINES, chat_eval_name
from jaxchat.tokenizer import Tokenizer

SHORT = {"-i": "--source", "-a": "--tasks", "-x": "--max_problems", "-n": "--num_samples", "-t": "--temperature",
         "-k": "--top_k", "-m": "--max_new_tokens", "-b": "--batch_size", "-g": "--model_tag", "-s": "--step"}


def main(argv=None):
    argv = [SHORT.get(a, a) for a in (sys.argv[1:] if argv is None else argv)]
    cfg = C.load(["mesh", "eval"], argv, extra=dict(source="sft", model_tag="", step=-1, tasks="", workers=2,
                                                    timeout=5.0, seed=42, output=""))
    x, ec, t0 = cfg.extra, cfg.eval, time.time()
    x_given = "max_problems" in C.parse_overrides(argv)[1]
    names = [chat_eval_name(t.strip()) for t in re.split(r"[|,]", x.tasks) if t.strip()] or list(CHAT_EVALS)
    ctx, tok = stage.init(cfg.mesh), Tokenizer.load()
    params, mc, meta = stage.load_source(x.source, x.model_tag, ctx, x.step)
    tag, step = meta.get("model_tag") or stage.model_tag(x.model_tag, mc), meta.get("step", x.step)
    stage.banner("chat_eval", source=x.source, model=f"{tag} step {step}", tasks="|".join(names),
                 max_problems=ec.max_problems, num_samples=ec.num_samples, temperature=ec.temperature)
    scorer = evaluate.Scorer.for_model(params, mc, ctx.mesh, batch_size=ec.batch_size)
    engine = Engine(params, mc, tok, mesh=ctx.mesh)
    results = {}
    for name in names:
        task = CHAT_EVALS[name].make()
        # A preset's per-kind budgets refine max_problems, but -x on the command line means every task.
        kind = ec.arithmetic_problems if name == "Arithmetic" else ec.max_problems_generative
        limit = kind if task.eval_type != "categorical" and kind >= 0 and not x_given else ec.max_problems
        n = len(task) if limit < 0 else min(limit, len(task))
        print0(f"[chat_eval] {name}: {n} problems ({CHAT_EVALS[name].split})")
        if task.eval_type == "categorical":
            r = evaluate.categorical_eval(task, tok, scorer, range(n))
        else:
            r = evaluate.generative_eval(task, tok, engine, range(n), num_samples=ec.num_samples, top_k=ec.top_k,
                                         max_new_tokens=ec.max_new_tokens, temperature=ec.temperature, seed=x.seed,
                                         batch_size=ec.batch_size, workers=x.workers, timeout=x.timeout, log=print0)
        results[name] = {**r, "split": CHAT_EVALS[name].split}
        extra = (f" | pass@1 {r['pass@1']:.4f} | ended {r['ended_rate']:.3f} | tool calls {r['tool_call_rate']:.3f}"
                 if r["type"] == "generative" else "")
        print0(f"[chat_eval] {name}: accuracy {r['accuracy']:.4f} ({r['correct']}/{r['total']}){extra} | "
               f"{r['time_s']:.1f}s ({r['problems_per_s']:.2f} problems/s)")
    value, count = evaluate.chatcore(results)
    if value is not None:
        print0(f"[chat_eval] ChatCORE {value:.4f} over {count} of {len(CHATCORE_BASELINES)} tasks")
    out = Path(x.output) if x.output else base_dir() / "chat_eval" / f"{x.source}_{tag}_step{step}.json"
    res = dict(source=x.source, model_tag=tag, step=step, chatcore=value, chatcore_tasks=count, tasks=results,
               max_problems=ec.max_problems, num_samples=ec.num_samples, temperature=ec.temperature,
               max_new_tokens=ec.max_new_tokens, time_s=time.time() - t0, json=str(out))
    if process_index() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=float))
    return stage.finish(f"chat-evaluation-{x.source}", res)


if __name__ == "__main__":
    cli(main)
