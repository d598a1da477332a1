"""The shape every built-in task shares: seeded generation, disjoint splits, a verifier."""
from __future__ import annotations

import abc
import dataclasses
import random
from typing import Any, ClassVar, Iterator, Sequence

from tracerl_jax.tasks.example import Example
from tracerl_jax.tasks.splits import check_split, split_of

# How many draws in a row may fail to give a new problem of the requested
# split before the generator concludes the knobs allow no more problems.
_MAX_FRUITLESS_DRAWS = 20_000


class Task(abc.ABC):
    """A procedurally generated, automatically verifiable task.

    Subclasses are frozen dataclasses whose fields are the difficulty knobs.
    They implement ``sample`` (one random problem), ``canonical`` (the text
    that identifies a problem, for deduplication and the split hash) and
    ``score`` (the verifier proper). Everything else is shared.
    """

    name: ClassVar[str]
    # The prompt kind passed to ``Tokenizer.chat_prompt``.
    kind: ClassVar[str] = "math"

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """Draws one problem, ignoring splits.

        Args:
          rng: the stream to draw from.

        Returns:
          The example; ``meta`` holds what ``score`` needs.
        """

    @abc.abstractmethod
    def canonical(self, example: Example) -> str:
        """Returns the text that identifies the problem of ``example``.

        Args:
          example: an example made by ``sample``.

        Returns:
          Equal for two examples that pose the same problem.
        """

    @abc.abstractmethod
    def score(self, response: str, example: Example) -> float:
        """Scores a response; may raise on malformed input (``verify`` guards it).

        Args:
          response: model output text.
          example: the example the response answers.

        Returns:
          A reward in [0, 1].
        """

    def split_key(self, example: Example) -> str:
        """Returns the text whose hash puts ``example`` in a split; by default ``canonical``.

        A task with several problems per underlying item (one function shown through
        different examples) returns the item, so no item is in both splits.

        Args:
          example: an example made by ``sample``.

        Returns:
          Equal for two examples that must share a split.
        """
        return self.canonical(example)

    @property
    def knobs(self) -> dict[str, Any]:
        """The task's difficulty knobs as a plain dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def verify(self, response: str, example: Example) -> float:
        """Scores untrusted model output; never raises.

        Args:
          response: model output text (anything; non-strings score 0).
          example: the example the response answers.

        Returns:
          A reward in [0, 1]; 0 for anything that cannot be parsed.
        """
        if not isinstance(response, str):
            return 0.0
        try:
            value = float(self.score(response, example))
        except Exception:  # untrusted text: any parse failure is a wrong answer
            return 0.0
        return min(max(value, 0.0), 1.0)

    def verify_batch(self, responses: Sequence[Any], examples: Sequence[Example]) -> list[float]:
        """Scores a batch of responses; never raises because of their text.

        Tasks whose verifier has a per-call cost (starting sandboxed programs) override this
        to score the whole batch at once; the default calls ``verify`` on each.

        Args:
          responses: ``N`` model outputs.
          examples: the ``N`` examples they answer.

        Returns:
          ``N`` rewards in [0, 1].
        """
        return [self.verify(r, e) for r, e in zip(responses, examples, strict=True)]

    def iterate(self, split: str, seed: int = 0) -> Iterator[Example]:
        """Yields distinct problems of one split, in a seeded order, without end.

        Args:
          split: ``"train"`` or ``"test"``.
          seed: stream seed; the same (knobs, split, seed) gives the same stream.

        Yields:
          Examples whose ``meta`` also names the task, kind, split and knobs.

        Raises:
          ValueError: for a bad split, or when the knobs allow no further
            distinct problems of that split.
        """
        check_split(split)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        # A string seed goes through SHA-512 in CPython, so streams are stable
        # across processes and platforms (no hash randomisation).
        rng = random.Random(f"{self.name}|{split}|{seed}")
        seen: set[str] = set()
        fruitless = 0
        while True:
            example = self.sample(rng)
            key = self.canonical(example)
            if key in seen or split_of(self.name, self.split_key(example)) != split:
                fruitless += 1
                if fruitless >= _MAX_FRUITLESS_DRAWS:
                    raise ValueError(
                        f"task {self.name!r} with knobs {self.knobs} ran out of distinct"
                        f" {split} problems after {len(seen)}; ask for fewer or make"
                        " the knobs harder")
                continue
            fruitless = 0
            seen.add(key)
            meta = dict(example.meta, task=self.name, kind=self.kind, split=split,
                        knobs=self.knobs)
            yield dataclasses.replace(example, meta=meta)

    def generate(self, split: str, num: int, seed: int = 0) -> list[Example]:
        """Returns the first ``num`` problems of ``iterate(split, seed)``.

        Args:
          split: ``"train"`` or ``"test"``.
          num: how many distinct problems (>= 0).
          seed: stream seed.

        Returns:
          A list of ``num`` examples, deterministic in (knobs, split, seed).

        Raises:
          ValueError: for a bad split or count, or when the knobs allow fewer
            than ``num`` distinct problems in that split.
        """
        if isinstance(num, bool) or not isinstance(num, int) or num < 0:
            raise ValueError(f"num must be an int >= 0, got {num!r}")
        stream = self.iterate(split, seed)
        return [next(stream) for _ in range(num)]


def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    """Raises ValueError unless ``lo <= value <= hi`` for an int knob.

    Args:
      name: the knob's name, for the message.
      value: the knob's value.
      lo: smallest allowed value.
      hi: largest allowed value.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def check_ops(value: Any, allowed: str) -> None:
    """Raises ValueError unless ``value`` is a non-empty set of allowed operators.

    Args:
      value: the ``ops`` knob, a string such as ``"+-*"``.
      allowed: the operators the task supports.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"ops must be a non-empty string of operators from "
                         f"{allowed!r}, got {value!r}")
    bad = sorted(set(value) - set(allowed))
    if bad:
        raise ValueError(f"ops may only contain {allowed!r}, got {bad}")
    if len(set(value)) != len(value):
        raise ValueError(f"ops has repeated operators: {value!r}")
