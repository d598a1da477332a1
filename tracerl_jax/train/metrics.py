"""Metrics: JSONL lines, TensorBoard event files, and PNG curves.

:class:`MetricsWriter` appends one JSON object per :meth:`~MetricsWriter.write`
to ``<workdir>/metrics.jsonl`` (``{"step": s, "time": t, **scalars}``) and
mirrors the scalars into TensorBoard event files under
``<workdir>/tensorboard`` (tensorboardX; no TensorFlow needed). Only process
0 of a multi-host run writes; the others' writers are no-ops, so every
process may call them unconditionally.

:func:`plot_curves` draws chosen keys of a JSONL file against the step with
matplotlib's Agg canvas (no display needed), e.g. evaluation accuracy and
mean reward versus RL step.

Example::

    with MetricsWriter(workdir) as w:
        w.write(step, {"train/loss": 0.7, "eval/accuracy": 0.31})
    plot_curves(workdir / "metrics.jsonl", workdir / "curves.png", ["eval/accuracy"])
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

JSONL_NAME = "metrics.jsonl"
TB_DIR = "tensorboard"


def _scalar(v) -> Optional[float]:
    """``v`` as a float if it is a scalar number (arrays of size 1 included)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float, np.number)):
        return float(v)
    try:
        a = np.asarray(v)
    except Exception:  # not array-like
        return None
    if a.size == 1 and np.issubdtype(a.dtype, np.number):
        return float(a.reshape(()))
    return None


def _process_index() -> int:
    try:
        import jax

        return jax.process_index()
    except Exception:  # jax missing or not initialised: single process
        return 0


class MetricsWriter:
    """Writes scalar metrics as JSONL and TensorBoard events (process 0 only).

    Args:
      workdir: output directory (created).
      tensorboard: also write TensorBoard event files.
      jsonl_name: file name of the JSONL log inside ``workdir``.
      process_index: override ``jax.process_index()`` (tests).

    Attributes:
      jsonl_path: path of the JSONL file.
      active: whether this process writes.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, jsonl_name: str = JSONL_NAME,
                 process_index: Optional[int] = None):
        self.workdir = Path(workdir)
        self.jsonl_path = self.workdir / jsonl_name
        self.active = (_process_index() if process_index is None else process_index) == 0
        self._tb = None
        self._file = None
        if not self.active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.jsonl_path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / TB_DIR))

    def resume_at(self, step: int) -> int:
        """Drops the JSONL lines of steps after ``step`` (written after the checkpoint a run resumes from;
        the resumed run writes them again), so the log has each step once. Returns the lines dropped."""
        if not self.active or not self.jsonl_path.is_file():
            return 0
        self._file.flush()
        lines = self.jsonl_path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = [ln for ln in lines if not ln.strip() or json.loads(ln).get("step", -1) <= step]
        if len(keep) != len(lines):
            self._file.close()
            self.jsonl_path.write_text("".join(keep), encoding="utf-8")
            self._file = open(self.jsonl_path, "a", encoding="utf-8")
        return len(lines) - len(keep)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Records the scalar entries of ``metrics`` at ``step``.

        Non-scalar values (lists, strings, arrays of size > 1) are skipped;
        JAX/NumPy scalars are converted to floats; NaN/inf are written as
        ``null`` in JSON (strict JSON has no NaN).

        Returns:
          The scalars that were recorded.
        """
        scalars = {k: s for k, v in metrics.items() if (s := _scalar(v)) is not None}
        if not self.active:
            return scalars
        line = {"step": int(step), "time": time.time()}
        line.update({k: (v if math.isfinite(v) else None) for k, v in scalars.items()})
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if math.isfinite(v):  # tensorboardX warns on NaN/inf; the JSONL keeps them as null
                    self._tb.add_scalar(k, v, global_step=int(step))
        return scalars

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Writes a text summary (TensorBoard only), e.g. sample generations."""
        if self.active and self._tb is not None:
            self._tb.add_text(tag, text, global_step=int(step))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file (a torn last line is ignored)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a run killed mid-write
    return out


def plot_curves(jsonl_path: str | os.PathLike, out_png: str | os.PathLike, keys: Sequence[str], *,
                x: str = "step", title: Optional[str] = None) -> Path:
    """Plots ``keys`` of a metrics JSONL file against ``x`` into a PNG.

    One subplot per key; records without the key are skipped, so training
    and evaluation metrics logged at different cadences can share a file.
    When a run was resumed and re-logged some steps, the last record of each
    ``x`` wins.

    Args:
      jsonl_path: a file written by :class:`MetricsWriter`.
      out_png: output image path (parent directories are created).
      keys: metric names, e.g. ``["eval/accuracy", "rollout/reward_mean"]``.
      x: the abscissa key (``"step"``).
      title: optional figure title.

    Returns:
      The PNG path.

    Raises:
      ValueError: if ``keys`` is empty or a bare string, or none of them
        occurs in the file.
    """
    # The object-oriented API with the Agg canvas: no display, and no change
    # to pyplot's global backend (notebooks keep theirs).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(keys, str):  # would otherwise be iterated letter by letter
        raise ValueError(f"keys must be a sequence of metric names, got the string {keys!r}; "
                         f"pass [{keys!r}]")
    if not keys:
        raise ValueError("keys is empty")
    records = read_jsonl(jsonl_path)
    series = {}
    for k in keys:
        pts = {}
        for r in records:
            if r.get(k) is not None and r.get(x) is not None:
                pts[r[x]] = r[k]
        if pts:
            xs = sorted(pts)
            series[k] = (xs, [pts[v] for v in xs])
    if not series:
        raise ValueError(f"none of {list(keys)} occurs in {jsonl_path}")
    fig = Figure(figsize=(6, 2.6 * len(series)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(series), 1, squeeze=False, sharex=True)
    for ax, (k, (xs, ys)) in zip(axes[:, 0], series.items()):
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3)
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(x)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
