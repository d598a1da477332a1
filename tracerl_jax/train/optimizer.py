"""AdamW with global-norm clipping and explicit learning-rate schedules.

The learning rate is an optimizer-state hyper-parameter
(``optax.inject_hyperparams``) that the train step sets from a traced scalar
every update, so any schedule -- including ones whose horizon changes from
one RL step to the next -- runs without recompiling.

Schedules (quirk Q-O1): the reference builds a fresh cosine scheduler for each
RL step and ignores ``min_lr_scale``, so the rate is a half-cosine saw-tooth
that decays to ~0 inside every RL step. Here:

* ``constant``: ``lr`` (what ``min_lr_scale: 1.0`` in the reference configs
  probably meant; our default), after ``warmup`` linear steps if any.
* ``cosine``: one global cosine from ``lr`` to ``lr * min_lr_scale`` over
  ``total_updates`` after ``warmup`` linear steps (``min_lr_scale`` honoured).
* ``cosine_per_rl_step``: the reference saw-tooth, restarted every RL step
  with that step's horizon (``compat="reference"``).

All three are optax schedules (:func:`make_schedule`); :func:`learning_rate`
evaluates them on the host for the step's traced ``lr`` argument.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "cosine_per_rl_step")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings (docs/algorithms.md §6.6 defaults for the policy).

    Attributes:
      learning_rate: peak learning rate.
      schedule: one of :data:`SCHEDULES`.
      warmup: linear warm-up ticks of the schedule's clock (``constant`` and
        ``cosine``): tick ``u`` runs at ``lr * (u + 1) / (warmup + 1)`` until
        ``u = warmup``. Adam's first updates move every weight by about
        ``lr`` whatever its gradient's size; a ramp keeps them from jolting
        a sharp warm start.
      min_lr_scale: final fraction of ``learning_rate`` (``cosine`` only).
      total_updates: horizon of ``cosine``, in ticks of the schedule's clock
        (updates in SFT, RL steps in RL: see :func:`learning_rate`).
      b1, b2, eps, weight_decay: AdamW.
      max_grad_norm: global-norm clip (``None`` disables).
      state_dtype: dtype of Adam's first moment (``None``: the parameters'
        dtype). optax keeps the second moment in the parameters' dtype, so
        float32 master weights keep a float32 ``nu`` either way.
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
    state_dtype: str | None = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_scale <= 1.0:
            raise ValueError(f"min_lr_scale must be in [0, 1], got {self.min_lr_scale}")
        if self.total_updates < 1 or self.warmup < 0:
            raise ValueError("total_updates must be >= 1 and warmup >= 0")
        if self.warmup and self.schedule == "cosine_per_rl_step":
            raise ValueError("warmup is not defined for the cosine_per_rl_step saw-tooth (it restarts every RL step)")
        if self.state_dtype is not None:
            from tracerl_jax.models.config import canonical_dtype

            object.__setattr__(self, "state_dtype", canonical_dtype(self.state_dtype, "state_dtype"))


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW (+ optional clipping) whose learning rate lives in the state.

    Returns:
      An optax transformation; set the rate with :func:`set_learning_rate`.
    """
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
        mu_dtype=None if cfg.state_dtype is None else jnp.dtype(cfg.state_dtype))
    if cfg.max_grad_norm is None:
        return optax.chain(optax.identity(), adamw)
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


def set_learning_rate(opt_state, lr):
    """Returns ``opt_state`` with every injected ``learning_rate`` replaced by ``lr``.

    Works for any optax state holding an ``optax.inject_hyperparams`` state
    (a chain of any shape, a wrapped optimizer), in or out of ``jit``.

    Args:
      opt_state: the optimizer state.
      lr: scalar (Python float or traced array); cast to the stored dtype.

    Raises:
      KeyError: the state holds no injected ``learning_rate``.
    """
    old = optax.tree.get_all_with_path(opt_state, "learning_rate")
    dtype = jnp.asarray(old[0][1]).dtype if old else jnp.float32
    return optax.tree.set(opt_state, learning_rate=jnp.asarray(lr, dtype=dtype))


def make_schedule(cfg: OptimizerConfig, updates_this_rl_step: int = 1) -> optax.Schedule:
    """The optax schedule of ``cfg`` (see the module docstring).

    Args:
      cfg: optimizer settings.
      updates_this_rl_step: the current RL step's horizon
        (``cosine_per_rl_step`` only).

    Returns:
      ``count -> rate``: the global update index for ``constant`` and
      ``cosine``, the update index inside the RL step for ``cosine_per_rl_step``.
    """
    lr = cfg.learning_rate
    if cfg.schedule == "cosine_per_rl_step":
        return optax.cosine_decay_schedule(lr, decay_steps=max(updates_this_rl_step, 1))
    if cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        after = optax.cosine_decay_schedule(lr, decay_steps=max(cfg.total_updates - cfg.warmup, 1),
                                            alpha=cfg.min_lr_scale)
    if cfg.warmup == 0:
        return after
    # Not warmup_cosine_decay_schedule: its alpha is end/peak (0/0 at lr=0). The ramp
    # lr*(u+1)/(warmup+1) reaches lr at u = warmup, where the constant or the cosine starts.
    ramp = optax.linear_schedule(lr / (cfg.warmup + 1), lr, transition_steps=cfg.warmup)
    return optax.join_schedules([ramp, after], [cfg.warmup])


def learning_rate(cfg: OptimizerConfig, update: int, updates_this_rl_step: int = 1,
                  update_in_rl_step: int = 0) -> float:
    """Learning rate of one update (host-side), from :func:`make_schedule`.

    Args:
      cfg: optimizer settings.
      update: the schedule's clock (0-based), used by ``constant`` and
        ``cosine``: the update index in SFT, the RL step in RL (whose updates
        per step vary, so only the step count is known in advance).
      updates_this_rl_step: the current RL step's horizon, used by
        ``cosine_per_rl_step`` (the reference uses ``ceil(rows / global
        batch) * epochs + 1``).
      update_in_rl_step: update index inside the RL step (0-based).

    Returns:
      The learning rate as a Python float.
    """
    count = update_in_rl_step if cfg.schedule == "cosine_per_rl_step" else update
    # float64: in float32 the cosine's 1 + cos(pi t) cancels near the end of a decay
    # (rates off by 1e-4 relative); the step casts the final value to float32 anyway.
    with jax.enable_x64(True):
        return float(make_schedule(cfg, updates_this_rl_step)(count))
