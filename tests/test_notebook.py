"""notebooks/quickstart.ipynb: saved clean, and runs end to end on a CPU with tiny parameters.

The notebook's first code cell after the install cell is tagged ``parameters``;
as papermill does, the test inserts a cell right after it that overrides those
values (few SFT and RL steps), executes the notebook with nbclient in a fresh
kernel, and checks that it drew the trajectory heat map and printed one finite
mean reward per RL step.
"""

import ast
import math
import os
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
RL_STEPS = 2
# GROUP_FILTER="none" keeps the all-zero-reward groups of an almost untrained model, so the
# policy-update path (old log-probs, PPO step) runs too.
OVERRIDES = (f'SFT_STEPS = 3\nRL_STEPS = {RL_STEPS}\nGROUP_FILTER = "none"\n'
             'NUM_PROMPTS = 4\nK = 4\nNUM_EVAL = 8\n')
REWARD_LINE = "mean reward per RL step:"


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def _parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell is tagged 'parameters'"
    return tagged[0]


def test_notebook_is_clean_and_colab_ready():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert c.outputs == [] and c.execution_count is None, "save the notebook without outputs"
    # First cell installs, only when the package is missing, from the clone the notebook runs in (found by
    # walking up from the working directory; no guessed repository URL); no local paths anywhere.
    first = code[0].source
    assert "import tracerl_jax" in first and "except ImportError" in first and "%pip install -q -e" in first
    assert "git+" not in first and "setup.cfg" in first
    text = "\n".join(c.source for c in nb.cells)
    assert "/work/" not in text and "sys.path" not in text
    params = nb.cells[_parameters_index(nb)].source
    for name in ("SFT_STEPS", "RL_START", "RL_STEPS", "NUM_PROMPTS", "K", "NUM_EVAL", "GROUP_FILTER"):
        assert f"{name} =" in params


def test_notebook_runs(tmp_path, monkeypatch):
    nb = _read()
    i = _parameters_index(nb)
    injected = nbformat.v4.new_code_cell(OVERRIDES)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, injected)

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the kernel inherits the environment
    # Compiling dominates a run this short; fewer XLA passes cut its CPU time by about a third.
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The kernel runs in tmp_path; point it at this checkout so it tests the code under test,
    # not whatever copy (if any) is installed in site-packages.
    repo = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - t0
    print(f"notebook executed in {wall:.1f}s")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors

    # The trajectory heat map: the cell that calls plot_trajectory displays a PNG.
    traj = [c for c in nb.cells if c.cell_type == "code" and "plot_trajectory(rollout" in c.source]
    assert len(traj) == 1
    assert any("image/png" in o.get("data", {}) for o in traj[0].outputs), "no trajectory figure"
    traj_text = "".join(o.get("text", "") for o in traj[0].outputs if o.output_type == "stream")
    assert "blk  0 |" in traj_text and "step   1:" in traj_text  # render_trajectory, both views

    # The reward curve and the printed list: RL_STEPS finite rewards in [0, 1].
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert any("image/png" in o.get("data", {}) for o in last.outputs), "no reward plot"
    text = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith(REWARD_LINE))
    rewards = ast.literal_eval(line[len(REWARD_LINE):].strip())
    assert len(rewards) == RL_STEPS
    assert all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in rewards)
    held_out = re.search(r"held-out accuracy: before RL ([0-9.]+) ± [0-9.]+, after 2 TraceRL steps ([0-9.]+) ± ", text)
    assert held_out, text
    # NUM_EVAL = 8 greedy answers: each accuracy is a multiple of 1/8.
    assert all(float(a) * 8 == round(float(a) * 8) for a in held_out.groups())

    # The policy update really ran (GROUP_FILTER="none" keeps every group).
    rl_text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" and "rl.rl_step(" in c.source
                      for o in c.outputs if o.output_type == "stream")
    assert rl_text.count("RL step") == RL_STEPS and "updates 0" not in rl_text
