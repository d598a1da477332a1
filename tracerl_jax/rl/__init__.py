"""The RL iteration of TraceRL and what a run of it needs.

* :mod:`~tracerl_jax.rl.stages`: the stages of one iteration as functions
  (rollout and reward, training rows by method name, advantages inputs,
  metrics, response keys), re-exported here.
* :mod:`~tracerl_jax.rl.pipeline`: the on-device update pipeline (rows ->
  update batches -> old scores -> advantages -> updates).
* :mod:`~tracerl_jax.rl.loop`: :func:`rl_step` (the algorithm box) and
  :func:`train` (evaluation, metrics, checkpoints, preemption, export).
* :mod:`~tracerl_jax.rl.run`: :func:`build_run` -- everything a run holds,
  from a recipe: model in its precision, mesh, sharded states and steps,
  samplers, data, resume.
* :mod:`~tracerl_jax.rl.config`, :mod:`~tracerl_jax.rl.specs`,
  :mod:`~tracerl_jax.rl.distributed`: the recipe's checks, what its strings
  name (``model.init``, ``task.name``, a reward), processes and the
  global/local views of arrays.
"""

from tracerl_jax.rl import config, distributed, pipeline, recipe, specs
from tracerl_jax.rl.distributed import EXIT_PREEMPTED, StopRequest, global_sampler, init_distributed
from tracerl_jax.rl.stages import (ROW_BUILDERS, RolloutBatch, advantage_inputs, build_policy_rows,
                                   completion_mask, compute_advantages, coupled_rows, decode_completions,
                                   globalize, random_masking_rows, response_keys, response_targets,
                                   rollout_and_reward, rollout_metrics, trace_rows)
from tracerl_jax.rl.run import Run, build_run, export, held_out_accuracy, save  # noqa: E402
from tracerl_jax.rl.loop import rl_step, train  # noqa: E402

__all__ = [
    "EXIT_PREEMPTED", "ROW_BUILDERS", "RolloutBatch", "Run", "StopRequest", "advantage_inputs", "build_policy_rows",
    "build_run", "completion_mask", "compute_advantages", "config", "coupled_rows", "decode_completions",
    "distributed", "export", "global_sampler", "globalize", "held_out_accuracy", "init_distributed", "pipeline",
    "random_masking_rows", "recipe", "response_keys", "response_targets", "rl_step", "rollout_and_reward",
    "rollout_metrics", "save", "specs", "train", "trace_rows",
]
