"""Code functions: write a small Python function from its examples; hidden tests in the sandbox.

``f(1) = 3, f(2) = 5, f(4) = 9`` -> ``\\boxed{2*x+1}``, i.e. ``def f(x): return 2*x+1``.

The functions come from a family of short integer templates (the ``templates`` knob):

=========== ============================ ==================================================
template    expression                   parameters
=========== ============================ ==================================================
linear      ``a*x+b``                    a in [-max_coef, max_coef] \\ {0}, b in [-max_const, max_const]
quadratic   ``x*x+a*x+b``                a in [-max_coef, max_coef], b as above
mod         ``x%m+b``                    m in [2, max(2, max_input // 2)], b as above
minmax      ``max(x,c)``, ``min(x,c)``   c in [1, max_input - 1]
pair        ``a*x+b*y+c``                a, b in [-max_coef, max_coef] \\ {0}, c as b above
=========== ============================ ==================================================

Inputs are integers in ``[0, max_input]`` (pairs of them for ``pair``). A problem shows
``shown`` input/output examples and keeps ``hidden`` other inputs as its tests. The shown
inputs are drawn until they *identify* the function: every rival -- a shape of an enabled
template of the same arity (the template without its constant term, coefficients in range)
plus *any* integer constant -- that fits the shown examples also gives the hidden outputs.
So ``f(4) = -8, f(5) = -7, f(6) = -6`` is never posed for ``x%4-8``, since ``x-12`` fits it.
Functions equal on the whole input range are kept once (the first template listed above
wins). The train/test split is by function (``split_key`` is the expression), so a held-out
problem asks for a function no training problem shows; a function may appear in several
problems of its split, through different shown examples (``canonical`` is the question).

Answer format. The response commits to the function's return expression in ``\\boxed{...}``
(a few tokens, which is what a tiny model with a 24-48 token budget can write; the shipped
task tokenizer spells Python but one character per token), and the verifier runs
``def f(x):\\n    return (<expression>)`` -- or ``def f(x, y)`` -- against the hidden tests.
A fenced ```` ```python ```` block defining ``f`` (what a larger model writes) is accepted as
a candidate too. The worked ``solution`` of an example is just ``\\boxed{<expression>}``.

Reward. 1.0 iff every candidate the response commits to passes every hidden test, else 0.0
(no partial credit: a pass fraction would pay a program that special-cases some inputs, and
0/1 keeps ``accuracy`` meaning "solved" as for the other built-in tasks). As in the other
tasks' verifiers (:mod:`tracerl_jax.tasks.answers`), several different candidates (boxes, or
a box and a code block) must all be right, so hedging does not pay; more than
``MAX_CANDIDATES`` score 0 unexecuted. A box that is not a single Python expression is
rejected before execution (``ast.parse`` only parses). Everything that runs, runs in the
library's sandbox (:func:`tracerl_jax.rewards.score_code`, a shared
:class:`~tracerl_jax.rewards.LocalSandbox` by default), one call for a whole batch of
responses (:meth:`CodeFunction.verify_batch`), with identical programs run once; a program
that does not define ``f``, crashes, prints instead of returning or runs past the time limit
fails its tests.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from tracerl_jax.tasks.answers import boxed_answers, distinct_answers
from tracerl_jax.tasks.base import Task, check_int
from tracerl_jax.tasks.example import Example

TEMPLATES = ("linear", "quadratic", "mod", "minmax", "pair")
# Arity of each template's function.
_ARITY = {"linear": 1, "quadratic": 1, "mod": 1, "minmax": 1, "pair": 2}
MAX_CANDIDATES = 4
"""Most distinct answers (boxes plus a code block) a response may commit to; more score 0."""
_MAX_EXPR_LEN = 200
# Seconds per test in the reference's budget: a function job gets this plus 2 s in all
# (`rewards.make_job`), enough for a few integer asserts, short enough that a looping
# program costs one worker a few seconds.
TEST_TIME_LIMIT = 1.0
# Draws of shown inputs for one function before it is given up as not identifiable by
# `shown` examples, and functions drawn before the knobs are declared unusable.
_INPUT_TRIES = 64
_FUNCTION_TRIES = 1000


def _affine(terms: Sequence[tuple[int, str]], const: int) -> str:
    """Writes ``sum(coef*var) + const`` the short way: ``2*x-y+3``, ``-x``, ``x*x-4``.

    Args:
      terms: (coefficient, variable text) pairs; zero coefficients are left out.
      const: the constant term (left out when 0, unless nothing else is written).

    Returns:
      The expression text, no spaces.
    """
    out = ""
    for coef, var in terms:
        if coef == 0:
            continue
        mag = var if abs(coef) == 1 else f"{abs(coef)}*{var}"
        out += ("-" if coef < 0 else ("+" if out else "")) + mag
    if const or not out:
        out += f"{const:+d}" if out else str(const)
    return out


def _shapes(template: str, max_coef: int, max_input: int):
    """Yields ``(expression of the constant, python function)`` of every shape of a template.

    A shape is a template's function without its constant term; ``expression(c)`` writes the
    shape plus ``c``. ``minmax`` has no constant term and only admits ``c = 0``.
    """
    coefs = [a for a in range(-max_coef, max_coef + 1) if a]
    if template == "linear":
        for a in coefs:
            yield (lambda c, a=a: _affine([(a, "x")], c)), (lambda x, a=a: a * x)
    elif template == "quadratic":
        for a in [0] + coefs:
            yield (lambda c, a=a: _affine([(1, "x*x"), (a, "x")], c)), (lambda x, a=a: x * x + a * x)
    elif template == "mod":
        for m in range(2, max(2, max_input // 2) + 1):
            yield (lambda c, m=m: _affine([(1, f"x%{m}")], c)), (lambda x, m=m: x % m)
    elif template == "minmax":
        for name, fn in (("max", max), ("min", min)):
            for k in range(1, max_input):
                yield (lambda c, name=name, k=k: f"{name}(x,{k})" if c == 0 else None), \
                    (lambda x, fn=fn, k=k: fn(x, k))
    elif template == "pair":
        for a in coefs:
            for b in coefs:
                yield (lambda c, a=a, b=b: _affine([(a, "x"), (b, "y")], c)), (lambda x, y, a=a, b=b: a * x + b * y)
    else:  # __post_init__ rejects other names
        raise ValueError(f"unknown template {template!r}")


@dataclasses.dataclass(frozen=True)
class _Family:
    """All functions of one arity: the drawable ones and the shapes that identify them.

    Attributes:
      inputs: the D input tuples, in a fixed order.
      exprs: the F drawable expressions (no two functions equal on all of ``inputs``).
      templates: the template of each drawable function, ``[F]``.
      values: int64 ``[F, D]``, drawable function ``i`` at input ``j``.
      shapes: int64 ``[S, D]``, every shape of the enabled templates (constant term left
        out); a shape plus *any* integer constant is a rival answer when checking that the
        shown examples identify a function.
    """

    inputs: tuple[tuple[int, ...], ...]
    exprs: tuple[str, ...]
    templates: tuple[str, ...]
    values: np.ndarray
    shapes: np.ndarray


@dataclasses.dataclass(frozen=True)
class CodeFunction(Task):
    """``Write f: f(1) = 3, f(2) = 5, f(4) = 9.`` -> ``\\boxed{2*x+1}``, verified by running it.

    Attributes:
      templates: comma-separated templates to draw from, a subset of ``TEMPLATES``
        (``"linear,mod"``); each problem picks a template uniformly, then a function of it.
      max_coef: largest absolute coefficient (``a``, ``b`` of ``pair``).
      max_const: largest absolute constant term.
      max_input: inputs are drawn from ``[0, max_input]``.
      shown: examples shown in the prompt (at least 2; ``quadratic`` needs 3).
      hidden: hidden tests, at inputs not shown.
    """

    name = "codefn"

    templates: str = "linear,quadratic,mod,minmax,pair"
    max_coef: int = 5
    max_const: int = 9
    max_input: int = 9
    shown: int = 3
    hidden: int = 4

    def __post_init__(self):
        if not isinstance(self.templates, str) or not self.templates.strip():
            raise ValueError(f"templates must be a non-empty comma-separated string from {TEMPLATES}, "
                             f"got {self.templates!r}")
        names = [t.strip() for t in self.templates.split(",")]
        bad = sorted(set(names) - set(TEMPLATES))
        if bad:
            raise ValueError(f"templates may only name {TEMPLATES}, got {bad}")
        if len(set(names)) != len(names):
            raise ValueError(f"templates has repeated names: {self.templates!r}")
        check_int("max_coef", self.max_coef, 1, 20)
        check_int("max_const", self.max_const, 0, 99)
        check_int("max_input", self.max_input, 3, 99)
        check_int("shown", self.shown, 2, 8)
        check_int("hidden", self.hidden, 1, 20)
        if "quadratic" in names and self.shown < 3:
            raise ValueError(f"shown must be >= 3 with the quadratic template (3 points fix x*x+a*x+b), "
                             f"got {self.shown}")
        if any(_ARITY[t] == 1 for t in names) and self.shown + self.hidden > self.max_input + 1:
            raise ValueError(f"shown + hidden ({self.shown} + {self.hidden}) must be <= max_input + 1 "
                             f"= {self.max_input + 1}, the number of distinct inputs")

    @property
    def template_names(self) -> tuple[str, ...]:
        """The enabled templates, in ``TEMPLATES`` order."""
        names = {t.strip() for t in self.templates.split(",")}
        return tuple(t for t in TEMPLATES if t in names)

    @functools.cached_property
    def _families(self) -> dict[int, _Family]:
        """The function family of each arity in use, with every function's values."""
        out = {}
        for arity in sorted({_ARITY[t] for t in self.template_names}):
            axis = range(self.max_input + 1)
            inputs = tuple((x,) for x in axis) if arity == 1 else tuple((x, y) for x in axis for y in axis)
            exprs, temps, rows, seen, shapes = [], [], [], set(), []
            for t in self.template_names:
                if _ARITY[t] != arity:
                    continue
                consts = range(-self.max_const, self.max_const + 1) if t != "minmax" else (0,)
                for expr_of, fn in _shapes(t, self.max_coef, self.max_input):
                    shape = tuple(fn(*args) for args in inputs)
                    shapes.append(shape)
                    for c in consts:
                        row = tuple(v + c for v in shape)
                        if row not in seen:  # equal on every input: the same function, kept once
                            seen.add(row)
                            exprs.append(expr_of(c))
                            temps.append(t)
                            rows.append(row)
            out[arity] = _Family(inputs, tuple(exprs), tuple(temps), np.asarray(rows, np.int64),
                                 np.unique(np.asarray(shapes, np.int64), axis=0))
        return out

    @functools.cached_property
    def _by_template(self) -> dict[str, list[int]]:
        """Indices of each template's drawable functions in its family."""
        return {t: [i for i, u in enumerate(self._families[_ARITY[t]].templates) if u == t]
                for t in self.template_names}

    def sample(self, rng: random.Random) -> Example:
        for _ in range(_FUNCTION_TRIES):
            template = rng.choice(self.template_names)
            fam = self._families[_ARITY[template]]
            index = rng.choice(self._by_template[template])
            for _ in range(_INPUT_TRIES):
                cols = rng.sample(range(len(fam.inputs)), self.shown + self.hidden)
                shown, hidden = sorted(cols[:self.shown]), sorted(cols[self.shown:])
                # A rival is a shape plus a constant c that fits the shown examples (its offset
                # from f is c at every shown input); each rival must give f's hidden outputs.
                offset = fam.shapes - fam.values[index][None, :]
                fits = np.all(offset[:, shown] == offset[:, shown[:1]], axis=1)
                if np.all(offset[fits][:, hidden] == offset[fits][:, shown[:1]]):
                    return self._example(fam, index, shown, hidden)
        raise ValueError(f"task {self.name!r} with knobs {self.knobs}: could not draw shown inputs that "
                         f"identify a function in {_FUNCTION_TRIES} tries; show more examples")

    def _example(self, fam: _Family, index: int, shown: list[int], hidden: list[int]) -> Example:
        expr = fam.exprs[index]
        args = "x" if len(fam.inputs[0]) == 1 else "x, y"

        def call(col: int) -> str:
            return "f(" + ", ".join(map(str, fam.inputs[col])) + ")"

        listed = ", ".join(f"{call(c)} = {fam.values[index, c]}" for c in shown)
        tests = [f"assert {call(c)} == {fam.values[index, c]}" for c in hidden]
        return Example(
            question=f"Write f: {listed}.",
            answer=expr,
            solution=f"\\boxed{{{expr}}}",
            meta={"expression": expr, "template": fam.templates[index], "args": args, "tests": tests})

    def canonical(self, example: Example) -> str:
        return example.question

    def split_key(self, example: Example) -> str:
        # By function: a held-out problem asks for a function no training problem shows.
        return example.meta["expression"]

    def score(self, response: str, example: Example) -> float:
        """1.0 iff every candidate of the response passes every hidden test (one sandbox call)."""
        return self.verify_batch([response], [example])[0]

    def verify_batch(self, responses: Sequence[Any], examples: Sequence[Example], *,
                     executor=None) -> list[float]:
        """Scores a batch of responses with one sandbox call (§7.3); never raises on their text.

        Args:
          responses: ``N`` model outputs (untrusted; non-strings score 0).
          examples: the ``N`` examples they answer (made by this task).
          executor: where programs run (a :class:`tracerl_jax.rewards.Executor`); default the
            shared :class:`~tracerl_jax.rewards.LocalSandbox`.

        Returns:
          ``N`` rewards in {0.0, 1.0}.

        Raises:
          ValueError: when ``responses`` and ``examples`` differ in length.
        """
        from tracerl_jax.rewards import CodeTask, score_code  # lazy: tasks import without the sandbox

        responses, examples = list(responses), list(examples)
        if len(responses) != len(examples):
            raise ValueError(f"responses and examples must have equal length, got {len(responses)} "
                             f"and {len(examples)}")
        owner, programs, tasks = [], [], []
        rewards = [0.0] * len(responses)
        for i, (response, example) in enumerate(zip(responses, examples)):
            found = candidate_programs(response, example)
            if found:
                task = CodeTask("function", tests=tuple(example.meta["tests"]))
                owner += [i] * len(found)
                programs += [f"```python\n{p}```" for p in found]
                tasks += [task] * len(found)
                rewards[i] = 1.0
        if programs:
            results = score_code(programs, tasks, executor=executor, test_time_limit=TEST_TIME_LIMIT)
            for i, result in zip(owner, results):
                if not (result.passed and all(result.passed)):
                    rewards[i] = 0.0
        return rewards


def candidate_programs(response: Any, example: Example) -> list[str]:
    """The programs a response commits to, ready for the sandbox; no execution happens here.

    Each distinct ``\\boxed{}`` expression becomes ``def f(<args>):\\n    return (<expr>)``;
    a fenced python block is taken as written. An empty list means the response scores 0
    without running anything: no candidate, a box that is not one Python expression, or more
    than ``MAX_CANDIDATES`` candidates (hedging).

    Args:
      response: a model output (any value; a non-string has no candidates).
      example: the example it answers (``meta["args"]`` is ``"x"`` or ``"x, y"``).

    Returns:
      The programs, each ending in a newline.
    """
    if not isinstance(response, str):
        return []
    from tracerl_jax.rewards import extract_code  # lazy: tasks import without the sandbox

    programs = []
    for expr in distinct_answers(boxed_answers(response, example.question)):
        expr = expr.strip()
        if len(expr) > _MAX_EXPR_LEN or "\n" in expr or "\r" in expr:
            return []
        try:
            ast.parse(expr, mode="eval")  # parses only: a box must be one expression
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return []
        programs.append(f"def f({example.meta['args']}):\n    return ({expr})\n")
    code = extract_code(response)
    if code is not None and code.strip():
        programs.append(code if code.endswith("\n") else code + "\n")
    programs = list(dict.fromkeys(programs))
    return programs if len(programs) <= MAX_CANDIDATES else []
