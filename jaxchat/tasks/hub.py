"""Online (Hugging Face hub) datasets for nanochat's real V1 mixtures. Only used with `online=True`.

Needs the `hub` extra (`pip install -e '.[hub]'`, i.e. huggingface-hub), imported lazily. Parquet files are
downloaded once into `base_dir()/hub_cache` (huggingface_hub's cache layout; `HF_HUB_OFFLINE=1` then reuses
it) and read with pyarrow; rows are converted to conversations on access.

| adapter | hub dataset | files | rows |
|---|---|---|---|
| SmolTalk(split) | HuggingFaceTB/smol-smoltalk | data/{train,test}-*.parquet | 460K / 24K |
| MMLUAuxTrain() | cais/mmlu | all/auxiliary_train-*.parquet | ~100K |
| GSM8KTrain() | openai/gsm8k | main/train-*.parquet | 7,473 |
| ARCTrain(subset) | allenai/ai2_arc | <subset>/train-*.parquet | 2,251 / 1,119 |

SmolTalk rows are visited in a fixed permutation (numpy seed 42), like nanochat's `.shuffle(seed=42)`, so
`SmolTalk("train", stop=10_000)` is a random 10K. A leading system message is kept (the tokenizer merges it
into the first user turn).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from jaxchat.common import base_dir
from jaxchat.tasks.arc import SUBSETS, arc_row
from jaxchat.tasks.common import Task, check_split, mc_conversation
from jaxchat.tasks.gsm8k import evaluate_hash_answer, gsm8k_conversation

INSTALL_HINT = "pip install -e '.[hub]'"


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError(
            f"online datasets need the 'hub' extra (huggingface-hub): {INSTALL_HINT}. "
            "Without it, use the offline mixtures (online=False)."
        ) from e
    return huggingface_hub


def hub_cache_dir() -> Path:
    return base_dir() / "hub_cache"


def download_parquet(repo_id: str, config_dir: str, split: str) -> list[Path]:
    """Download (or find in the cache) `<config_dir>/<split>-*.parquet` of a hub dataset; sorted local paths."""
    hf = _huggingface_hub()
    pattern = f"{config_dir}/{split}-*.parquet"
    try:
        folder = hf.snapshot_download(repo_id, repo_type="dataset", allow_patterns=[pattern],
                                      cache_dir=str(hub_cache_dir()))
    except Exception as e:
        raise RuntimeError(
            f"could not download {repo_id} ({pattern}) from the Hugging Face hub: {type(e).__name__}: {e}. "
            "Online mixtures need network access (or a filled cache at "
            f"{hub_cache_dir()} with HF_HUB_OFFLINE=1); otherwise use online=False."
        ) from e
    paths = sorted(Path(folder).glob(pattern))
    if not paths:
        raise RuntimeError(f"{repo_id} has no files matching {pattern}")
    return paths


@lru_cache(maxsize=None)
def load_table(repo_id: str, config_dir: str, split: str):
    """All rows of a hub dataset split as one pyarrow Table (cached per process)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in download_parquet(repo_id, config_dir, split)]
    return pa.concat_tables(tables)


class _TableTask(Task):
    repo_id = config_dir = hub_split = ""

    def __init__(self, split=None, **kw):
        super().__init__(split=split, **kw)
        self.table = load_table(self.repo_id, self.config_dir, self.hub_split)
        self.order = None  # optional permutation of row indices

    def num_examples(self):
        return self.table.num_rows

    def row(self, index) -> dict:
        if self.order is not None:
            index = int(self.order[index])
        return self.table.slice(index, 1).to_pylist()[0]


def smoltalk_conversation(row: dict) -> dict:
    msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return {"messages": msgs}


class SmolTalk(_TableTask):
    repo_id, config_dir = "HuggingFaceTB/smol-smoltalk", "data"

    def __init__(self, split: str = "train", **kw):
        self.hub_split = check_split(split, ("train", "test"))
        super().__init__(split=split, **kw)
        self.order = np.random.default_rng(42).permutation(self.table.num_rows)

    def get_example(self, index):
        return smoltalk_conversation(self.row(index))


def mmlu_aux_conversation(row: dict) -> dict:
    if "train" in row and isinstance(row["train"], dict):  # the auxiliary_train config nests rows under "train"
        row = row["train"]
    return mc_conversation(row["question"], row["choices"], int(row["answer"]), subject=row.get("subject", ""))


class MMLUAuxTrain(_TableTask):
    """MMLU auxiliary_train (~100K MC questions from ARC, MC_TEST, OBQA, RACE): nanochat's midtraining MC data."""

    repo_id, config_dir, hub_split = "cais/mmlu", "all", "auxiliary_train"

    def __init__(self, split: str = "train", **kw):
        super().__init__(split=check_split(split, ("train",)), **kw)

    def get_example(self, index):
        return mmlu_aux_conversation(self.row(index))


class GSM8KTrain(_TableTask):
    """GSM8K main train (7,473), same conversion as the offline test split. Generative; reward = "####" match."""

    eval_type = "generative"
    repo_id, config_dir, hub_split = "openai/gsm8k", "main", "train"

    def __init__(self, split: str = "train", **kw):
        super().__init__(split=check_split(split, ("train",)), **kw)

    def get_example(self, index):
        r = self.row(index)
        return gsm8k_conversation(r["question"], r["answer"])

    def evaluate(self, conversation, completion):
        return evaluate_hash_answer(conversation, completion)


def arc_conversation(row: dict, subset: str) -> dict:
    r = arc_row(row["question"], row["choices"]["text"], row["choices"]["label"], row["answerKey"], row.get("id"))
    return mc_conversation(r["question"], r["choices"], r["gold"], id=r["id"], subset=subset)


class ARCTrain(_TableTask):
    """ARC train split (Easy 2,251 / Challenge 1,119), lettered A, B, C, ... like the offline splits."""

    eval_type = "categorical"
    repo_id, hub_split = "allenai/ai2_arc", "train"

    def __init__(self, subset: str = "ARC-Easy", split: str = "train", **kw):
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {list(SUBSETS)}, got {subset!r}")
        self.subset = self.config_dir = subset
        super().__init__(split=check_split(split, ("train",)), **kw)

    def get_example(self, index):
        return arc_conversation(self.row(index), self.subset)

    def _args(self):
        return f"{self.subset!r}, split={self.split!r}"
