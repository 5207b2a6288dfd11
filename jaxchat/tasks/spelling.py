"""Synthetic spelling tasks (nanochat V1's SimpleSpelling and SpellingBee, reimplemented). Words: `english-words`'
web2 list, lowercase a-z, length 3-12 (175,474), split by `split_of(word)`, so no test word occurs in train.
SimpleSpelling: "Spell the word: apple" → "apple:a,p,p,l,e". SpellingBee: count a letter: spell the word, scan it
with a running tally ("3:r hit! count=1"), check with python `'word'.count('r')`, "#### N".
"""
import pickle
import re
import string
from functools import lru_cache

from jaxchat.tasks.common import SyntheticTask, package_dir, split_of

@lru_cache(maxsize=None)
def words_for_split(split: str) -> tuple[str, ...]:
    """The split's words of english-words' web2 list (sorted; lowercase a-z, length 3-12)."""
    words = pickle.loads((package_dir("english_words") / "data" / "web2.pickle").read_bytes())
    return tuple(sorted(w for w in words if re.fullmatch(r"[a-z]{3,12}", w) and split_of(w) == split))


def spell(word: str) -> str:
    return f"{word}:{','.join(word)}"


class SimpleSpelling(SyntheticTask):
    eval_type = "generative"

    def generate(self, rng):
        word = rng.choice(words_for_split(self.split))
        return {"messages": [{"role": "user", "content": f"Spell the word: {word}"},
                             {"role": "assistant", "content": spell(word)}], "word": word}

    def evaluate(self, conversation, completion):
        return completion.strip() == spell(conversation["word"])


USER_TEMPLATES = [  # the last three are not English
    "How many {letter} are in the word {word}", "How many {letter}s are in {word}",
    "How many times does the letter {letter} appear in {word}",
    "How many times does {letter} occur in the word {word}", "Count the number of {letter} in {word}",
    "Count how many {letter} there are in the word {word}", "In the word {word}, how many {letter} are there",
    "What is the count of letter {letter} in {word}", "How often does {letter} show up in {word}",
    "Number of {letter} in {word}", "Tell me how many {letter} the word {word} contains",
    "Can you count the {letter} in {word}", "How many letter {letter} does {word} have",
    "Please count the occurrences of {letter} in the word {word}", "I need the number of {letter} in {word}",
    "{word}: how many {letter}", "Does {word} contain the letter {letter}, and how many times",
    "Find how many {letter} are in {word}", "How many {letter} can you find in {word}",
    "Count the letter {letter} in the word {word}", "¿Cuántas {letter} hay en la palabra {word}",
    "Combien de {letter} y a-t-il dans le mot {word}", "Wie viele {letter} hat das Wort {word}",
]


class SpellingBee(SyntheticTask):
    """Count a letter in a word: spelled out, then checked with the python tool; user templates vary wording,
    casing (30% lowercased), quoting and a trailing "?" (50%). Gold under "answer"."""

    eval_type = "generative"

    def generate(self, rng):
        word = rng.choice(words_for_split(self.split))
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
        count = word.count(letter)
        template = rng.choice(USER_TEMPLATES)
        template = template.lower() if rng.random() < 0.3 else template
        lq, wq = rng.choice(["", "'", '"']), rng.choice(["", "'", '"'])
        user = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}") + ("?" if rng.random() < 0.5 else "")

        lines = [f"I need to count the letter '{letter}' in the word '{word}'. First I spell the word:",
                 spell(word), "", f"Now I go through it one letter at a time and count '{letter}':"]
        lines += [f"{i}:{ch} hit! count={word[:i].count(letter)}" if ch == letter else f"{i}:{ch}"
                  for i, ch in enumerate(word, 1)]
        lines += ["", f"So I count {count}.", "", "Let me check this with Python:", "", ""]
        parts = [{"type": "text", "text": "\n".join(lines)}, {"type": "python", "text": f"'{word}'.count('{letter}')"},
                 {"type": "python_output", "text": str(count)},
                 {"type": "text", "text": f"\n\nBoth agree. The answer is:\n\n#### {count}"}]
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": parts}],
                "answer": str(count), "word": word, "letter": letter}
