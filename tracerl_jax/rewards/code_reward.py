"""Code reward (§7.3): extract the last python block, run it against the task's tests.

Differences from the reference, each on purpose:

* execution is sandboxed (`sandbox.LocalSandbox` by default, or any `Executor`);
* ``SystemExit`` fails, in the program body (all tests) and in a test (that test) (Q-R1);
* a response without a python block is not executed at all; every test fails, exactly as the
  reference's sentinel program would.

Kept for parity: the reward is the number of passed tests (Q-R4), stdio output is compared
after collapsing all whitespace (Q-R3), function tasks get ``test_time_limit + 2`` seconds for
the whole (program, tests) pair and stdio cases ``test_time_limit`` each, and a timeout or crash
of a function task fails all of its tests.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import threading
from collections.abc import Sequence
from typing import Any, Literal

from tracerl_jax.rewards.executor import ExecJob, ExecResult, Executor
from tracerl_jax.rewards.sandbox import LocalSandbox

__all__ = [
    "NO_CODE_SENTINEL",
    "CodeResult",
    "CodeTask",
    "extract_code",
    "make_job",
    "score_code",
]

NO_CODE_SENTINEL = "We can not extract the code in the output."
"""Stands for a missing code block in logs; `extract_code` returns None instead."""

_FENCE = "```"
_PYTHON_TAGS = ("python", "py", "python3")


def extract_code(text: str) -> str | None:
    """Returns the body of the last closed fenced python block in `text`.

    Fences pair up in order, as in Markdown: the first ``` opens a block, the next closes it.
    A block counts as python when its info string is "python", "py" or "python3" (any case).
    An unclosed final block (a truncated generation) is ignored.

    Args:
      text: a model response (for function tasks, with the task's prefix in front).

    Returns:
      The code, or None when there is no python block (the reference substitutes a sentinel
      program that fails every test).
    """
    if not isinstance(text, str):
        return None
    found = None
    pos = 0
    while True:
        start = text.find(_FENCE, pos)
        if start < 0:
            return found
        line_end = text.find("\n", start + len(_FENCE))
        if line_end < 0:
            return found
        end = text.find(_FENCE, line_end + 1)
        if end < 0:
            return found
        tag = text[start + len(_FENCE):line_end].strip().lower()
        if tag in _PYTHON_TAGS:
            found = text[line_end + 1:end]
        pos = end + len(_FENCE)


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """A programming task with its tests.

    Attributes:
      kind: "function" (assert-style `tests`) or "stdio" (`inputs` / `outputs` cases).
      tests: test statements, each passing when it raises nothing (function tasks).
      inputs: stdin of each case (stdio tasks).
      outputs: expected stdout of each case (stdio tasks).
      prefix: text prepended to the response before extraction (function tasks), e.g. the
        start of a code block with the function signature.
    """

    kind: Literal["function", "stdio"]
    tests: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    prefix: str = ""

    def __post_init__(self):
        for name in ("tests", "inputs", "outputs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.kind not in ("function", "stdio"):
            raise ValueError(f"kind must be 'function' or 'stdio', got {self.kind!r}")
        if self.kind == "stdio" and len(self.inputs) != len(self.outputs):
            raise ValueError(f"inputs and outputs must have equal length, got "
                             f"{len(self.inputs)} and {len(self.outputs)}")
        if not isinstance(self.prefix, str):
            raise ValueError(f"prefix must be a str, got {type(self.prefix).__name__}")

    @property
    def num_tests(self) -> int:
        """Number of tests or cases."""
        return len(self.tests) if self.kind == "function" else len(self.inputs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeTask:
        """Builds a task from a dataset record.

        Accepts the reference's field names: ``test_method`` ("function" or "stdio"),
        ``test_list`` (function), ``test_input`` / ``test_output`` (stdio) and ``prefix``.

        Args:
          d: the record.

        Returns:
          The task.
        """
        kind = d.get("kind", d.get("test_method"))
        if kind == "function":
            return cls("function", tests=tuple(d.get("tests", d.get("test_list", ()))),
                       prefix=d.get("prefix", "") or "")
        if kind == "stdio":
            return cls("stdio", inputs=tuple(d.get("inputs", d.get("test_input", ()))),
                       outputs=tuple(d.get("outputs", d.get("test_output", ()))))
        raise ValueError(f"record needs test_method/kind 'function' or 'stdio', got {kind!r}")


@dataclasses.dataclass(frozen=True)
class CodeResult:
    """Code reward of one response.

    Attributes:
      code: the program that ran, or None when the response had no python block.
      passed: one bool per test.
      statuses: one word per test (see `ExecResult.statuses`; "no_code" without a block).
      error: a job-level error (no code, program exception, timeout, ...), or None.
      timed_out: whether a time limit was hit.
    """

    code: str | None
    passed: tuple[bool, ...]
    statuses: tuple[str, ...]
    error: str | None = None
    timed_out: bool = False

    @property
    def num_passed(self) -> int:
        """Passed tests; the reference's reward (Q-R4)."""
        return sum(self.passed)

    @property
    def num_tests(self) -> int:
        """Number of tests."""
        return len(self.passed)

    @property
    def pass_fraction(self) -> float:
        """Passed over all tests; 0.0 without tests."""
        return self.num_passed / self.num_tests if self.passed else 0.0

    @property
    def reward(self) -> float:
        """The reference reward: the pass count (equivalent to the fraction once z-scored)."""
        return float(self.num_passed)


_default_sandbox: LocalSandbox | None = None
_default_lock = threading.Lock()


def _get_default_sandbox() -> LocalSandbox:
    global _default_sandbox
    with _default_lock:
        if _default_sandbox is None or _default_sandbox._closed:
            _default_sandbox = LocalSandbox()
            atexit.register(_default_sandbox.close)
        return _default_sandbox


def make_job(program: str, task: CodeTask, test_time_limit: float = 1.0) -> ExecJob:
    """Builds the `ExecJob` that runs `program` against `task` with the reference's budgets.

    Args:
      program: the extracted program.
      task: the task.
      test_time_limit: per-case seconds (stdio); function tasks get this plus 2 s in total.

    Returns:
      The job.
    """
    if task.kind == "function":
        return ExecJob(program, "function", tests=task.tests, timeout_s=test_time_limit + 2.0)
    return ExecJob(program, "stdio", inputs=task.inputs, expected_outputs=task.outputs,
                   timeout_s=test_time_limit)


def score_code(responses: Sequence[str], tasks: Sequence[CodeTask], *,
               executor: Executor | None = None, test_time_limit: float = 1.0
               ) -> list[CodeResult]:
    """Scores code responses by running them against their tasks' tests (§7.3).

    Args:
      responses: model outputs.
      tasks: the task of each response, same length.
      executor: where programs run; defaults to a shared `LocalSandbox`.
      test_time_limit: the reference's ``test_time_limit`` in seconds (default 1).

    Returns:
      One `CodeResult` per response; `reward` is the pass count (Q-R4).
    """
    responses, tasks = list(responses), list(tasks)
    if len(responses) != len(tasks):
        raise ValueError(f"responses and tasks must have equal length, got {len(responses)} "
                         f"and {len(tasks)}")
    for i, t in enumerate(tasks):
        if not isinstance(t, CodeTask):
            raise ValueError(f"tasks[{i}] must be a CodeTask, got {type(t).__name__}")
    if not (isinstance(test_time_limit, (int, float)) and math.isfinite(test_time_limit)
            and test_time_limit > 0):
        raise ValueError(f"test_time_limit must be a positive finite number, got "
                         f"{test_time_limit!r}")
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError("executor must have a run(jobs) method")

    results: list[CodeResult | None] = [None] * len(responses)
    job_of: dict[ExecJob, int] = {}
    jobs: list[ExecJob] = []
    pending: list[tuple[int, str, int]] = []
    for i, (response, task) in enumerate(zip(responses, tasks)):
        text = response if isinstance(response, str) else ""
        code = extract_code(task.prefix + text if task.kind == "function" else text)
        if code is None:
            n = task.num_tests
            results[i] = CodeResult(None, (False,) * n, ("no_code",) * n,
                                    error="no python code block")
            continue
        job = make_job(code, task, test_time_limit)
        # Identical programs for the same task (common within a group) run once.
        if job not in job_of:
            job_of[job] = len(jobs)
            jobs.append(job)
        pending.append((i, code, job_of[job]))
    if jobs:
        runner = executor if executor is not None else _get_default_sandbox()
        outcomes: list[ExecResult] = runner.run(jobs)
        for i, code, k in pending:
            r = outcomes[k]
            results[i] = CodeResult(code, tuple(r.passed), tuple(r.statuses), error=r.error,
                                    timed_out=r.timed_out)
    return results  # type: ignore[return-value]
