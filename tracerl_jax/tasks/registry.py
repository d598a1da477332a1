"""Built-in tasks by name."""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from tracerl_jax.tasks.arithmetic import Arithmetic
from tracerl_jax.tasks.base import Task
from tracerl_jax.tasks.codefn import CodeFunction
from tracerl_jax.tasks.countdown import Countdown
from tracerl_jax.tasks.example import Example
from tracerl_jax.tasks.sudoku4 import Sudoku4

_REGISTRY: dict[str, Callable[..., Task]] = {
    Arithmetic.name: Arithmetic,
    Sudoku4.name: Sudoku4,
    Countdown.name: Countdown,
    CodeFunction.name: CodeFunction,
}


def task_names() -> tuple[str, ...]:
    """Returns the registered task names, sorted."""
    return tuple(sorted(_REGISTRY))


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Adds a task so ``get_task(name, **knobs)`` can build it.

    Args:
      name: the registry name; must be new.
      factory: called with the knobs, returns a ``Task``.

    Raises:
      ValueError: if the name is taken.
    """
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def get_task(name: str, **knobs: Any) -> Task:
    """Builds a registered task with the given difficulty knobs.

    Args:
      name: one of ``task_names()``.
      **knobs: the task's knobs (e.g. ``digits=3`` for ``"arithmetic"``);
        omitted knobs take their defaults.

    Returns:
      The task.

    Raises:
      ValueError: for an unknown name, an unknown knob, or a knob out of range.
    """
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(task_names())}"
        ) from None
    try:
        return factory(**knobs)
    except TypeError as e:
        raise ValueError(f"bad knobs for task {name!r}: {e}") from e
    except ValueError as e:
        raise ValueError(f"task {name!r}: {e}") from e


def verify(response: str, example: Example) -> float:
    """Scores a response with the verifier of the task that made ``example``.

    Args:
      response: model output (untrusted; never raises because of it).
      example: an example from a built-in task (``meta["task"]`` names it).

    Returns:
      A reward in [0, 1].

    Raises:
      ValueError: if the example does not come from a registered task.
    """
    return _task_of(example).verify(response, example)


def verify_batch(responses: Sequence[str], examples: Sequence[Example]) -> list[float]:
    """Scores responses with their tasks' verifiers, one ``Task.verify_batch`` call per task.

    A task whose verifier runs programs (``"codefn"``) so sends a whole RL step's responses to
    the sandbox at once instead of one call per response.

    Args:
      responses: ``N`` model outputs (untrusted; never raises because of them).
      examples: the ``N`` examples they answer, each from a built-in task (any mix).

    Returns:
      ``N`` rewards in [0, 1], in order.

    Raises:
      ValueError: for unequal lengths, or an example not from a registered task.
    """
    responses, examples = list(responses), list(examples)
    if len(responses) != len(examples):
        raise ValueError(f"responses and examples must have equal length, got {len(responses)} "
                         f"and {len(examples)}")
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        _task_of(e)  # names the bad example before anything is scored
        key = json.dumps([e.meta.get("task"), dict(e.meta.get("knobs", {}))], sort_keys=True)
        groups.setdefault(key, []).append(i)
    rewards = [0.0] * len(responses)
    for idx in groups.values():
        task = _task_of(examples[idx[0]])
        scores = task.verify_batch([responses[i] for i in idx], [examples[i] for i in idx])
        for i, s in zip(idx, scores):
            rewards[i] = float(s)
    return rewards


def _task_of(example: Example) -> Task:
    """The task (with its knobs) that made ``example``; ValueError if none is registered."""
    name = example.meta.get("task")
    if name not in _REGISTRY:
        raise ValueError(
            f"example's meta['task']={name!r} is not a registered task; "
            "score data set examples with tracerl_jax.rewards instead")
    return _REGISTRY[name](**example.meta.get("knobs", {}))
