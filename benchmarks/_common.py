"""Shared helpers of the benchmark scripts: timing, machine/load record, tables, JSON.

Benchmarks here are scripts, never timed assertions in tests (DESIGN.md). A
number taken on a shared machine means little on its own, so every script

* times the things it compares *side by side in one process*, interleaved
  round by round, so that a change in background load hits all of them alike
  and their ratios stay meaningful;
* records the load it ran under: the load average before and after, the
  CPU time the process itself got per wall second (``cpu_per_wall``: how
  many cores the benchmark really had) and the CPU time every other process
  took per wall second (from ``/proc/stat``);
* writes everything it printed, plus the environment, to
  ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def timed(fn: Callable, *args, **kwargs):
    """Runs ``fn`` once and blocks on its outputs.

    Returns:
      ``(result, wall seconds, process CPU seconds)``. The CPU time counts all
      threads of this process (XLA's intra-op threads included).
    """
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, time.perf_counter() - w0, time.process_time() - c0


def interleaved_rounds(calls: dict, repeats: int, budget_s: float, *, min_rounds: int = 2,
                       tag: Callable[[Any], str] | None = None, label: str = "") -> tuple[dict, dict, dict]:
    """Times every call once per round, round-robin so that all of them see the same machine load.

    Runs ``repeats`` rounds, stopping early once ``min_rounds`` are done and the
    wall time spent exceeds ``budget_s``. With ``tag``, prints one line per round
    (``label``, then ``tag(key)`` and the call's wall seconds).

    Returns:
      ``(wall, cpu, outputs)``: per key, the list of wall and process-CPU
      seconds of each round, and the output of the last round.
    """
    wall, cpu, outs = {k: [] for k in calls}, {k: [] for k in calls}, {}
    spent, r = 0.0, 0
    while r < repeats and (r < min_rounds or spent < budget_s):
        line = []
        for k, fn in calls.items():
            outs[k], w, c = timed(fn)
            wall[k].append(w)
            cpu[k].append(c)
            spent += w
            line.append(f"{tag(k) if tag else k} {w:.3f}s")
        if tag is not None:
            print(f"  {label}round {r}: " + ", ".join(line), flush=True)
        r += 1
    return wall, cpu, outs


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def parse_ints(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``."""
    return [int(t) for t in text.split(",") if t.strip()]


def parse_strs(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Machine, software and load at the start of a run."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "nice": os.nice(0),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _system_busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Wall and CPU time of a whole run: this process's, and everybody else's."""

    def __init__(self):
        self.w0, self.c0, self.s0 = time.perf_counter(), time.process_time(), _system_busy_s()

    def summary(self) -> dict:
        wall = time.perf_counter() - self.w0
        cpu = time.process_time() - self.c0
        s1 = _system_busy_s()
        others = None if s1 is None or self.s0 is None else max(s1 - self.s0 - cpu, 0.0)
        return {"wall_s": round(wall, 1), "process_cpu_s": round(cpu, 1),
                "cpu_per_wall": round(cpu / wall, 2) if wall > 0 else None,
                "other_processes_cpu_per_wall": round(others / wall, 2) if others is not None and wall > 0 else None,
                "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def load_note(env: dict, load: dict) -> str:
    """One line saying whether the run competed with other work for the CPU."""
    n = env["cpu_count"] or 1
    others = load.get("other_processes_cpu_per_wall")
    line = (f"load: loadavg {env['loadavg_start'][0]:.2f} -> {load['loadavg_end'][0]:.2f} on {n} cores; "
            f"this process got {load['cpu_per_wall']} CPU-s per wall-s (nice {env['nice']})")
    if others is not None:
        line += f", other processes {others}"
        busy = others > 0.25
    else:
        busy = env["loadavg_start"][0] > 0.5 * n
    if busy:
        line += ". CONCURRENT LOAD: absolute numbers are pessimistic; compare the side-by-side ratios"
    return line


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Prints a fixed-width table.

    Args:
      rows: dicts of values.
      columns: ``(key, header, format)``; format like ``"{:.1f}"``.

    Returns:
      The table text.
    """
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    """Writes ``payload`` to ``out`` or ``benchmarks/results/<name>.json``."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}", flush=True)
    return path
