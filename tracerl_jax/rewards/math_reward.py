"""Math reward: answer extraction (§7.1) and equivalence judged by math-verify (§7.2).

By default a response must commit to one answer: every final answer it gives (not copied from
the prompt) is judged and all must be right, and an answer written as alternatives scores 0, so a
policy cannot collect the reward by hedging. ``compat="reference"`` keeps the reference's rule
(the last box only).

The reference grades with a Hendrycks-style string stage and sympy; this port judges with the
`math-verify` library instead (DESIGN.md "real verifiers"). Every judgement runs in a worker
process of `MathJudge`, so a pathological expression can be stopped by killing the process
(Q-R2: a timed-out thread would keep computing). Model text is untrusted: the functions here
never raise on its content and never wait on it longer than the timeout.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

# One extraction rule for the whole library (§7.1); the task verifiers use it too.
from tracerl_jax.tasks.answers import (
    _BOXED,
    _GSM8K_MARK,
    boxed_answers,
    distinct_answers,
    extract_boxed,
    gsm8k_answers,
    is_disjunction,
)

__all__ = [
    "NO_ANSWER_SENTINEL",
    "Judgement",
    "MathJudge",
    "MathResult",
    "extract_answer",
    "extract_boxed",
    "extract_gsm8k",
    "score_math",
]

NO_ANSWER_SENTINEL = "Can not extract the answer!"
"""What the reference puts in place of a missing answer (§7.1); our extractors return None."""

_WORKER_PATH = str(pathlib.Path(__file__).with_name("_math_worker.py"))
_COMPAT = ("default", "reference")

Extractor = Callable[[str], "str | None"]


def extract_gsm8k(text: str) -> str | None:
    """Returns the answer after the last ``####`` marker (GSM8K format, the reference's rule).

    `score_math` reads every marker instead (`tracerl_jax.tasks.answers.gsm8k_answers`) unless
    ``compat="reference"``.

    Args:
      text: a model response or a GSM8K reference solution.

    Returns:
      The rest of that line without surrounding whitespace and trailing periods, or None when
      there is no marker or nothing follows it.
    """
    if not isinstance(text, str):
        return None
    pos = text.rfind(_GSM8K_MARK)
    if pos < 0:
        return None
    answer = text[pos + len(_GSM8K_MARK):].split("\n", 1)[0].strip().rstrip(".").strip()
    return answer or None


_EXTRACTORS: dict[str, Extractor] = {"boxed": extract_boxed, "gsm8k": extract_gsm8k}
# What the default (hedging-aware) rule reads for each named extraction: all answers, echoes out.
_ALL_ANSWERS: dict[str, Callable[[str, "str | None"], list[str]]] = {
    "boxed": boxed_answers, "gsm8k": gsm8k_answers}


def _resolve_extract(extract: str | Extractor) -> Extractor:
    if callable(extract):
        return extract
    if isinstance(extract, str) and extract in _EXTRACTORS:
        return _EXTRACTORS[extract]
    raise ValueError(f"extract must be 'boxed', 'gsm8k' or a callable, got {extract!r}")


def extract_answer(text: str, extract: str | Extractor = "boxed") -> str | None:
    """Extracts the final answer of a response with the chosen rule.

    Args:
      text: a model response.
      extract: "boxed" (last ``\\boxed{}``), "gsm8k" (after the last ``####``) or a callable
        mapping the response to an answer string or None.

    Returns:
      The answer, or None when none can be extracted (a raising callable also gives None).
    """
    fn = _resolve_extract(extract)
    try:
        answer = fn(text)
    except Exception:
        return None
    return answer if isinstance(answer, str) else None


@dataclasses.dataclass(frozen=True)
class Judgement:
    """Verdict of math-verify on one (gold, prediction) pair.

    Attributes:
      correct: math-verify's verdict (False on any timeout that decided the outcome or error).
      timed_out: the hard limit killed the worker, or one of math-verify's own soft timeouts
        fired (then `correct` is what math-verify returned regardless).
      error: why the judgement failed, or None.
    """

    correct: bool
    timed_out: bool = False
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class MathResult:
    """Math reward of one response.

    Attributes:
      correct: every answer the response commits to equals the gold answer and the response
        was not truncated.
      extracted: the (last) extracted answer, or None (reference: `NO_ANSWER_SENTINEL`).
      timed_out: a judgement hit a time limit (counts as incorrect unless math-verify still
        found an equal pair).
      truncated: the length-cap rule forced the response to incorrect (§7.4 step 1).
      error: why the response is incorrect other than by its value, or None: a judging error,
        "answer too long", or for a hedged response "hedged: ..." saying how.
      hedged: the response scored 0 for hedging: an answer written as alternatives while the
        gold answer has none, more than 16 different answers, or several different answers of
        which some equal the gold answer and some do not. Count these to see how often a
        policy hedges.
      answers: the different answers the response commits to, in order (one for
        ``compat="reference"`` and for callable extractors).
    """

    correct: bool
    extracted: str | None
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None
    hedged: bool = False
    answers: tuple[str, ...] = ()

    @property
    def reward(self) -> float:
        """1.0 for a correct response, else 0.0 (the `x` of §7.4)."""
        return 1.0 if self.correct else 0.0


class _Worker:
    def __init__(self, python: str, memory_bytes: int):
        self.proc = subprocess.Popen(
            [python, "-u", _WORKER_PATH, str(memory_bytes)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = bytearray()
        self.ready = False
        self.started = time.monotonic()
        self.task: tuple[int, float] | None = None  # (item index, deadline)

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, payload: dict) -> None:
        self.proc.stdin.write((json.dumps(payload) + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def read_lines(self) -> tuple[list[dict], bool]:
        """Returns complete reply lines and whether the worker's stdout reached EOF."""
        eof = False
        while True:
            try:
                chunk = os.read(self.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
        lines = []
        while b"\n" in self.buf:
            line, _, rest = bytes(self.buf).partition(b"\n")
            self.buf = bytearray(rest)
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines, eof

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class MathJudge:
    """A small persistent pool of math-verify worker processes with hard per-item timeouts.

    On a timeout the worker is killed and a fresh one started; the item counts as incorrect.
    Thread-safe (calls are serialised). Use as a context manager or call `close()`.
    """

    def __init__(self, num_workers: int | None = None, *, memory_bytes: int = 4 << 30,
                 python: str = sys.executable, startup_timeout_s: float = 120.0):
        """Configures the pool; workers start on first use.

        Args:
          num_workers: worker processes; defaults to min(2, CPU count).
          memory_bytes: RLIMIT_AS of each worker, so an expression cannot exhaust the host.
          python: interpreter for the workers (needs math-verify importable).
          startup_timeout_s: how long a worker may take to import math-verify.

        Returns:
          None.
        """
        if num_workers is None:
            num_workers = min(2, os.cpu_count() or 1)
        if not isinstance(num_workers, int) or num_workers <= 0:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        if not isinstance(memory_bytes, int) or memory_bytes < 0:
            raise ValueError(f"memory_bytes must be a non-negative int, got {memory_bytes!r}")
        if not startup_timeout_s > 0:
            raise ValueError(f"startup_timeout_s must be positive, got {startup_timeout_s!r}")
        self.num_workers = num_workers
        self.memory_bytes = memory_bytes
        self.python = python
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0  # Workers killed for timeouts or found dead; for monitoring.

    def __enter__(self) -> MathJudge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops all workers."""
        with self._lock:
            self._closed = True
            for w in self._workers:
                w.kill()
            self._workers = []

    def judge(self, golds: Sequence[str], preds: Sequence[str], *, timeout_s: float = 5.0,
              soft_timeout_s: int | None = None) -> list[Judgement]:
        """Judges each (gold, prediction) pair with math-verify.

        Each side is given to ``math_verify.parse`` as written (wrap bare answers in
        ``\\boxed{}``), then ``math_verify.verify(gold, pred)`` decides.

        Args:
          golds: reference texts.
          preds: predicted texts, same length.
          timeout_s: hard wall-clock limit per pair, enforced by killing the worker.
          soft_timeout_s: math-verify's own per-parse / per-comparison limit in whole seconds
            (cheap: the worker survives); default max(1, timeout_s // 3).

        Returns:
          One `Judgement` per pair.
        """
        golds, preds = list(golds), list(preds)
        if len(golds) != len(preds):
            raise ValueError(f"golds and preds must have equal length, got {len(golds)} and "
                             f"{len(preds)}")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
                and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
        if soft_timeout_s is None:
            soft_timeout_s = max(1, int(timeout_s // 3))
        if not isinstance(soft_timeout_s, int) or soft_timeout_s < 1:
            raise ValueError(f"soft_timeout_s must be an int >= 1, got {soft_timeout_s!r}")
        for name, seq in (("golds", golds), ("preds", preds)):
            for i, s in enumerate(seq):
                if not isinstance(s, str):
                    raise ValueError(f"{name}[{i}] must be a str, got {type(s).__name__}")
        # Groups of responses to one prompt repeat answers; judge each distinct pair once.
        unique: dict[tuple[str, str], int] = {}
        order = [unique.setdefault((g, p), len(unique)) for g, p in zip(golds, preds)]
        with self._lock:
            if self._closed:
                raise RuntimeError("MathJudge is closed")
            verdicts = self._run(list(unique), timeout_s, soft_timeout_s)
        return [verdicts[k] for k in order]

    def _spawn(self) -> _Worker:
        return _Worker(self.python, self.memory_bytes)

    def _run(self, pairs: list[tuple[str, str]], timeout_s: float,
             soft: int) -> list[Judgement]:
        if not pairs:
            return []
        results: list[Judgement | None] = [None] * len(pairs)
        todo = deque(range(len(pairs)))
        while len(self._workers) < min(self.num_workers, max(1, len(pairs))):
            self._workers.append(self._spawn())
        remaining = len(pairs)
        while remaining:
            now = time.monotonic()
            for slot, w in enumerate(self._workers):
                if w.task is None and w.ready and todo:
                    idx = todo.popleft()
                    gold, pred = pairs[idx]
                    try:
                        w.send({"id": idx, "gold": gold, "pred": pred, "soft_timeout": soft})
                        w.task = (idx, time.monotonic() + timeout_s)
                    except (BrokenPipeError, OSError):
                        todo.appendleft(idx)
                        self._replace(slot)
            wait = 1.0
            for w in self._workers:
                if w.task is not None:
                    wait = min(wait, w.task[1] - now)
                elif not w.ready:
                    wait = min(wait, 0.05)
            with selectors.DefaultSelector() as sel:
                for w in self._workers:
                    sel.register(w.fileno(), selectors.EVENT_READ, w)
                events = sel.select(max(0.0, wait))
            for key, _ in events:
                w = key.data
                slot = self._workers.index(w)
                lines, eof = w.read_lines()
                for msg in lines:
                    if msg.get("ready"):
                        w.ready = True
                    elif w.task is not None and msg.get("id") == w.task[0]:
                        results[w.task[0]] = Judgement(
                            correct=bool(msg.get("correct")),
                            timed_out=bool(msg.get("soft_timeout")),
                            error=msg.get("error"))
                        remaining -= 1
                        w.task = None
                if eof:
                    if w.task is not None:
                        results[w.task[0]] = Judgement(False, False, "math worker died")
                        remaining -= 1
                        w.task = None
                    elif not w.ready:
                        raise RuntimeError(
                            f"math-verify worker exited during startup (exit code "
                            f"{w.proc.poll()}); is math-verify installed for {self.python}?")
                    self._replace(slot)
            now = time.monotonic()
            for slot, w in enumerate(self._workers):
                if w.task is not None and now >= w.task[1]:
                    results[w.task[0]] = Judgement(
                        False, True, f"hard timeout after {timeout_s:g} s")
                    remaining -= 1
                    w.task = None
                    self._replace(slot)
                elif not w.ready and now - w.started > self.startup_timeout_s:
                    raise RuntimeError(f"math-verify worker did not start within "
                                       f"{self.startup_timeout_s:g} s")
        return [r for r in results if r is not None]

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = self._spawn()
        self.restarts += 1


_default_judge: MathJudge | None = None
_default_lock = threading.Lock()


def _get_default_judge() -> MathJudge:
    global _default_judge
    with _default_lock:
        if _default_judge is None or _default_judge._closed:
            _default_judge = MathJudge()
            atexit.register(_default_judge.close)
        return _default_judge


def _as_boxed(answer: str) -> str:
    return _BOXED + answer + "}"


_MAX_ANSWERS = 16
"""More different answers than this score 0 unjudged (hedged), so one response cannot queue
thousands of judgements."""


def _answers_of(response, prompt: str | None, extract: str | Extractor, extractor: Extractor,
                compat: str) -> tuple[str, ...]:
    """The answers a response commits to under `compat` (see `score_math`)."""
    if not isinstance(response, str):
        return ()
    if compat == "reference" or callable(extract):
        answer = extract_answer(response, extractor)
        if compat == "reference":
            return () if answer is None else (answer,)
        return tuple(distinct_answers([answer] if answer is not None else []))
    return tuple(distinct_answers(_ALL_ANSWERS[extract](response, prompt)))


def score_math(responses: Sequence[str], gold: Sequence[str], *,
               extract: str | Extractor = "boxed", timeout_s: float = 5.0,
               max_tokens: int | None = None, response_lengths: Sequence[int] | None = None,
               max_answer_chars: int = 10_000, judge: MathJudge | None = None,
               prompts: Sequence[str | None] | None = None, compat: str = "default"
               ) -> list[MathResult]:
    """Scores math responses against gold answers (§7.1, §7.2, §7.4 step 1).

    Each answer is wrapped in ``\\boxed{}``, as is the gold answer, and judged by
    ``math_verify.verify(parse(gold), parse(pred))`` in a worker process with a hard timeout.

    Which answers (``compat="default"``): every final answer the response commits to, so that
    hedging cannot earn the reward.

    * "boxed" reads every outermost ``\\boxed{}`` (`tracerl_jax.tasks.answers.boxed_answers`:
      a box nested in a box is part of the outer answer; a ``\\boxed{`` that never closes
      leaves no answer), "gsm8k" every ``####`` line (`gsm8k_answers`); a callable gives one
      answer.
    * Echoes are not the response's own answers: a box (or ``####`` line) that occurs verbatim,
      together with the 24 characters before it, in that response's prompt is left out, so a
      copied few-shot exemplar is not scored; an answer with less text before it is never an
      echo (`tracerl_jax.tasks.answers.is_echo`).
    * Blank answers are dropped and repeats (up to spacing) kept once; each remaining answer is
      judged against the gold answer and the response is correct only if all are. The same
      value written twice, even in different forms (``\\frac12`` and ``0.5``), still scores 1;
      two different values score 0.
    * An answer written as alternatives (``17 \\lor 18``, ``x=17 \\text{ or } x=18``, "either
      ... or", see `is_disjunction`) scores 0 unjudged, unless the gold answer is itself
      written with one.
    * More than 16 different answers score 0 unjudged.
    * `MathResult.hedged` flags the zeros these rules cause: alternatives, too many answers, or
      several answers of which some equal the gold answer and some do not.

    ``compat="reference"`` reproduces the reference: only the last box (or the last ``####``
    line, or the callable's answer) is judged, `prompts` is ignored and nothing is checked for
    hedging.

    Args:
      responses: model outputs.
      gold: gold answers (the answer itself, e.g. MATH500's ``answer`` field or the number
        after ``####`` in GSM8K), same length as `responses`.
      extract: "boxed", "gsm8k" or a callable response -> answer (None when absent).
      timeout_s: hard wall-clock limit per judgement; a timeout counts as incorrect.
      max_tokens: with `response_lengths`, the reference length cap: a response whose length
        is >= max_tokens - 5 is incorrect (truncation penalty).
      response_lengths: response lengths in tokens, same length as `responses`.
      max_answer_chars: a response with a longer answer is incorrect without parsing.
      judge: the worker pool to use; defaults to a shared `MathJudge`.
      prompts: the prompt (e.g. the question, with any few-shot exemplars) of each response,
        same length as `responses`, for leaving out echoed answers; None (or a None entry)
        leaves nothing out.
      compat: "default" (the rules above) or "reference".

    Returns:
      One `MathResult` per response.
    """
    responses, gold = list(responses), list(gold)
    if len(responses) != len(gold):
        raise ValueError(f"responses and gold must have equal length, got {len(responses)} "
                         f"and {len(gold)}")
    if compat not in _COMPAT:
        raise ValueError(f"compat must be one of {_COMPAT}, got {compat!r}")
    extractor = _resolve_extract(extract)
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
    if not isinstance(max_answer_chars, int) or max_answer_chars <= 0:
        raise ValueError(f"max_answer_chars must be a positive int, got {max_answer_chars!r}")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if response_lengths is None:
            raise ValueError("response_lengths is required when max_tokens is given")
    if response_lengths is not None:
        if max_tokens is None:
            raise ValueError("max_tokens is required when response_lengths is given")
        response_lengths = list(response_lengths)
        if len(response_lengths) != len(responses):
            raise ValueError(f"response_lengths must have length {len(responses)}, got "
                             f"{len(response_lengths)}")
    if prompts is None:
        prompts = [None] * len(responses)
    else:
        prompts = list(prompts)
        if len(prompts) != len(responses):
            raise ValueError(f"prompts must have length {len(responses)}, got {len(prompts)}")
        for i, p in enumerate(prompts):
            if p is not None and not isinstance(p, str):
                raise ValueError(f"prompts[{i}] must be a str or None, got {type(p).__name__}")
    for i, g in enumerate(gold):
        if not isinstance(g, str):
            raise ValueError(f"gold[{i}] must be a str, got {type(g).__name__}")

    hedging = compat == "default"
    results: list[MathResult | None] = [None] * len(responses)
    pairs: list[tuple[int, str]] = []  # (response index, answer) to judge against its gold
    committed: list[tuple[str, ...]] = []
    for i, response in enumerate(responses):
        answers = _answers_of(response, prompts[i], extract, extractor, compat)
        committed.append(answers)
        last = answers[-1] if answers else None
        if response_lengths is not None and response_lengths[i] >= max_tokens - 5:
            results[i] = MathResult(False, last, truncated=True, answers=answers)
        elif not answers:
            results[i] = MathResult(False, None)
        elif hedging and len(answers) > _MAX_ANSWERS:
            results[i] = MathResult(False, last, hedged=True, answers=answers,
                                    error=f"hedged: more than {_MAX_ANSWERS} different answers")
        elif any(len(a) > max_answer_chars for a in answers):
            results[i] = MathResult(False, last, error="answer too long", answers=answers)
        elif (hedging and not is_disjunction(gold[i])
              and any(is_disjunction(a) for a in answers)):
            results[i] = MathResult(False, last, hedged=True, answers=answers,
                                    error="hedged: an answer offers alternatives")
        else:
            pairs.extend((i, a) for a in answers)
    if pairs:
        judge = judge if judge is not None else _get_default_judge()
        verdicts = judge.judge([_as_boxed(gold[i]) for i, _ in pairs],
                               [_as_boxed(a) for _, a in pairs], timeout_s=timeout_s)
        by_response: dict[int, list[Judgement]] = {}
        for (i, _), v in zip(pairs, verdicts):
            by_response.setdefault(i, []).append(v)
        for i, vs in by_response.items():
            correct = all(v.correct for v in vs)
            hedged = not correct and any(v.correct for v in vs)
            error = ("hedged: several different answers" if hedged
                     else next((v.error for v in vs if v.error), None))
            results[i] = MathResult(correct, committed[i][-1],
                                    timed_out=any(v.timed_out for v in vs), error=error,
                                    hedged=hedged, answers=committed[i])
    return results  # type: ignore[return-value]
