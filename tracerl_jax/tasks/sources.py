"""One entry point for every named source of examples."""
from __future__ import annotations

from tracerl_jax.tasks.example import Example
from tracerl_jax.tasks.readers import PathLike, load_gsm8k, load_math500, load_reference
from tracerl_jax.tasks.registry import get_task, task_names
from tracerl_jax.tasks.splits import check_split

SHIPPED = ("math500", "gsm8k")


def load_examples(name: str, split: str = "test", *, num: int | None = None,
                  seed: int = 0, path: PathLike | None = None,
                  **knobs) -> list[Example]:
    """Returns examples from a shipped data set, a built-in task or a file.

    Args:
      name: ``"math500"``, ``"gsm8k"``, a built-in task name (see
        ``task_names()``), or ``"reference"`` to read ``path`` with
        ``load_reference``.
      split: ``"train"`` or ``"test"``; the shipped sets only have ``"test"``.
      num: how many examples. Required for built-in tasks; for files, keeps
        the first ``num`` (all when None).
      seed: generator seed (built-in tasks only).
      path: a file to read instead of the shipped one (``"math500"``,
        ``"gsm8k"``, ``"reference"``).
      **knobs: task knobs (built-in tasks only).

    Returns:
      The examples.

    Raises:
      ValueError: for an unknown name, a bad split, a missing ``num`` or
        ``path``, knobs given to a file source, or any reader error.
    """
    check_split(split)
    if num is not None and (isinstance(num, bool) or not isinstance(num, int)
                            or num < 0):
        raise ValueError(f"num must be None or an int >= 0, got {num!r}")
    if name in task_names():
        if num is None:
            raise ValueError(f"num is required to generate task {name!r}")
        return get_task(name, **knobs).generate(split, num, seed)
    if knobs:
        raise ValueError(f"knobs {sorted(knobs)} only apply to built-in tasks, "
                         f"not {name!r}")
    if name in SHIPPED:
        if split != "test":
            raise ValueError(f"{name!r} ships only the 'test' split")
        examples = (load_math500 if name == "math500" else load_gsm8k)(path)
    elif name == "reference":
        if path is None:
            raise ValueError("path is required for name='reference'")
        examples = load_reference(path)
    else:
        raise ValueError(f"unknown example source {name!r}; known: "
                         f"{', '.join(SHIPPED + task_names())}, reference")
    return examples if num is None else examples[:num]
