"""Human conversation corpora: ChitChat and ChatterBot (pip packages, train-only) and SmolTalk (hub).

ChitChat: 7,168 human chats, the first sender is the user, a turn's messages joined with newlines, chats without
an assistant turn skipped. ChatterBot: 2,026 English entries of alternating utterances. Their "val" split is the
~2% whose key (ChitChat: conversation id; ChatterBot: normalised first utterance) hashes to bucket 0-1 of 100.
SmolTalk (smol-smoltalk) is visited in a fixed permutation (seed 42), like nanochat's `.shuffle(seed=42)`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from itertools import groupby

import numpy as np
import yaml

from jaxchat.tasks.common import Task, check_split, hub_table, normalize_text, package_dir, stable_hash


def _alternating(turns) -> list[dict]:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return msgs[: len(msgs) // 2 * 2]  # end on an assistant turn


@lru_cache(maxsize=None)
def load_chitchat() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(conversation id, turns) of every chat with a user and an assistant turn; a turn is one sender's
    consecutive messages (also across an empty turn), joined with newlines."""
    with open(package_dir("chitchat_dataset") / "dataset.json", encoding="utf-8") as f:
        data = json.load(f)
    out = []
    for cid, conv in data.items():
        messages = [(m["sender"], m["text"].strip()) for turn in conv["messages"] for m in turn if m["text"].strip()]
        turns = ["\n".join(text for _, text in group) for _, group in groupby(messages, key=lambda m: m[0])]
        if len(turns) >= 2:
            out.append((cid, tuple(turns)))
    return tuple(out)


@lru_cache(maxsize=None)
def load_chatterbot() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(file stem, utterances) for every English entry with at least a question and an answer."""
    out = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        for conv in data.get("conversations") or []:
            turns = tuple(str(t).strip() for t in conv if str(t).strip()) if isinstance(conv, list) else ()
            if len(turns) >= 2:
                out.append((path.stem, turns))
    return tuple(out)


def _split_rows(rows, key, split: str, exclude) -> list:
    """The rows whose key hashes into `split`, minus those whose opening message is in `exclude`."""
    return [r for r in rows if (stable_hash(key(r)) % 100 < 2) == (split == "val")
            and normalize_text(r[1][0]) not in exclude]


class ChitChat(Task):
    def __init__(self, split: str = "train", exclude=frozenset(), **kw):
        super().__init__(split=check_split(split, ("train", "val")), **kw)
        self.rows = _split_rows(load_chitchat(), lambda r: r[0], split, exclude)

    def get_example(self, index):
        cid, turns = self.rows[index]
        return {"messages": _alternating(turns), "id": cid}


class ChatterBot(Task):
    def __init__(self, split: str = "train", exclude=frozenset(), **kw):
        super().__init__(split=check_split(split, ("train", "val")), **kw)
        self.rows = _split_rows(load_chatterbot(), lambda r: normalize_text(r[1][0]), split, exclude)

    def get_example(self, index):
        topic, turns = self.rows[index]
        return {"messages": _alternating(turns), "topic": topic}


class SmolTalk(Task):
    def __init__(self, split: str = "train", **kw):
        super().__init__(split=check_split(split, ("train", "test")), **kw)
        self.rows = hub_table("HuggingFaceTB/smol-smoltalk", "data", split)  # a pyarrow Table, read row by row
        self.order = np.random.default_rng(42).permutation(len(self.rows))

    def get_example(self, index):
        row = self.rows.slice(int(self.order[index]), 1).to_pylist()[0]
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}
