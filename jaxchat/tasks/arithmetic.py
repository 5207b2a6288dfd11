"""Synthetic arithmetic solved with the calculator tool (the offline stand-in for GSM8K's tool use).

The user asks a bare expression ("What is 37 * 48?") or a one/two-step word problem; operands have 1-4 digits,
divisions are exact and answers are integers. The reply is deliberately rigid so a tiny model learns it fast:
"Let me calculate 37 * 48 with the calculator.\n", python "37*48" (`//` for "/", so the tool prints an
integer), output "1776", "\n37 * 48 = 1776.\n#### 1776". The python expression is the split key (`split_of`).
"""
import random

from jaxchat.tasks.common import SyntheticTask, split_of

NAMES = "Tom Anna Ben Maria Sam Lena Omar Julia Ken Priya Leo Sara Max Nina Ivan Emma Raj Zoe Carlos Mia".split()
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
    shown = f"{a} {rng.choice(SHOW_OP[op]) if rng.random() < 0.3 else op} {b}"
    return rng.choice(BARE).format(e=shown), f"{a} {op} {b}"


def _bare_two_step(rng):
    a, b, c = _num(rng, 3), _num(rng, 2), _num(rng, 2)
    form = rng.randrange(4)
    if form < 3:
        disp = (f"{a} + {b} * {c}", f"({a} + {b}) * {c}", f"{a} * {c} - {b}")[form]
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
    if kind in (2, 4):
        a, b = max(a, b), min(a, b)
    if kind < 6:
        return [(f"{n} has {a} boxes with {b} {it} in each box. How many {it} does {n} have?", f"{a} * {b}"),
                (f"{n} had {a} {it} and got {b} more. How many {it} does {n} have now?", f"{a} + {b}"),
                (f"{n} had {a} {it} and gave {b} of them away. How many {it} are left?", f"{a} - {b}"),
                (f"One {g} costs ${a}. How much do {b} of them cost in dollars?", f"{a} * {b}"),
                (f"{n} has ${a} and spends ${b}. How many dollars does {n} have left?", f"{a} - {b}"),
                (f"A car drives at {b} km per hour for {a} hours. How many km does it travel?", f"{b} * {a}")][kind]
    if kind in (6, 7):
        a = rng.randint(1, 9999 // b)  # a * b stays within 4 digits
        return ((f"A train travels {a * b} km in {b} hours at a constant speed. What is its speed in km per hour?",
                 f"{n} shares {a * b} {it} equally among {b} friends. How many {it} does each friend get?")[kind - 6],
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
    value = eval(disp, {"__builtins__": {}}, {})  # digits and + - * / ( ) only
    assert float(value).is_integer(), disp
    return int(value)


class Arithmetic(SyntheticTask):
    """Calculator-tool arithmetic; splits are disjoint by expression (candidates are drawn until one falls in
    the split)."""

    eval_type = "generative"

    def generate(self, rng):
        for _ in range(1000):
            r = rng.random()
            gen = _bare if r < 0.4 else _bare_two_step if r < 0.5 else _word
            question, disp = gen(rng)
            if (gen is _bare or solve(disp) >= 0) and split_of(_py(disp)) == self.split:
                break
        else:  # pragma: no cover
            raise RuntimeError("no arithmetic problem found for this split")
        answer, py = str(solve(disp)), _py(disp)
        parts = [{"type": "text", "text": rng.choice(INTROS).format(d=disp)}, {"type": "python", "text": py},
                 {"type": "python_output", "text": answer},
                 {"type": "text", "text": f"\n{disp} = {answer}.\n#### {answer}"}]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}],
                "answer": answer, "expression": py}
