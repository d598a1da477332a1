"""Train/test assignment by a hash of the canonical problem.

A generator draws problems from one seeded stream and keeps those whose hash
falls in the requested split. Because the split is a pure function of the
canonical problem text, the same problem can never appear in both splits,
whatever the seeds or sizes asked for.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "test")
# About one problem in eight is held out; generators only need the split to
# be a deterministic function of the problem, the fraction just sets how many
# draws a test set costs.
TEST_FRACTION = 0.125


def split_of(task_name: str, canonical: str) -> str:
    """Returns the split a problem belongs to.

    Args:
      task_name: the task's registry name (salts the hash so tasks with
        overlapping canonical forms are split independently).
      canonical: the problem in a canonical text form (two problems that are
        the same problem must give the same text).

    Returns:
      ``"train"`` or ``"test"``.
    """
    digest = hashlib.sha256(f"{task_name}\x00{canonical}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2.0**64
    return "test" if unit < TEST_FRACTION else "train"


def check_split(split: str) -> str:
    """Validates a split name.

    Args:
      split: the split name.

    Returns:
      The same name.

    Raises:
      ValueError: if it is not one of ``SPLITS``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split
