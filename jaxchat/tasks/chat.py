"""Human conversation corpora: ChitChat and ChatterBot (pip packages, train-only) and SmolTalk (hub). ChitChat:
7,168 human chats, the first sender is the user. ChatterBot: 2,026 English entries of alternating utterances. Their
"val" split is the ~2% whose key (ChitChat: conversation id; ChatterBot: normalised first utterance) hashes to
bucket 0-1 of 100. SmolTalk (smol-smoltalk) is visited in a fixed permutation, like nanochat's `.shuffle(seed=42)`.
"""
import json
from functools import lru_cache
from itertools import groupby

import numpy as np
import yaml

from jaxchat.tasks.common import Task, check_split, hub_table, normalize_text, package_dir, stable_hash


@lru_cache(maxsize=None)
def load_chitchat() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(conversation id, turns) of every chat with a user and an assistant turn; a turn is one sender's
    consecutive messages (also across an empty turn), joined with newlines."""
    data = json.loads((package_dir("chitchat_dataset") / "dataset.json").read_text(encoding="utf-8"))
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
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            turns = tuple(str(t).strip() for t in conv if str(t).strip()) if isinstance(conv, list) else ()
            if len(turns) >= 2:
                out.append((path.stem, turns))
    return tuple(out)


class _Corpus(Task):
    """(key, turns) rows in the split, minus those whose normalised opening message is in `exclude`."""

    def __init__(self, split: str = "train", exclude=frozenset(), **kw):
        super().__init__(split=check_split(split, ("train", "val")), **kw)
        self.rows = [r for r in self.load() if (stable_hash(self.split_key(r)) % 100 < 2) == (split == "val")
                     and normalize_text(r[1][0]) not in exclude]

    def get_example(self, index):
        key, turns = self.rows[index]
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        return {"messages": msgs[: len(msgs) // 2 * 2], self.key_name: key}  # end on an assistant turn


class ChitChat(_Corpus):
    load, key_name, split_key = staticmethod(load_chitchat), "id", staticmethod(lambda row: row[0])


class ChatterBot(_Corpus):
    load, key_name, split_key = staticmethod(load_chatterbot), "topic", staticmethod(lambda r: normalize_text(r[1][0]))


class SmolTalk(Task):
    def __init__(self, split: str = "train", **kw):
        super().__init__(split=check_split(split, ("train", "test")), **kw)
        self.rows = hub_table("HuggingFaceTB/smol-smoltalk", "data", split)  # a pyarrow Table, read row by row
        self.order = np.random.default_rng(42).permutation(len(self.rows))

    def get_example(self, index):
        row = self.rows.slice(int(self.order[index]), 1).to_pylist()[0]
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}
