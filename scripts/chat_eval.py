"""Chat evaluation of a checkpoint (nanochat's chat_eval.py) and ChatCORE.

    python -m scripts.chat_eval -i sft                        # ARC-E, ARC-C, MMLU, GSM8K, HumanEval, SpellingBee,
                                                              # Arithmetic (all problems)
    python -m scripts.chat_eval -i mid -a "ARC-Easy|MMLU" -x 500
    python -m scripts.chat_eval -i rl -a Arithmetic           # the offline RL task: accuracy + ended rate
    python -m scripts.chat_eval -i sft -a HumanEval -n 8 -t 0.8   # pass@1 and pass@8

Flags: -i source (base|mid|sft|rl), -a tasks ('|' or ',' separated), -x max_problems, -n num_samples,
-t temperature, -k top_k, -m max_new_tokens, -b batch_size, -g model_tag, -s step; also --workers and --timeout
for the HumanEval sandbox, --seed.

Categorical tasks (ARC, MMLU) read the logits at the last prompt position restricted to the choice letters;
generative tasks sample with the engine (calculator on), several prompts per batch. ChatCORE = mean centered
accuracy over the ChatCORE tasks run (Arithmetic is reported but not part of it). Writes
$JAXCHAT_BASE_DIR/chat_eval/<source>_<tag>_step<step>.json and the report section "chat-evaluation-<source>".
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from jaxchat import config as C
from jaxchat import evaluate, stage
from jaxchat.checkpoint import load_model
from jaxchat.common import base_dir, cli, log_section, print0, process_index
from jaxchat.engine import Engine
from jaxchat.tasks import CHAT_EVALS, CHATCORE_BASELINES
from jaxchat.tokenizer import Tokenizer

SHORT = {"-i": "--source", "-a": "--tasks", "-x": "--max_problems", "-n": "--num_samples", "-t": "--temperature",
         "-k": "--top_k", "-m": "--max_new_tokens", "-b": "--batch_size", "-g": "--model_tag", "-s": "--step"}
DEFAULT_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "Arithmetic")


def main(argv=None):
    argv = [SHORT.get(a, a) for a in (sys.argv[1:] if argv is None else argv)]
    cfg = C.load(["mesh", "eval"], argv, extra={"source": "sft", "model_tag": "", "step": -1, "tasks": "",
                                                "workers": 2, "timeout": 5.0, "seed": 42, "output": ""})
    x, ec = cfg.extra, cfg.eval
    x_given = "max_problems" in C.parse_overrides(argv)[1]
    names = [evaluate.canonical_chat_name(t.strip()) for t in re.split(r"[|,]", x.tasks) if t.strip()]
    names = names or list(DEFAULT_TASKS)
    ctx = stage.init(cfg.mesh)
    tok = Tokenizer.load()
    params, mc, meta = load_model(x.source, x.model_tag or None, None if x.step < 0 else x.step, mesh=ctx.mesh)
    tag = meta.get("model_tag") or stage.model_tag(x.model_tag, mc)
    step = meta.get("step", x.step)
    stage.banner("chat_eval", source=x.source, model=f"{tag} step {step}", tasks="|".join(names),
                 max_problems=ec.max_problems, num_samples=ec.num_samples, temperature=ec.temperature)
    scorer = evaluate.Scorer.for_model(params, mc, ctx.mesh, batch_size=ec.batch_size)
    engine = Engine(params, mc, tok, mesh=ctx.mesh)
    results = {}
    for name in names:
        task = evaluate.chat_task(name)
        # A preset's per-kind budgets refine max_problems, but -x on the command line means every task.
        limit = ec.max_problems
        kind = ec.arithmetic_problems if name == "Arithmetic" else ec.max_problems_generative
        if task.eval_type != "categorical" and kind >= 0 and not x_given:
            limit = kind
        n = len(task) if limit < 0 else min(limit, len(task))
        print0(f"[chat_eval] {name}: {n} problems ({CHAT_EVALS[name].split})")
        if task.eval_type == "categorical":
            r = evaluate.categorical_eval(task, tok, scorer, range(n))
        else:
            r = evaluate.generative_eval(task, tok, engine, range(n), num_samples=ec.num_samples,
                                         max_new_tokens=ec.max_new_tokens, temperature=ec.temperature,
                                         top_k=ec.top_k, batch_size=ec.batch_size, seed=x.seed, workers=x.workers,
                                         timeout=x.timeout, log=print0)
        r["split"] = CHAT_EVALS[name].split
        results[name] = r
        extra = (f" | pass@1 {r['pass@1']:.4f} | ended {r['ended_rate']:.3f} | tool calls {r['tool_call_rate']:.3f}"
                 if r["type"] == "generative" else "")
        print0(f"[chat_eval] {name}: accuracy {r['accuracy']:.4f} ({r['correct']}/{r['total']}){extra} | "
               f"{r['time_s']:.1f}s ({r['problems_per_s']:.2f} problems/s)")
    value, count = evaluate.chatcore(results)
    if value is not None:
        print0(f"[chat_eval] ChatCORE {value:.4f} over {count} of {len(CHATCORE_BASELINES)} tasks")
    res = {"source": x.source, "model_tag": tag, "step": step, "chatcore": value, "chatcore_tasks": count,
           "tasks": results, "max_problems": ec.max_problems, "num_samples": ec.num_samples,
           "temperature": ec.temperature, "max_new_tokens": ec.max_new_tokens}
    out = Path(x.output) if x.output else base_dir() / "chat_eval" / f"{x.source}_{tag}_step{step}.json"
    if process_index() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=float))
    log_section(f"chat-evaluation-{x.source}", {**res, "json": str(out)})
    return res


if __name__ == "__main__":
    cli(main)
