"""``--help`` of every example lists the fields of its config, with their defaults and comments."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import _common  # noqa: E402


RECIPE = ROOT / "tracerl_jax" / "rl" / "recipe.py"


@pytest.mark.parametrize("config,fields", [
    (RECIPE, ["--config.rl.method='TraceRL'", "--config.rl.loss='ppo_clip'", "--config.rollout.block_size=4"]),
    ("sft.py", ["--config.sft.method=", "--config.block_size="]),
    ("evaluate.py", ["--config.checkpoint=", "--config.sampler.strategy="]),
    ("sample.py", ["--config.checkpoint=", "--config.sampler.temperature="]),
])
def test_config_help_lists_every_field_with_its_comment(config, fields):
    text = _common.config_help(_common.CONFIG_DIR / config if isinstance(config, str) else config)
    for f in fields:
        assert f in text, f
    assert "rows per optimizer update" in _common.config_help(RECIPE)  # a field comment


def test_help_of_an_example_prints_the_config_fields():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "tracerl.py"), "--help"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    text = out.stdout + out.stderr
    assert "Config fields" in text and "--config.rl.learning_rate=3e-05" in text, text[-2000:]


@pytest.mark.parametrize("script,config", [("sft.py", "sft.py:codefn"), ("tracerl.py", "tracerl_codefn.py"),
                                           ("tracerl.py", "tracerl_codefn.py:linear"),
                                           ("evaluate.py", "evaluate.py:codefn_linear")])
def test_configs_that_import_their_base_recipe_load_from_any_directory(tmp_path, script, config):
    # configs/sft.py:codefn and the task recipes import ``configs.*``; a run started outside the
    # repository (only tracerl_jax installed) must still load them.
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), f"--config={ROOT / 'configs' / config}",
                          "--help"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert "Traceback" not in text and ("--config.task.name=" in text or "--config.data.name=" in text), text[-2000:]
