"""Resume survives a bad last checkpoint: each kind of damage to the newest step falls back to the newest
step that restores, says which step it skipped and why; a resumed run logs every step once."""

import glob
import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_rl_example import REPO, command, read_metrics, run_env  # noqa: F401  (fixture)
from tracerl_jax.train.checkpoint import CheckpointManager
from tracerl_jax.train.metrics import MetricsWriter

TARGET = {"policy": {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}}


def saved(directory):
    with CheckpointManager(directory, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, {"policy": {"w": jnp.arange(1000.0) * step}}, meta={"data": {"i": step}})


def truncate_tensors(step_dir):
    files = glob.glob(str(step_dir / "policy" / "**" / "d" / "*"), recursive=True)
    assert files
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(10)


DAMAGE = {
    "empty directory of a newer step": lambda d: os.makedirs(d / "3"),
    "missing step metadata": lambda d: os.remove(d / "2" / "_CHECKPOINT_METADATA"),
    "missing item metadata": lambda d: os.remove(d / "2" / "policy" / "_METADATA"),
    "truncated tensor files, commit marker kept": lambda d: truncate_tensors(d / "2"),
    "truncated tensor files, no commit marker": lambda d: (truncate_tensors(d / "2"), [
        os.remove(f) for f in glob.glob(str(d / "2" / "**" / "commit_success.txt"), recursive=True)]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_restore_falls_back_to_the_newest_clean_step(tmp_path, damage):
    saved(tmp_path)
    DAMAGE[damage](tmp_path)
    with CheckpointManager(tmp_path) as ckpt:
        with pytest.raises(ValueError):   # without fall_back the damage is an error naming the step
            ckpt.restore(target=TARGET)
        restored = ckpt.restore(target=TARGET, fall_back=True)
        clean = 2 if damage.startswith("empty") else 1   # the empty step 3 is newer than the clean step 2
        assert restored.step == clean and restored.meta["data"] == {"i": clean}
        np.testing.assert_array_equal(restored.state["policy"]["w"], np.arange(1000.0) * clean)
        skipped_steps = [s for s, _ in restored.skipped]
        assert skipped_steps == [clean + 1]
        assert all(f"step {s}" in reason for s, reason in restored.skipped)
        moved = ckpt.set_aside(skipped_steps[0])
        assert moved.name == f"corrupt-{skipped_steps[0]}" and moved.is_dir()
        assert skipped_steps[0] not in ckpt.all_steps()


def test_no_clean_step_is_the_newest_steps_error(tmp_path):
    saved(tmp_path)
    for step in ("1", "2"):
        truncate_tensors(tmp_path / step)
    with CheckpointManager(tmp_path) as ckpt, pytest.raises(ValueError, match="checkpoint step 2"):
        ckpt.restore(target=TARGET, fall_back=True)


def test_metrics_of_redone_steps_are_dropped(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(5):
        w.write(step, {"reward": float(step)})
    assert w.resume_at(2) == 2
    w.write(3, {"reward": 30.0})
    w.close()
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3] and lines[-1]["reward"] == 30.0


def test_run_resumes_past_a_corrupt_last_checkpoint_with_each_step_logged_once(run_env, tmp_path):
    # A finished 3-step run, then: its step-3 checkpoint damaged as a kill during the write would leave it
    # (the step-3 metrics line already written). The rerun resumes from step 2 and redoes step 3.
    args = ("--config.rl.total_steps=3", "--config.checkpoint.every=1", "--config.checkpoint.keep=5",
            "--config.rollout.group_filter=none")
    subprocess.run(command(tmp_path, *args), env=run_env, cwd=REPO, check=True, capture_output=True, timeout=600)
    truncate_tensors(tmp_path / "checkpoints" / "3")
    shutil.rmtree(tmp_path / "export")
    (tmp_path / "summary.json").unlink()
    proc = subprocess.run(command(tmp_path, *args), env=run_env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checkpoint step 3 does not restore; resuming from step 2" in proc.stdout
    assert "resumed at RL step 2" in proc.stdout
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
    assert (tmp_path / "checkpoints" / "corrupt-3").is_dir() and (tmp_path / "checkpoints" / "3").is_dir()
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3
