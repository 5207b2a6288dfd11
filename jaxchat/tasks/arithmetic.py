"""Synthetic arithmetic solved with the calculator tool (offline stand-in for GSM8K's tool use).

Each item: the user asks a bare expression ("What is 37 * 48?") or a one/two-step word problem (apples in
boxes, money, distance/speed/time, sharing equally). Operands have 1-4 digits; ops + - * /; division only
when exact; every answer is an integer (negative only for bare subtractions). The assistant message is
deliberately rigid so a tiny model can learn it quickly:

    text    "Let me calculate 37 * 48 with the calculator.\\n"      (a few wordings)
    python  "37*48"
    output  "1776"
    text    "\\n37 * 48 = 1776.\\n#### 1776"

Division is written `//` in the python part so the tool prints an integer ("12", not "12.0"); the text
keeps "/". The conversation carries the gold answer under "answer" (a str of the integer).

Splits: the python expression is the partition key (`common.split_of`), so one computation belongs to one
split only, whatever the wording; item i of a split is drawn from `random.Random(seed + offset(split) + i)`
(rejection-sampling candidates until the key falls in the split), so any slice or shard is reproducible.
"""
from __future__ import annotations

import random

from jaxchat.tasks.common import SEED_OFFSETS, Task, check_split, split_of
from jaxchat.tasks.gsm8k import evaluate_hash_answer

NAMES = ["Tom", "Anna", "Ben", "Maria", "Sam", "Lena", "Omar", "Julia", "Ken", "Priya", "Leo", "Sara", "Max",
         "Nina", "Ivan", "Emma", "Raj", "Zoe", "Carlos", "Mia"]
ITEMS = ["apples", "pencils", "marbles", "cookies", "stickers", "books", "cards", "eggs", "oranges", "coins",
         "candies", "shells", "stamps", "balloons", "flowers"]
GOODS = ["notebook", "ticket", "shirt", "lamp", "toy car", "chair", "book", "cake", "plant", "hat"]

SHOW_OP = {"+": ["+", "plus"], "-": ["-", "minus"], "*": ["*", "times", "x", "×"], "/": ["/", "divided by", "÷"]}
BARE = ["What is {e}?", "What is {e}?", "Calculate {e}.", "Compute {e}", "What's {e}?", "{e} = ?", "How much is {e}?",
        "Please work out {e}.", "Can you calculate {e}?", "Solve {e}.", "{e}"]
INTROS = ["Let me calculate {d} with the calculator.\n", "Let me calculate {d} with the calculator.\n",
          "I will use the calculator for {d}.\n", "Let me compute {d} using the calculator.\n"]


def _num(rng: random.Random, max_digits: int = 4) -> int:
    d = rng.choice([1, 1, 2, 2, 2, 3, 3, 4][: 2 * max_digits])
    return rng.randint(1 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _py(disp: str) -> str:
    """Display expression "a / b" → python expression "a//b" (spaces removed)."""
    return disp.replace(" / ", "//").replace(" ", "")


# Each generator returns (question, display expression); the answer is computed from the expression.


def _bare(rng):
    op = rng.choice("+-*/")
    a, b = _num(rng), _num(rng)
    if op == "/":
        b = _num(rng, 2)
        a = b * rng.randint(1, 9999 // b)  # dividend stays within 4 digits
    if op == "*":
        b = _num(rng, rng.choice([2, 3, 4]))
    disp = f"{a} {op} {b}"
    shown = f"{a} {rng.choice(SHOW_OP[op]) if rng.random() < 0.3 else op} {b}"
    return rng.choice(BARE).format(e=shown), disp


def _bare_two_step(rng):
    a, b, c = _num(rng, 3), _num(rng, 2), _num(rng, 2)
    form = rng.randrange(4)
    if form == 0:
        disp = f"{a} + {b} * {c}"
    elif form == 1:
        disp = f"({a} + {b}) * {c}"
    elif form == 2:
        disp = f"{a} * {c} - {b}"
    else:
        c = rng.randint(2, 9)
        total = c * rng.randint(2, 9999 // c)
        b = rng.randint(1, total - 1)
        disp = f"({total - b} + {b}) / {c}"
    return rng.choice(BARE).format(e=disp), disp


def _word(rng):
    n, it, g = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(GOODS)
    a, b = max(_num(rng, 3), 2), max(_num(rng, 2), 2)  # counts >= 2 keep plurals grammatical
    kind = rng.randrange(12)
    if kind == 0:
        return f"{n} has {a} boxes with {b} {it} in each box. How many {it} does {n} have?", f"{a} * {b}"
    if kind == 1:
        return f"{n} had {a} {it} and got {b} more. How many {it} does {n} have now?", f"{a} + {b}"
    if kind == 2:
        a, b = max(a, b), min(a, b)
        return f"{n} had {a} {it} and gave {b} of them away. How many {it} are left?", f"{a} - {b}"
    if kind == 3:
        return f"One {g} costs ${a}. How much do {b} of them cost in dollars?", f"{a} * {b}"
    if kind == 4:
        a, b = max(a, b), min(a, b)
        return f"{n} has ${a} and spends ${b}. How many dollars does {n} have left?", f"{a} - {b}"
    if kind == 5:
        return f"A car drives at {b} km per hour for {a} hours. How many km does it travel?", f"{b} * {a}"
    if kind in (6, 7):
        a = rng.randint(1, 9999 // b)  # a * b stays within 4 digits
    if kind == 6:
        return (f"A train travels {a * b} km in {b} hours at a constant speed. What is its speed in km per hour?",
                f"{a * b} / {b}")
    if kind == 7:
        return (f"{n} shares {a * b} {it} equally among {b} friends. How many {it} does each friend get?",
                f"{a * b} / {b}")
    if kind == 8:
        c = _num(rng, 2)
        return (f"{n} has {a} bags of {b} {it} and {c} loose {it}. How many {it} does {n} have in total?",
                f"{a} * {b} + {c}")
    if kind == 9:
        a, b = max(_num(rng, 2), 2), _num(rng, 2)
        pay = rng.randint(a * b, 9999)
        return (f"{n} buys {a} {g}s at ${b} each and pays with ${pay}. How many dollars of change does {n} get?",
                f"{pay} - {a} * {b}")
    if kind == 10:
        c = max(_num(rng, 1), 2)
        extra = (-(a + b)) % c
        return (f"{n} had {a} {it}, found {b + extra} more, and then split them equally into {c} groups. "
                f"How many {it} are in each group?", f"({a} + {b + extra}) / {c}")
    d = rng.randint(2, 9)
    return (f"{n} reads {a} pages every day for {d} weeks. How many pages is that? (A week has 7 days.)",
            f"{a} * {d} * 7")


def solve(disp: str) -> int:
    """Exact integer value of a display expression (checks every division is exact)."""
    value = eval(_py(disp).replace("//", "/"), {"__builtins__": {}}, {})  # digits and + - * / ( ) only
    assert float(value).is_integer(), disp
    return int(value)


def arithmetic_conversation(question: str, disp: str, rng: random.Random) -> dict:
    answer = str(solve(disp))
    parts = [
        {"type": "text", "text": rng.choice(INTROS).format(d=disp)},
        {"type": "python", "text": _py(disp)},
        {"type": "python_output", "text": answer},
        {"type": "text", "text": f"\n{disp} = {answer}.\n#### {answer}"},
    ]
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}],
        "answer": answer,
        "expression": _py(disp),
    }


class Arithmetic(Task):
    """Calculator-tool arithmetic. split: train | val | test (disjoint by expression); `size` items."""

    eval_type = "generative"

    def __init__(self, split: str = "train", size: int = 10_000, seed: int = 0, **kw):
        super().__init__(split=check_split(split), **kw)
        self.size, self.seed = size, seed

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(self.seed + SEED_OFFSETS[self.split] + index)
        for _ in range(1000):
            r = rng.random()
            gen = _bare if r < 0.4 else _bare_two_step if r < 0.5 else _word
            question, disp = gen(rng)
            if (gen is _bare or solve(disp) >= 0) and split_of(_py(disp)) == self.split:
                return arithmetic_conversation(question, disp, rng)
        raise RuntimeError("no arithmetic problem found for this split")  # pragma: no cover

    def evaluate(self, conversation, completion):
        return evaluate_hash_answer(conversation, completion)

    def _args(self):
        return f"split={self.split!r}, size={self.size}"
