"""Decontamination: the normalised question texts of every offline evaluation item.

MMLU and ARC repeat some questions across splits (measured: 6 MMLU dev and 39 MMLU validation question stems
also occur in MMLU test; 2 ARC-Challenge validation stems occur in ARC-Challenge test). Training-side splits
(ARC validation, MMLU dev/validation, the chat corpora) drop every item whose normalised question stem (or
first user message) is in `eval_keys()`, so no evaluation question is ever trained on.
"""
from __future__ import annotations

from functools import lru_cache

from jaxchat.tasks.common import normalize_text


@lru_cache(maxsize=None)
def eval_keys() -> frozenset[str]:
    """Normalised question stems of ARC-Easy/Challenge test, MMLU test, GSM8K test and HumanEval prompts."""
    from jaxchat.tasks.arc import load_arc
    from jaxchat.tasks.gsm8k import load_gsm8k_test
    from jaxchat.tasks.humaneval import load_humaneval
    from jaxchat.tasks.mmlu import load_mmlu, subjects

    texts = [r["question"] for s in ("ARC-Easy", "ARC-Challenge") for r in load_arc(s, "test")]
    texts += [r["question"] for s in subjects() for r in load_mmlu("test", s)]
    texts += [d["question"] for d in load_gsm8k_test()]
    texts += [p["prompt"] for p in load_humaneval()]
    return frozenset(normalize_text(t) for t in texts)


def is_eval_question(text: str) -> bool:
    return normalize_text(text) in eval_keys()
