"""Multi-digit integer arithmetic with a short step-by-step solution."""
from __future__ import annotations

import dataclasses
import random

from tracerl_jax.tasks.answers import (boxed_answers, distinct_answers,
                                       is_disjunction, parse_int)
from tracerl_jax.tasks.base import Task, check_int, check_ops
from tracerl_jax.tasks.example import Example


def evaluate_steps(numbers: list[int], ops: list[str]) -> tuple[int, list[str]]:
    """Evaluates ``n0 op0 n1 op1 ...`` with the usual precedence, step by step.

    Multiplications are done first, left to right, then additions and
    subtractions, left to right; each binary operation is one step.

    Args:
      numbers: the operands, ``len(ops) + 1`` of them.
      ops: operators among ``+ - *``.

    Returns:
      The value and the steps as ``"a*b=c"`` strings, in evaluation order.
    """
    steps = []
    vals, pending = [numbers[0]], []
    for op, x in zip(ops, numbers[1:]):
        if op == "*":
            product = vals[-1] * x
            steps.append(f"{vals[-1]}*{x}={product}")
            vals[-1] = product
        else:
            vals.append(x)
            pending.append(op)
    total = vals[0]
    for op, x in zip(pending, vals[1:]):
        new = total + x if op == "+" else total - x
        steps.append(f"{total}{op}{x}={new}")
        total = new
    return total, steps


@dataclasses.dataclass(frozen=True)
class Arithmetic(Task):
    """``Compute 12+34*2.`` -> ``34*2=68, 12+68=80. \\boxed{80}``.

    Attributes:
      digits: digits of every operand (1 allows 0-9; more means no leading 0).
      operands: number of operands (so ``operands - 1`` steps).
      ops: the operators to draw from, a subset of ``"+-*"``.
    """

    name = "arithmetic"

    digits: int = 2
    operands: int = 2
    ops: str = "+-*"

    def __post_init__(self):
        check_int("digits", self.digits, 1, 12)
        check_int("operands", self.operands, 2, 8)
        check_ops(self.ops, "+-*")

    def sample(self, rng: random.Random) -> Example:
        lo = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        numbers = [rng.randint(lo, 10**self.digits - 1)
                   for _ in range(self.operands)]
        ops = [rng.choice(self.ops) for _ in range(self.operands - 1)]
        expr = str(numbers[0]) + "".join(f"{o}{x}" for o, x in zip(ops, numbers[1:]))
        value, steps = evaluate_steps(numbers, ops)
        return Example(
            question=f"Compute {expr}.",
            answer=str(value),
            solution=", ".join(steps) + f". \\boxed{{{value}}}",
            meta={"expression": expr})

    def canonical(self, example: Example) -> str:
        return example.meta["expression"]

    def score(self, response: str, example: Example) -> float:
        """1.0 iff every box not echoed from the question holds the answer (as an integer)."""
        answers = distinct_answers(boxed_answers(response, example.question))
        if not answers or any(map(is_disjunction, answers)):
            return 0.0
        want = int(example.answer)
        return float(all(parse_int(a) == want for a in answers))
