"""AdamW with global-norm clipping and explicit learning-rate schedules.

The learning rate is an optimizer-state hyper-parameter
(``optax.inject_hyperparams``) that the train step sets from a traced scalar
every update, so any schedule -- including ones whose horizon changes from
one RL step to the next -- runs without recompiling.

Schedules (quirk Q-O1): the reference builds a fresh cosine scheduler for each
RL step and ignores ``min_lr_scale``, so the rate is a half-cosine saw-tooth
that decays to ~0 inside every RL step. Here:

* ``constant``: ``lr`` (what ``min_lr_scale: 1.0`` in the reference configs
  probably meant; our default).
* ``cosine``: one global cosine from ``lr`` to ``lr * min_lr_scale`` over
  ``total_updates`` after ``warmup`` linear steps (``min_lr_scale`` honoured).
* ``cosine_per_rl_step``: the reference saw-tooth, restarted every RL step
  with that step's horizon (``compat="reference"``).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "cosine_per_rl_step")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings (ALGORITHMS.md §6.6 defaults for the policy).

    Attributes:
      learning_rate: peak learning rate.
      schedule: one of :data:`SCHEDULES`.
      warmup: linear warm-up updates (``cosine`` only).
      min_lr_scale: final fraction of ``learning_rate`` (``cosine`` only).
      total_updates: horizon of ``cosine``.
      b1, b2, eps, weight_decay: AdamW.
      max_grad_norm: global-norm clip (``None`` disables).
    """

    learning_rate: float = 1e-6
    schedule: str = "constant"
    warmup: int = 0
    min_lr_scale: float = 1.0
    total_updates: int = 1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_scale <= 1.0:
            raise ValueError(f"min_lr_scale must be in [0, 1], got {self.min_lr_scale}")
        if self.total_updates < 1 or self.warmup < 0:
            raise ValueError("total_updates must be >= 1 and warmup >= 0")


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW (+ optional clipping) whose learning rate lives in the state.

    Returns:
      An optax transformation; set the rate with :func:`set_learning_rate`.
    """
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.max_grad_norm is None:
        return optax.chain(optax.identity(), adamw)
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


def set_learning_rate(opt_state, lr):
    """Returns ``opt_state`` with the injected learning rate replaced by ``lr``."""
    clip_state, adam_state = opt_state
    hp = dict(adam_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, dtype=jnp.asarray(hp["learning_rate"]).dtype)
    return (clip_state, adam_state._replace(hyperparams=hp))


def learning_rate(cfg: OptimizerConfig, update: int, updates_this_rl_step: int = 1,
                  update_in_rl_step: int = 0) -> float:
    """Learning rate of one update (host-side, cheap).

    Args:
      cfg: optimizer settings.
      update: global update index (0-based), used by ``cosine``.
      updates_this_rl_step: the current RL step's horizon, used by
        ``cosine_per_rl_step`` (the reference uses ``ceil(rows / global
        batch) * epochs + 1``).
      update_in_rl_step: update index inside the RL step (0-based).

    Returns:
      The learning rate as a Python float.
    """
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "cosine":
        if update < cfg.warmup:
            return lr * (update + 1) / (cfg.warmup + 1)
        span = max(cfg.total_updates - cfg.warmup, 1)
        t = min((update - cfg.warmup) / span, 1.0)
        floor = lr * cfg.min_lr_scale
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    t = min(update_in_rl_step / max(updates_this_rl_step, 1), 1.0)
    return lr * 0.5 * (1.0 + math.cos(math.pi * t))
