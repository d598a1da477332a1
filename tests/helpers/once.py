"""Session-wide fixtures that run once even when pytest-xdist spreads their tests over workers.

A module- or session-scoped fixture runs once per *worker*; pytest-xdist may
send the tests that use it to both workers, and then both pay for the same
long run. :func:`run_once` builds a directory under the session's shared
temporary directory (the workers' ``popen-gwN`` base directories share a
parent) while holding a file lock: the first worker to ask builds it, the
others wait for it and read the same files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable


def shared_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def run_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``<shared>/<name>``, filled by ``build(path)`` by the first worker that asks for it."""
    root = shared_base(tmp_path_factory)
    path, complete = root / name, root / f"{name}.complete"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not complete.exists():
                shutil.rmtree(path, ignore_errors=True)   # a failed attempt: build again (and fail here too)
                path.mkdir(parents=True)
                build(path)
                complete.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
