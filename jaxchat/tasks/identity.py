"""Synthetic identity conversations: who jaxchat is (the offline stand-in for nanochat's LLM-written
identity_conversations.jsonl): the hand-written templates of identity.yaml combined at random. A conversation is
an opener (a greeting, a topic question, or a short exchange in another language), 0-2 more topics, sometimes a
closing thanks. The normalised opening message is the split key (`split_of`); small-talk openers are train-only.
"""
import random
from pathlib import Path

import yaml

from jaxchat.tasks.common import SyntheticTask, normalize_text, split_of

DATA = yaml.load((Path(__file__).parent / "identity.yaml").read_text(encoding="utf-8"),
                 getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml's parser when present: 2 ms, not 40
GREETINGS, OTHERS, TOPICS = DATA["greetings"], DATA["others"], DATA["topics"]


def _style(rng: random.Random, text: str) -> str:
    """Small surface variation of a user message: lowercase, dropped final punctuation."""
    text = text.lower() if rng.random() < 0.2 else text
    return text[:-1] if rng.random() < 0.2 and text[-1:] in ".?!" else text


def _topic_exchange(rng: random.Random, topic: str) -> tuple[str, str]:
    other = rng.choice(OTHERS)
    return rng.choice(TOPICS[topic]["questions"]).format(o=other), rng.choice(TOPICS[topic]["replies"]).format(o=other)


def _opener(rng: random.Random) -> tuple[list[tuple[str, str]], set[str]]:
    """The first exchange(s) and the topics already used ("*": a foreign-language exchange, "greet")."""
    r = rng.random()
    if r < 0.08:
        lang = rng.choice(DATA["foreign"])
        return [(rng.choice(lang["user"]), rng.choice(lang["replies"]))], {"*"}
    if r < 0.2:
        greeting = _style(rng, rng.choice(GREETINGS) + rng.choice(["", "!", "."]))
        return [(greeting, rng.choice(DATA["greeting_replies"]))], {"greet"}
    topic = rng.choice(list(TOPICS))
    user, reply = _topic_exchange(rng, topic)
    if rng.random() < 0.35:
        user = rng.choice(GREETINGS) + rng.choice(["! ", ", ", ". "]) + user
        reply = rng.choice(["Hello! ", "Hi! ", "Hey! ", ""]) + reply
    return [(_style(rng, user), reply)], {topic}


class Identity(SyntheticTask):
    def generate(self, rng):
        for _ in range(1000):
            exchanges, used = _opener(rng)
            # small talk (a bare greeting, "how are you?") also opens human chats (ChitChat): train only
            split = "train" if used & {"greet", "howareyou"} else split_of(normalize_text(exchanges[0][0]))
            if split == self.split:
                break
        else:  # pragma: no cover
            raise RuntimeError("no identity opener found for this split")
        if "*" not in used:
            n_more = rng.choice([0, 1, 1, 2]) + ("greet" in used)  # a bare greeting gets a follow-up
            exchanges += [_topic_exchange(rng, t) for t in rng.sample([t for t in TOPICS if t not in used], n_more)]
            if rng.random() < 0.3:
                exchanges.append((rng.choice(DATA["closers"]["user"]), rng.choice(DATA["closers"]["replies"])))
        return {"messages": [{"role": role, "content": text} for pair in exchanges
                             for role, text in zip(("user", "assistant"), pair)]}
