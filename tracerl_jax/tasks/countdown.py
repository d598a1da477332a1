"""Countdown: combine the given numbers, each exactly once, to hit a target.

The verifier never evaluates text as code: it parses the boxed expression with
``ast`` and accepts only integer literals, ``+ - * /`` and parentheses,
computing with exact fractions.
"""
from __future__ import annotations

import ast
import dataclasses
import fractions
import random
import re

from tracerl_jax.tasks.answers import (boxed_answers, distinct_answers,
                                       is_disjunction, parse_int)
from tracerl_jax.tasks.base import Task, check_int, check_ops
from tracerl_jax.tasks.example import Example

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
# Model-written operators mapped to the ASCII the parser accepts.
_SPELLINGS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"),
              ("\u00d7", "*"), ("\u00b7", "*"), ("\u00f7", "/"),
              ("\u2212", "-"), ("\\left", ""), ("\\right", ""), ("$", ""))
_EXPR_CHARS = re.compile(r"[0-9+\-*/() ]+")
_MAX_EXPR_LEN = 200


def _to_text(node) -> str:
    """Prints an expression tree with only the parentheses it needs."""
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    lt, rt = _to_text(left), _to_text(right)
    if isinstance(left, tuple) and _PREC[left[0]] < _PREC[op]:
        lt = f"({lt})"
    if isinstance(right, tuple) and (
        _PREC[right[0]] < _PREC[op]
        or (_PREC[right[0]] == _PREC[op] and op in "-/")):
        rt = f"({rt})"
    return f"{lt}{op}{rt}"


def evaluate(expr: str, allowed_ops: str = "+-*/"):
    """Safely evaluates an arithmetic expression over integer literals.

    Args:
      expr: text such as ``"(44+19)-35"``; only digits, ``+ - * /``,
        parentheses and spaces are allowed.
      allowed_ops: the binary operators that may appear.

    Returns:
      ``(value, numbers)``: the exact ``Fraction`` value and the integer
      literals in the order they appear.

    Raises:
      ValueError: for anything else (other characters or syntax, unary signs,
        other operators, division by zero, too long).
    """
    if len(expr) > _MAX_EXPR_LEN or not _EXPR_CHARS.fullmatch(expr):
        raise ValueError(f"not a plain arithmetic expression: {expr[:50]!r}")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse {expr[:50]!r}") from e
    numbers: list[int] = []

    def walk(node) -> fractions.Fraction:
        if isinstance(node, ast.BinOp) and _AST_OPS.get(type(node.op), "?") in allowed_ops:
            a, b = walk(node.left), walk(node.right)
            op = _AST_OPS[type(node.op)]
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if b == 0:
                raise ValueError("division by zero")
            return a / b
        if (isinstance(node, ast.Constant) and type(node.value) is int):
            numbers.append(node.value)
            return fractions.Fraction(node.value)
        raise ValueError(f"disallowed syntax: {type(node).__name__}")

    return walk(tree.body), numbers


@dataclasses.dataclass(frozen=True)
class Countdown(Task):
    """``Use 44, 19, 35 once each with + - * / to make 28.``

    The generator builds a random expression tree over the numbers whose
    intermediate results are all positive integers, and its worked solution
    lists those steps: ``44+19=63, 63-35=28. \\boxed{44+19-35}``. The verifier
    accepts any expression (optionally written ``expr=target``) that uses
    exactly the given multiset of numbers, only the allowed operators, and
    evaluates to the target.

    Attributes:
      count: how many numbers are given.
      max_number: the numbers are drawn from ``[1, max_number]``.
      max_target: targets are in ``[1, max_target]``.
      ops: the allowed operators, a subset of ``"+-*/"``.
    """

    name = "countdown"

    count: int = 3
    max_number: int = 25
    max_target: int = 100
    ops: str = "+-*/"

    def __post_init__(self):
        check_int("count", self.count, 2, 6)
        check_int("max_number", self.max_number, 2, 10_000)
        check_int("max_target", self.max_target, 1, 10**9)
        check_ops(self.ops, "+-*/")

    def _draw(self, rng: random.Random):
        """One attempt at a tree; None if a step left the positive integers."""
        numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
        pool = [(n, n) for n in numbers]  # (value, tree)
        steps = []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            (a, ta), (b, tb) = pool[i], pool[j]
            op = rng.choice(self.ops)
            if op in "-/" and a < b:
                (a, ta), (b, tb) = (b, tb), (a, ta)
            if op == "/" and a % b:
                return None
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op]
            if value <= 0:
                return None
            steps.append(f"{a}{op}{b}={value}")
            pool = [p for k, p in enumerate(pool) if k not in (i, j)]
            pool.append((value, (op, ta, tb)))
        target, tree = pool[0]
        if target > self.max_target:
            return None
        return numbers, target, tree, steps

    def sample(self, rng: random.Random) -> Example:
        drawn = None
        while drawn is None:
            drawn = self._draw(rng)
        numbers, target, tree, steps = drawn
        expr = _to_text(tree)
        listed = ", ".join(map(str, numbers))
        return Example(
            question=(f"Use {listed} once each with {' '.join(self.ops)} "
                      f"to make {target}."),
            answer=expr,
            solution=", ".join(steps) + f". \\boxed{{{expr}}}",
            meta={"numbers": numbers, "target": target, "ops": self.ops})

    def canonical(self, example: Example) -> str:
        numbers = sorted(example.meta["numbers"])
        return f"{','.join(map(str, numbers))}->{example.meta['target']}"

    def score(self, response: str, example: Example) -> float:
        """1.0 iff every box not echoed from the question is a valid expression for it.

        Several boxes may spell different valid expressions; one that is not valid (or a
        disjunction) scores 0, so a wrong candidate cannot ride along with a right one.
        """
        answers = distinct_answers(boxed_answers(response, example.question))
        if not answers or any(map(is_disjunction, answers)):
            return 0.0
        return float(all(_solves(a, example) for a in answers))


def _solves(boxed: str, example: Example) -> bool:
    """Whether one boxed answer uses the numbers once each and hits the target.

    Raises:
      ValueError: for text that is not a plain arithmetic expression.
    """
    if len(boxed) > _MAX_EXPR_LEN:
        return False
    for old, new in _SPELLINGS:
        boxed = boxed.replace(old, new)
    target = int(example.meta["target"])
    sides = boxed.split("=")
    if len(sides) == 2:
        # "expr = target" or "target = expr"; the number side must be right.
        if parse_int(sides[1]) == target:
            boxed = sides[0]
        elif parse_int(sides[0]) == target:
            boxed = sides[1]
        else:
            return False
    elif len(sides) > 2:
        return False
    value, used = evaluate(boxed, example.meta["ops"])
    return value == target and sorted(used) == sorted(example.meta["numbers"])
