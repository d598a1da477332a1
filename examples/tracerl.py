r"""TraceRL: reinforcement learning of a diffusion LM on its own trajectories.

One RL step, as in the paper's algorithm box (``tracerl_jax.rl.loop.rl_step``):

    1. sample prompts                      (a resumable data iterator; each process takes its share)
    2. rollout with trajectories           (block or full-attention sampler: tokens + step maps;
                                            one program over all devices, on the sharded policy)
    3. rewards -> group z-scores           (task verifier, §7.4)
    4. training rows -> update batches     (rl.method: TraceRL rounds, or a baseline's masks; on device)
    5. [value model] old values; advantages (rl.advantage: group z-scores, or step-level GAE §8)
    6. old log-probs, policy updates       (rl.loss: PPO-clip on trajectory log-probs, §6)
    7. [value model] value updates
    8. periodic evaluation, metrics, checkpoint; at the end the policy is exported to <workdir>/export

The policy's family (``tracerl_jax.families``) picks the sampler, the layout
of the rows and the form of the loss: a block model (SDAR/TraDo) is rolled out
block by block and trained on the extended layout (§1, §4, §9.1); a
LLaDA/MMaDA or Dream/DiffuCoder model is rolled out with the full-attention
sampler (§2) and trained on single-sequence rows with whole-response
shrinkage ``rl.shrink`` (§5, §9.2) and the full-attention loss (§6.4). The
loop has no family branch. To swap a piece, register a row builder
(``rl.ROW_BUILDERS``), an advantage estimator
(``advantages.ADVANTAGE_ESTIMATORS``) or a policy loss
(``losses.POLICY_LOSSES``) and name it in the config, or pass your own
``step_fn`` to ``rl.train`` (start from a copy of ``rl.rl_step``).

Devices: ``mesh = (data, fsdp, tensor)`` (-1 = the rest); the policy, value
and reference states are sharded by ``tracerl_jax.train.sharding`` (FSDP on
``fsdp``, tensor parallel on ``tensor``); precision by ``model.param_dtype``,
``model.dtype`` and ``rl.opt_state_dtype``.

Usage:
  python examples/tracerl.py                                   # CPU default (configs/tracerl.py)
  python examples/tracerl.py --config=configs/tracerl_value.py
  python examples/tracerl.py --config.rl.method=coupled --config.workdir=runs/coupled
  # full attention (LLaDA / Dream): the model decides; see configs/tracerl_full.py
  python examples/tracerl.py --config=configs/tracerl_full.py --config.model.init=runs/sft_llada/export
  python examples/tracerl.py --config.model.init=/ckpt/LLaDA-8B-Instruct --config.tokenizer=/ckpt/LLaDA-8B-Instruct
  # two processes on one machine (see docs/multihost.md); same global batch as one process:
  python examples/tracerl.py --coordinator_address=localhost:12355 --num_processes=2 --process_id=0 &
  python examples/tracerl.py --coordinator_address=localhost:12355 --num_processes=2 --process_id=1
  # TPU pod slice: the same command on every host
  python examples/tracerl.py --distributed --config=configs/trado_4b.py

Re-running with the same workdir resumes from the last checkpoint and continues
exactly as an uninterrupted run would. SIGTERM (preemption) finishes the current
step, checkpoints it and exits with status 143 (128 + SIGTERM) -- "interrupted,
restart me" -- while a finished run exits 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402

from examples import _common  # noqa: E402
from tracerl_jax import rl  # noqa: E402

FLAGS = flags.FLAGS
__doc__ = (__doc__ or "") + _common.config_help(Path(rl.recipe.__file__))
config_flags.DEFINE_config_file("config", str(_common.CONFIG_DIR / "tracerl.py"), "RL recipe (ml_collections config file).")
flags.DEFINE_string("reward", None, "Batch reward 'package.module:function' with signature (texts, examples, "
                    "lengths) -> scores, replacing the task verifier.")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "host:port of process 0, for a multi-process run (env JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ
                     else None, "Processes in a multi-process run (env JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
                     "This process's index in [0, num_processes) (env JAX_PROCESS_ID).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pod "
                  "slices, SLURM) when no coordinator is given.")


def train(cfg: ml_collections.ConfigDict, *, score_fn: Optional[Callable] = None) -> dict:
    """Runs (or resumes) the RL recipe ``cfg`` to ``cfg.rl.total_steps``.

    Args:
      cfg: an RL config (``configs/tracerl.py``).
      score_fn: batch reward ``(texts, examples, lengths) -> scores``;
        default: the task's verifier.

    Returns:
      The summary also written to ``<workdir>/summary.json``:
      ``initial_accuracy``, ``final_accuracy`` (None without held-out
      prompts), ``steps`` (the last completed RL step), ``preempted``
      (stopped early by SIGTERM after checkpointing ``steps``) and ``export``.
    """
    return rl.train(rl.build_run(cfg, score_fn=score_fn), step_fn=rl.rl_step)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    rl.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, auto=FLAGS.distributed)
    summary = train(FLAGS.config, score_fn=rl.specs.load_scorer(FLAGS.reward) if FLAGS.reward else None)
    if summary["preempted"]:
        sys.exit(rl.EXIT_PREEMPTED)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main)
