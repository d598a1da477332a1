"""The full-attention (LLaDA / Dream) versions of the RL iteration stages of :mod:`tracerl_jax.rl`.

Only the stages whose rows differ are here; everything else of ``rl``
(``rollout_and_reward``, ``pack_rows``, ``slice_rows``, ``update_batches``,
``rollout_metrics``, the multi-host helpers) and of ``train.steps`` (old
log-probs/values, the policy, value and SFT steps) takes full-attention rows
unchanged. A loop switches on the model family::

    sample_fn = make_sampler(mcfg, graphdef, rollout_settings...)   # block or full sampler
    if mcfg.family == "sdar":
        rows, completion = rl.build_policy_rows(...)
    else:
        rows, completion = rl_full.build_policy_rows(method, batch, family=mcfg.family, ...)

Per-token arrays (log-probs, advantages, values) are ``[R, L1]`` with
``L1 = gen_length`` in both cases, so the rest of the loop is shared.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import advantages as adv_lib
from tracerl_jax import trajectory
from tracerl_jax.baselines_full import full_random_masking_rows
from tracerl_jax.rl import METHODS, RolloutBatch
from tracerl_jax.trajectory_full import FullRows, full_step_gae_rows, full_trace_step_ids, rows_from_full_rollout


def build_policy_rows(method: str, batch: RolloutBatch, *, family: str, mask_id: int, pad_id: int, key: jax.Array,
                      shrink: int = 1, post_num: Optional[int] = 0, lower_p: float = 0.1, upper_p: float = 0.9,
                      num_draws: int = 1, max_rounds: Optional[int] = None,
                      compat: str = "recommended") -> tuple[FullRows, np.ndarray]:
    """Full-attention training rows of the chosen method for every response (§5, §9.2).

    ``TraceRL`` replays the recorded trajectory with shrinkage ``shrink``
    (the reference default is 8); ``random_masking`` / ``coupled`` draw
    ``num_draws`` masks per response (the reference's
    ``mask_times_per_sample`` is 35), on the completion with ``PAD`` after it.
    Rows of filtered groups are marked invalid.

    Args:
      method: one of ``rl.METHODS``.
      batch: the step's :class:`~tracerl_jax.rl.RolloutBatch` from the
        full-attention sampler.
      family: ``"llada"`` or ``"dream"`` (the model's ``config.family``).
      mask_id, pad_id: token ids.
      key: PRNG key of the baseline masks.
      shrink, post_num, max_rounds, compat: see
        :func:`tracerl_jax.trajectory_full.rows_from_full_rollout`.
      lower_p, upper_p, num_draws: the baselines' masking (§9.2).

    Returns:
      ``(rows, completion)``: :class:`FullRows` and bool ``[N, L1]``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    ro = batch.rollout
    prompts, valid = jnp.asarray(batch.prompts), jnp.asarray(batch.prompt_valid)
    completion = jnp.arange(ro.tokens.shape[1])[None] < jnp.asarray(ro.lengths)[:, None]
    if method == "TraceRL":
        rows = rows_from_full_rollout(prompts, valid, ro, mask_id=mask_id, pad_id=pad_id, family=family,
                                      shrink=shrink, post_num=post_num, max_rounds=max_rounds, compat=compat).rows
    else:
        response = jnp.where(completion, jnp.asarray(ro.tokens), pad_id)
        rows = full_random_masking_rows(key, prompts, valid, response, mask_id=mask_id, pad_id=pad_id, family=family,
                                        num_draws=num_draws, lower_p=lower_p, upper_p=upper_p, post_num=post_num,
                                        coupled=method == "coupled", response_valid=jnp.asarray(ro.lengths) > 0,
                                        compat=compat)
    keep = jnp.asarray(batch.keep)[rows.response_index]
    return rows._replace(row_valid=rows.row_valid & keep), np.asarray(completion)


def step_advantages(old_values: np.ndarray, rows: FullRows, batch: RolloutBatch, completion: np.ndarray, *,
                    shrink: int, pad_id: int, post_num: Optional[int], gamma: float,
                    lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Step-level GAE (§8.2–8.4) over the shrunk trace steps of full-attention rows.

    The value model has the policy's architecture plus a value head (the
    reference has none for full attention); ``V_j^old`` is read where token
    ``j``'s log-prob is read. The terminal reward is the group z-score (Q-V3),
    placed on the last trace step among trainable completion tokens.

    Args:
      old_values: float32 ``[R_pad, L1]`` value-model outputs of the packed rows.
      rows: the packed :class:`FullRows`.
      batch: the step's :class:`~tracerl_jax.rl.RolloutBatch` (``N`` responses).
      completion: bool ``[N, L1]``.
      shrink, pad_id, post_num: as used to build the rows.
      gamma, lam: GAE ``γ``, ``λ``.

    Returns:
      ``(advantages [R_pad, L1], returns [R_pad, L1])`` as NumPy float32.
    """
    N, L1 = np.shape(completion)
    if np.shape(old_values) != np.shape(rows.p_mask):
        raise ValueError(f"old_values must have the rows' shape {np.shape(rows.p_mask)}, got {np.shape(old_values)}")
    step_ids = full_trace_step_ids(batch.rollout.step_map, np.full((N,), L1), shrink=shrink)
    response = np.where(completion, np.asarray(batch.rollout.tokens), pad_id)
    trainable = jnp.asarray(completion) & trajectory.trainable_mask(jnp.asarray(response), pad_id, post_num)
    token_rewards = adv_lib.outcome_token_rewards(jnp.asarray(batch.advantages), step_ids, trainable)
    A, R = _gae(jax.tree.map(jnp.asarray, rows), jnp.asarray(old_values, jnp.float32), token_rewards, step_ids,
                trainable, gamma, lam)
    return np.asarray(A), np.asarray(R)


@jax.jit
def _gae(rows, values, token_rewards, step_ids, trainable, gamma, lam):
    return full_step_gae_rows(rows, values, token_rewards, step_ids, trainable, gamma=gamma, lam=lam)
