"""The README's promises: its tour runs, and .ci/run calls the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_tour_runs():
    code = re.search(r"## A quick tour\n\n```python\n(.*?)```", README, re.S).group(1)
    scope = {}
    exec(compile(code, "README tour", "exec"), scope)
    assert float(scope["loss"]) == float(scope["loss"])  # finite
    rows, rollout = scope["rows"], scope["rollout"]
    import numpy as np
    pm = np.asarray(rows.p_mask & rows.row_valid[:, None])
    recorded = np.asarray(rollout.logprobs)[np.asarray(rows.response_index)]
    assert np.abs(np.asarray(scope["logp"]) - recorded)[pm].max() < 1e-4


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(blocks) == 2, "README gives exactly two set-up commands"
    test_cmd = blocks[1].split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci
