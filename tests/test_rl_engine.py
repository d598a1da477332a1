"""The RL loop with the slot engine (``rollout.engine = "slots"``): checked config, and one real RL step.

The step is a subprocess of examples/tracerl.py, as in tests/test_rl_example.py
(whose helpers and smoke-size recipe it reuses).
"""

from __future__ import annotations

import json

import pytest

from tests.test_rl_example import REWARD, check_outputs, run_env, run_example  # noqa: F401 (fixture)


def recipe(**rollout):
    from configs import tracerl

    c = tracerl.get_config()
    for k, v in rollout.items():
        c.rollout[k] = v
    return c


def test_rollout_engine_is_checked():
    from tracerl_jax.families import get_family
    from tracerl_jax.rl import config as setup
    from tracerl_jax.sampling import EngineConfig

    setup.check_config(recipe(engine="slots", slots=8))
    with pytest.raises(ValueError, match=r"rollout.engine must be one of \('block', 'slots'\), got 'paged'"):
        setup.check_config(recipe(engine="paged"))
    with pytest.raises(ValueError, match="rollout.slots must be an int >= 1 or None"):
        setup.check_config(recipe(engine="slots", slots=0))
    with pytest.raises(ValueError, match="rollout.engine='slots' decodes block-diffusion models only"):
        setup.check_config(recipe(engine="slots"), family=get_family("llada"))
    assert setup.rollout_engine(recipe(), 128) is None
    assert setup.rollout_engine(recipe(engine="slots"), 128) == EngineConfig(num_slots=32, max_prompt_len=16)
    assert setup.rollout_engine(recipe(engine="slots", slots=5), 8) == EngineConfig(num_slots=5, max_prompt_len=16)


def test_rl_step_with_slot_engine(run_env, tmp_path):  # noqa: F811 (fixture)
    proc = run_example(run_env, tmp_path, "--config.rl.total_steps=1", "--config.rollout.engine=slots",
                       "--config.rollout.slots=3", REWARD)
    check_outputs(tmp_path, 1, proc)
    assert json.loads((tmp_path / "config.json").read_text())["rollout"]["engine"] == "slots"
