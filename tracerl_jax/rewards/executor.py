"""The executor interface: jobs (a program plus its tests), results, and `Executor`.

One *job* is a program plus its tests. `function` jobs run the program and all of their
assert-style tests in one process; `stdio` jobs run the program once per test case with the case
input on stdin and compare stdout after collapsing whitespace (Q-R3). An `Executor` turns jobs
into results: `sandbox.LocalSandbox` runs them in isolated processes on this machine,
`remote.HTTPExecutor` sends them to a sandbox service. Both are JSON-serialisable so a job can
cross a process or network boundary unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["ExecJob", "ExecResult", "Executor", "JobKind", "outputs_match"]

JobKind = Literal["function", "stdio"]


def outputs_match(actual: str, expected: str) -> bool:
    """Compares program output with the expected output the way the reference does (Q-R3).

    Every run of whitespace, newlines included, counts as one space, and leading or trailing
    whitespace is ignored.

    Args:
      actual: what the program printed.
      expected: the expected output of the test case.

    Returns:
      True when the two agree after collapsing whitespace.
    """
    return actual.split() == expected.split()


@dataclasses.dataclass(frozen=True)
class ExecJob:
    """One program and its tests.

    Attributes:
      program: Python source to run.
      kind: "function" (the program, then each statement of `tests`, in one process; a test
        passes when it raises nothing) or "stdio" (one process per case; a case passes when the
        program exits with status 0 and its stdout matches, see `outputs_match`).
      tests: assert-style test snippets (function jobs).
      inputs: stdin text of each case (stdio jobs).
      expected_outputs: expected stdout of each case (stdio jobs).
      timeout_s: wall-clock budget of the whole job (function) or of each case (stdio).
    """

    program: str
    kind: JobKind = "function"
    tests: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    expected_outputs: tuple[str, ...] = ()
    timeout_s: float = 3.0

    def __post_init__(self):
        object.__setattr__(self, "tests", tuple(self.tests))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "expected_outputs", tuple(self.expected_outputs))
        if not isinstance(self.program, str):
            raise ValueError(f"program must be a str, got {type(self.program).__name__}")
        if self.kind not in ("function", "stdio"):
            raise ValueError(f"kind must be 'function' or 'stdio', got {self.kind!r}")
        if not all(isinstance(t, str) for t in self.tests + self.inputs + self.expected_outputs):
            raise ValueError("tests, inputs and expected_outputs must contain str only")
        if self.kind == "stdio" and len(self.inputs) != len(self.expected_outputs):
            raise ValueError(
                f"inputs and expected_outputs must have equal length, got {len(self.inputs)} "
                f"and {len(self.expected_outputs)}")
        if self.kind == "stdio" and self.tests:
            raise ValueError("tests is for function jobs; stdio jobs use inputs/expected_outputs")
        if self.kind == "function" and (self.inputs or self.expected_outputs):
            raise ValueError("inputs/expected_outputs are for stdio jobs; use tests")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s)
                and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive finite number, got {self.timeout_s!r}")

    @property
    def num_tests(self) -> int:
        """Number of tests (function) or cases (stdio)."""
        return len(self.tests) if self.kind == "function" else len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (see `from_dict`)."""
        d = dataclasses.asdict(self)
        for k in ("tests", "inputs", "expected_outputs"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExecJob:
        """Builds a job from `to_dict` output; raises ValueError on malformed input.

        Args:
          d: a mapping with the fields of `ExecJob`.

        Returns:
          The validated job.
        """
        if not isinstance(d, dict):
            raise ValueError(f"job must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"job has unknown fields {sorted(unknown)}")
        kw = dict(d)
        for k in ("tests", "inputs", "expected_outputs"):
            if k in kw:
                if not isinstance(kw[k], list):
                    raise ValueError(f"job field {k} must be a list")
                kw[k] = tuple(kw[k])
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one `ExecJob`.

    Attributes:
      passed: one bool per test/case. For function jobs a timeout, a crash or a program-level
        exception fails every test, as in the reference (§7.3).
      statuses: one word per test: "passed", "failed", "wrong_answer", "runtime_error",
        "program_error", "timeout", "output_limit", "crashed", "not_run" or "sandbox_error".
      details: an error message per test, or None.
      error: a job-level error (program exception, timeout, crash, sandbox failure) or None.
      timed_out: whether any process of the job hit its wall-clock limit.
      outputs: stdout kept for debugging (first 4096 characters): one entry per case for stdio
        jobs, one entry for function jobs.
      isolation: what the sandbox of the first process managed to set up (see
        `LocalSandbox.probe`); empty when not reported.
      wall_s: seconds spent on the job's processes, summed.
    """

    passed: tuple[bool, ...]
    statuses: tuple[str, ...]
    details: tuple[str | None, ...] = ()
    error: str | None = None
    timed_out: bool = False
    outputs: tuple[str, ...] = ()
    isolation: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def num_passed(self) -> int:
        """Number of passed tests (the reference reward, Q-R4)."""
        return sum(self.passed)

    @property
    def num_tests(self) -> int:
        """Number of tests of the job."""
        return len(self.passed)

    @property
    def pass_fraction(self) -> float:
        """Passed tests over all tests; 0.0 for a job without tests."""
        return self.num_passed / self.num_tests if self.passed else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (see `from_dict`)."""
        d = dataclasses.asdict(self)
        for k in ("passed", "statuses", "details", "outputs"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExecResult:
        """Rebuilds a result from `to_dict` output.

        Args:
          d: a mapping with the fields of `ExecResult`.

        Returns:
          The result.
        """
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        for k in ("passed", "statuses", "details", "outputs"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


@runtime_checkable
class Executor(Protocol):
    """Anything that runs `ExecJob`s: the local sandbox, a remote service, a test double."""

    def run(self, jobs: Sequence[ExecJob]) -> list[ExecResult]:
        """Runs the jobs and returns one result per job, in order.

        Args:
          jobs: the jobs to run.

        Returns:
          One `ExecResult` per job, in the order of `jobs`.
        """
        ...
