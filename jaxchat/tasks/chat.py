"""Human conversation corpora that ship in PyPI packages: ChitChat and ChatterBot (train-only chat data).

ChitChat (`chitchat-dataset` 0.9.0, `chitchat_dataset/dataset.json`): 7,168 human-human chats, each a list of
turns of one sender's messages. Mapping: the first sender is the user, the other the assistant; turns
alternate; a turn's messages are joined with newlines; a trailing user turn is dropped; chats with no
assistant turn (3,150 single-turn chats) are skipped.

ChatterBot (`chatterbot-corpus` 1.3.3, `chatterbot_corpus/data/english/*.yml`): 2,026 English entries, each
a list of alternating utterances (mostly one Q/A pair). One entry is a bare string (no answer) and is skipped.

Both have a deterministic hash split: split "val" holds the ~2% whose key hashes to bucket 0-1 of 100
(ChitChat key: conversation id; ChatterBot key: normalised first utterance, so repeated questions with
different answers stay on one side); split "train" the rest.
"""
from __future__ import annotations

import json
from functools import lru_cache

from jaxchat.tasks.common import Task, check_split, normalize_text, package_dir, stable_hash

VAL_PERCENT = 2


def _in_split(key: str, split: str) -> bool:
    return (stable_hash(key) % 100 < VAL_PERCENT) == (split == "val")


def _alternating(turns: list[str]) -> list[dict]:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    if len(msgs) % 2:
        msgs.pop()  # end on an assistant turn
    return msgs


@lru_cache(maxsize=None)
def load_chitchat() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(conversation id, turns) for every chat with at least one user and one assistant turn."""
    with open(package_dir("chitchat_dataset") / "dataset.json", encoding="utf-8") as f:
        data = json.load(f)
    out = []
    for cid, conv in data.items():
        turns, senders = [], []
        for turn in conv["messages"]:
            texts = [m["text"].strip() for m in turn if m.get("text", "").strip()]
            if not texts:
                continue
            sender = turn[0]["sender"]
            if senders and senders[-1] == sender:  # defensive: merge same-sender turns
                turns[-1] += "\n" + "\n".join(texts)
            else:
                turns.append("\n".join(texts))
                senders.append(sender)
        if len(turns) >= 2:
            out.append((cid, tuple(turns)))
    return tuple(out)


@lru_cache(maxsize=None)
def load_chatterbot() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(file stem, utterances) for every English entry with at least a question and an answer."""
    import yaml

    out = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        for conv in data.get("conversations") or []:
            if not isinstance(conv, list):
                continue
            turns = tuple(str(t).strip() for t in conv if str(t).strip())
            if len(turns) >= 2:
                out.append((path.stem, turns))
    return tuple(out)


def _clean(rows):
    """Drop conversations whose opening message is an evaluation question (see `decontam`)."""
    from jaxchat.tasks.decontam import is_eval_question

    return [r for r in rows if not is_eval_question(r[1][0])]


class ChitChat(Task):
    def __init__(self, split: str = "train", **kw):
        super().__init__(split=check_split(split, ("train", "val")), **kw)
        self.rows = _clean(r for r in load_chitchat() if _in_split(r[0], split))

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        cid, turns = self.rows[index]
        return {"messages": _alternating(list(turns)), "id": cid}


class ChatterBot(Task):
    def __init__(self, split: str = "train", **kw):
        super().__init__(split=check_split(split, ("train", "val")), **kw)
        self.rows = _clean(r for r in load_chatterbot() if _in_split(normalize_text(r[1][0]), split))

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        topic, turns = self.rows[index]
        return {"messages": _alternating(list(turns)), "topic": topic}
