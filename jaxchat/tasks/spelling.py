"""Synthetic spelling tasks (nanochat V1's SimpleSpelling and SpellingBee, reimplemented).

Word list: the `english-words` package's Webster's 2nd edition list (`english_words/data/web2.pickle`, read
directly), keeping words that are already plain lowercase a-z (this drops proper nouns) of length 3-12:
175,474 words. nanochat uses dwyl's words_alpha.txt, which is not available offline.

- SimpleSpelling: user "Spell the word: apple" → assistant "apple:a,p,p,l,e".
- SpellingBee: count a letter in a word. The letter comes from the word with p=0.9, else uniformly from a-z.
  User templates vary in wording (a few non-English ones), casing (30% lowercased), quoting of word and
  letter, and a trailing "?" (50%). The assistant spells the word ("word:w,o,r,d"), scans it with numbered
  positions and a running tally ("3:r hit! count=1"), double-checks with a python tool call
  `'word'.count('r')` and its output, and ends with "#### N". Generative eval: the "####" number.

Splits: words are partitioned by `common.split_of(word)` (~80/10/10), so a test word is never spelled or
counted in any train item of either task; item i uses `random.Random(seed + offset(split) + i)`.
"""
from __future__ import annotations

import pickle
import random
import re
import string
from functools import lru_cache

from jaxchat.tasks.common import SEED_OFFSETS, Task, check_split, package_dir, split_of
from jaxchat.tasks.gsm8k import evaluate_hash_answer

LETTERS = string.ascii_lowercase
_WORD = re.compile(r"[a-z]{3,12}")


@lru_cache(maxsize=None)
def all_words() -> tuple[str, ...]:
    """Sorted lowercase a-z words of length 3-12 from english-words' web2 list."""
    with open(package_dir("english_words") / "data" / "web2.pickle", "rb") as f:
        words = pickle.load(f)
    return tuple(sorted(w for w in words if _WORD.fullmatch(w)))


@lru_cache(maxsize=None)
def words_for_split(split: str) -> tuple[str, ...]:
    return tuple(w for w in all_words() if split_of(w) == split)


def spell(word: str) -> str:
    return f"{word}:{','.join(word)}"


class SimpleSpelling(Task):
    """'Spell the word: X' → 'X:x,y,z'. split: train | val | test (disjoint words)."""

    eval_type = "generative"

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, **kw):
        super().__init__(split=check_split(split), **kw)
        self.size, self.seed = size, seed
        self.words = words_for_split(split)

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(self.seed + SEED_OFFSETS[self.split] + index)
        word = rng.choice(self.words)
        return {
            "messages": [
                {"role": "user", "content": f"Spell the word: {word}"},
                {"role": "assistant", "content": spell(word)},
            ],
            "word": word,
        }

    def evaluate(self, conversation, completion):
        return completion.strip() == spell(conversation["word"])

    def _args(self):
        return f"split={self.split!r}, size={self.size}"


USER_TEMPLATES = [
    "How many {letter} are in the word {word}",
    "How many {letter}s are in {word}",
    "How many times does the letter {letter} appear in {word}",
    "How many times does {letter} occur in the word {word}",
    "Count the number of {letter} in {word}",
    "Count how many {letter} there are in the word {word}",
    "In the word {word}, how many {letter} are there",
    "What is the count of letter {letter} in {word}",
    "How often does {letter} show up in {word}",
    "Number of {letter} in {word}",
    "Tell me how many {letter} the word {word} contains",
    "Can you count the {letter} in {word}",
    "How many letter {letter} does {word} have",
    "Please count the occurrences of {letter} in the word {word}",
    "I need the number of {letter} in {word}",
    "{word}: how many {letter}",
    "Does {word} contain the letter {letter}, and how many times",
    "Find how many {letter} are in {word}",
    "How many {letter} can you find in {word}",
    "Count the letter {letter} in the word {word}",
    # a few non-English ones
    "¿Cuántas {letter} hay en la palabra {word}",
    "Combien de {letter} y a-t-il dans le mot {word}",
    "Wie viele {letter} hat das Wort {word}",
]


class SpellingBee(Task):
    """Count a letter in a word, spelled out and then checked with the python tool. Gold under "answer"."""

    eval_type = "generative"

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, **kw):
        super().__init__(split=check_split(split), **kw)
        self.size, self.seed = size, seed
        self.words = words_for_split(split)

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(self.seed + SEED_OFFSETS[self.split] + index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(LETTERS)
        count = word.count(letter)

        template = rng.choice(USER_TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()
        lq, wq = rng.choice(["", "'", '"']), rng.choice(["", "'", '"'])
        user = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}")
        if rng.random() < 0.5:
            user += "?"

        lines = [f"I need to count the letter '{letter}' in the word '{word}'. First I spell the word:",
                 spell(word), "", f"Now I go through it one letter at a time and count '{letter}':"]
        tally = 0
        for i, ch in enumerate(word, 1):
            if ch == letter:
                tally += 1
                lines.append(f"{i}:{ch} hit! count={tally}")
            else:
                lines.append(f"{i}:{ch}")
        lines += ["", f"So I count {tally}.", "", "Let me check this with Python:", "", ""]
        parts = [
            {"type": "text", "text": "\n".join(lines)},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nBoth agree. The answer is:\n\n#### {count}"},
        ]
        return {
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": parts}],
            "answer": str(count),
            "word": word,
            "letter": letter,
        }

    def evaluate(self, conversation, completion):
        return evaluate_hash_answer(conversation, completion)

    def _args(self):
        return f"split={self.split!r}, size={self.size}"
