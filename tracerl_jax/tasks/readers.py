"""Readers for JSONL/JSON problem sets: MATH500, GSM8K and the reference's format.

All readers yield :class:`Example`. The shipped MATH500 and GSM8K test sets
(``tracerl_jax/assets/data``) are found through ``importlib.resources``, so a
fresh clone or an installed wheel works without any other checkout.
"""
from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable
import json
import os
import re
from typing import Any, Iterator, Union

from tracerl_jax.tasks.example import Example

PathLike = Union[str, os.PathLike, Traversable]

_CALCULATOR = re.compile(r"<<[^>]*>>")
_CODE_FIELDS = ("test_list", "test_input", "test_output")


def shipped_path(name: str, split: str = "test") -> Traversable:
    """Returns the packaged JSONL file of a shipped data set.

    Args:
      name: ``"math500"`` or ``"gsm8k"``.
      split: only ``"test"`` is shipped.

    Returns:
      A traversable that ``open`` and ``read_jsonl`` accept.

    Raises:
      ValueError: for a data set or split that is not shipped.
    """
    if name not in ("math500", "gsm8k") or split != "test":
        raise ValueError(f"no shipped data for {name!r} split {split!r}; shipped:"
                         " math500/test, gsm8k/test")
    return (importlib.resources.files("tracerl_jax") / "assets" / "data" / name
            / f"{split}.jsonl")


def _open(path: PathLike):
    """Opens a file path or a resource for reading UTF-8 text."""
    try:
        if isinstance(path, (str, os.PathLike)):
            return open(path, encoding="utf-8")
        return path.open("r", encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise ValueError(f"data file not found: {path}") from e


def read_jsonl(path: PathLike) -> Iterator[dict[str, Any]]:
    """Yields the JSON objects of a JSONL file, one per non-blank line.

    Args:
      path: a filesystem path or an ``importlib.resources`` traversable.

    Yields:
      One dict per line.

    Raises:
      ValueError: if the file is missing, or a line is not a JSON object (the
        message names the file and the 1-based line number).
    """
    with _open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                                 f"{type(obj).__name__}")
            yield obj


def _field(obj: dict[str, Any], key: str, where: str) -> str:
    """Returns a required string field or raises ValueError naming the record."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{where}: missing string field {key!r}")
    return value


def load_math500(path: PathLike | None = None) -> list[Example]:
    """Reads MATH500 (fields ``problem``, ``answer``, optional ``solution``).

    Args:
      path: a JSONL file; defaults to the shipped test set (500 problems).

    Returns:
      Examples with ``meta`` = ``task="math500"``, ``kind="math"``,
      ``index`` and the record's ``subject``, ``level``, ``unique_id``.

    Raises:
      ValueError: for a missing file, a malformed line or a missing field.
    """
    path = shipped_path("math500") if path is None else path
    out = []
    for i, obj in enumerate(read_jsonl(path)):
        where = f"{path}: record {i}"
        extra = {k: obj[k] for k in ("subject", "level", "unique_id") if k in obj}
        out.append(Example(
            question=_field(obj, "problem", where),
            answer=_field(obj, "answer", where),
            solution=obj.get("solution") or "",
            meta={"task": "math500", "kind": "math", "index": i, **extra}))
    return out


def gsm8k_answer(rationale: str) -> str:
    """Returns the final answer after ``####``, without thousands separators.

    Args:
      rationale: a GSM8K ``answer`` field.

    Returns:
      The answer text, e.g. ``"2125"`` for ``"#### 2,125"``.

    Raises:
      ValueError: if there is no ``####`` marker.
    """
    head, sep, tail = rationale.rpartition("####")
    if not sep:
        raise ValueError("GSM8K answer has no '#### <answer>' line")
    return tail.strip().replace(",", "")


def load_gsm8k(path: PathLike | None = None) -> list[Example]:
    """Reads GSM8K (fields ``question`` and ``answer`` ending in ``#### x``).

    The worked solution is the rationale with the ``<<...>>`` calculator
    annotations removed and the ``#### x`` line replaced by ``\\boxed{x}``.

    Args:
      path: a JSONL file; defaults to the shipped test set (1319 problems).

    Returns:
      Examples with ``meta`` = ``task="gsm8k"``, ``kind="math"``, ``index``.

    Raises:
      ValueError: for a missing file, a malformed line, a missing field or an
        answer without ``####``.
    """
    path = shipped_path("gsm8k") if path is None else path
    out = []
    for i, obj in enumerate(read_jsonl(path)):
        where = f"{path}: record {i}"
        rationale = _field(obj, "answer", where)
        try:
            answer = gsm8k_answer(rationale)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        steps = _CALCULATOR.sub("", rationale.rpartition("####")[0]).strip()
        out.append(Example(
            question=_field(obj, "question", where),
            answer=answer,
            solution=f"{steps}\n\\boxed{{{answer}}}" if steps else f"\\boxed{{{answer}}}",
            meta={"task": "gsm8k", "kind": "math", "index": i}))
    return out


def _read_records(path: PathLike) -> list[dict[str, Any]]:
    """Reads a JSON list (the reference's ``data/*.json``) or a JSONL file."""
    with _open(path) as f:
        text = f.read()
    if not text.lstrip().startswith("["):
        return list(read_jsonl(path))
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    for i, obj in enumerate(records):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: record {i} is not a JSON object")
    return records


def load_reference(path: PathLike, name: str | None = None) -> list[Example]:
    """Reads a data set in the reference implementation's format.

    Math records have ``question`` and ``ground_truth_answer``. Code records
    have ``question`` and tests: ``test_list`` (assert statements, for
    ``test_method="function"``, the default) or ``test_input`` /
    ``test_output`` (for ``test_method="stdio"``), and for function tasks an
    optional ``prefix`` (the signature the prompt ends with, §1.9). The file
    may be one JSON list or JSONL.

    Args:
      path: the file.
      name: the data set name stored in ``meta["task"]``; defaults to the file
        name without its extension.

    Returns:
      Examples. Math: ``answer`` is the ground truth, ``kind="math"``. Code:
      ``answer`` is empty, ``kind`` is ``"code_function"`` or ``"code_stdio"``
      and the test fields, ``test_method`` and ``prefix`` stay in ``meta``.
      Every other field of the record is kept in ``meta`` too.

    Raises:
      ValueError: for a missing file, malformed JSON, a record without a
        ``question``, or one with neither an answer nor tests.
    """
    if name is None:
        name = os.path.splitext(os.path.basename(str(path)))[0]
    out = []
    for i, obj in enumerate(_read_records(path)):
        where = f"{path}: record {i}"
        question = _field(obj, "question", where)
        extra = {k: v for k, v in obj.items()
                 if k not in ("question", "ground_truth_answer")}
        if any(k in obj for k in _CODE_FIELDS):
            method = obj.get("test_method", "function")
            if method not in ("function", "stdio"):
                raise ValueError(f"{where}: test_method must be 'function' or "
                                 f"'stdio', got {method!r}")
            meta = {**extra, "test_method": method, "prefix": obj.get("prefix") or ""}
            out.append(Example(question=question, answer="", solution="",
                               meta={**meta, "task": name, "kind": f"code_{method}",
                                     "index": i}))
        elif "ground_truth_answer" in obj:
            answer = obj["ground_truth_answer"]
            out.append(Example(question=question, answer=str(answer), solution="",
                               meta={**extra, "task": name, "kind": "math",
                                     "index": i}))
        else:
            raise ValueError(f"{where}: has neither 'ground_truth_answer' nor code "
                             f"tests ({', '.join(_CODE_FIELDS)})")
    return out
