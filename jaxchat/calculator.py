"""The chat model's calculator tool: evaluates what it writes between `<|python_start|>` and `<|python_end|>`.

nanochat `eval`s arithmetic (digits, `+ - * / . ( )`, commas stripped, no `**`) or `'text'.count('x')`. Here the
same language is parsed with `ast` and walked by hand, so no code can run. Inputs of at most 256 characters and
integers of at most 4096 bits (checked before multiplying) bound the cost without a timeout: ~20 us a call.
"""
from __future__ import annotations

import ast
import math
import operator
import re

CALC_MAX_LEN = 256
CALC_MAX_INT_BITS = 4096
_ARITH_CHARS = frozenset("0123456789+-*/.() ")
_STR_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'\"()._ ,-")
# nanochat's blacklist, applied outside the string literals (so 'directory'.count('r') is fine; `__` never is)
_FORBIDDEN = ("import", "exec", "eval", "compile", "open", "file", "input", "globals", "locals", "vars", "dir",
              "getattr", "setattr", "delattr", "hasattr", "lambda", "builtins", "os", "sys")
_LITERAL = re.compile(r"'[^'\\]*'|\"[^\"\\]*\"")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv}


def _arith_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.UAdd, ast.USub)) and _arith_ok(node.operand)
    return isinstance(node, ast.BinOp) and type(node.op) in _OPS and _arith_ok(node.left) and _arith_ok(node.right)


def _count_ok(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and not node.keywords and len(node.args) == 1
            and isinstance(node.func, ast.Attribute) and node.func.attr == "count"
            and isinstance(node.func.value, ast.Constant) and type(node.func.value.value) is str
            and isinstance(node.args[0], ast.Constant) and type(node.args[0].value) is str)


def _parse(expr: str) -> ast.AST | None:
    try:
        return ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _analyze(expr) -> tuple[str, ast.AST | None]:
    """(why, tree): the tree to evaluate, or None and the reason it is rejected."""
    if not isinstance(expr, str):
        return "not a string", None
    if len(expr) > CALC_MAX_LEN:
        return f"expression longer than {CALC_MAX_LEN} characters", None
    arith = expr.replace(",", "")  # commas are stripped for arithmetic only ('a,b'.count(',') is 1)
    if not arith.strip():
        return "empty expression", None
    if all(c in _ARITH_CHARS for c in arith):
        if "**" in arith:
            return "the power operator ** is not allowed", None
        if (tree := _parse(arith)) is None:
            return "not a valid arithmetic expression", None
        if not _arith_ok(tree):
            return "only + - * / // on numbers are allowed", None
        return "arithmetic", tree
    bad = sorted({c for c in expr if c not in _STR_CHARS})
    if bad:
        return f"characters not allowed: {''.join(bad)!r}", None
    if "__" in expr:
        return "dunder names are not allowed", None
    code_part = _LITERAL.sub("''", expr).lower()
    for word in _FORBIDDEN:
        if word in code_part:
            return f"forbidden name {word!r}", None
    if ".count(" not in code_part:
        return "only arithmetic or 'text'.count('x') is supported", None
    if (tree := _parse(expr)) is None:
        return "not a valid expression", None
    if not _count_ok(tree):
        return "only a string literal's .count(string literal) is supported", None
    return "string count", tree


def check_calculator_expr(expr: str) -> tuple[bool, str]:
    """(True, "arithmetic" | "string count") or (False, reason); evaluates nothing."""
    why, tree = _analyze(expr)
    return tree is not None, why


def _eval_arith(node: ast.AST):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        v = _eval_arith(node.operand)
        return -v if isinstance(node.op, ast.USub) else +v
    a, b = _eval_arith(node.left), _eval_arith(node.right)
    if (isinstance(node.op, ast.Mult) and type(a) is type(b) is int
            and a.bit_length() + b.bit_length() > CALC_MAX_INT_BITS):
        raise OverflowError("integer too large")
    r = _OPS[type(node.op)](a, b)
    if type(r) is int and r.bit_length() > CALC_MAX_INT_BITS:
        raise OverflowError("integer too large")
    return r


def _format_number(v) -> str | None:
    """Ints as ints, whole floats below 1e15 as ints ("408"), else 15 significant digits ("0.3"); inf/nan -> None."""
    if type(v) is int or (math.isfinite(v) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    return format(v, ".15g") if math.isfinite(v) else None


def calculator(expr: str) -> str | None:
    """The tool's output text ("1,234 + 1" -> "1235", "7/2" -> "3.5", "'strawberry'.count('r')" -> "3"), or None
    when rejected or failed ("1/0", "2**10"): then nothing is injected."""
    _why, tree = _analyze(expr)
    if tree is None:
        return None
    try:
        if isinstance(tree, ast.Call):
            return str(tree.func.value.value.count(tree.args[0].value))
        return _format_number(_eval_arith(tree))
    except (ArithmeticError, RecursionError, ValueError, TypeError):
        return None
