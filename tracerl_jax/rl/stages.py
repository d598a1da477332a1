"""The stages of one TraceRL iteration, as functions an RL loop composes.

    rollout -> rewards -> group advantages -> training rows
            -> (old values) -> advantages -> old log-probs -> policy updates
            -> (value updates)

``examples/tracerl.py`` wires these into the full loop; the notebook runs a
few iterations with them. Each stage is a small function so a researcher can
swap one (another reward, another row builder, another advantage) by editing
a few lines, or register a new row builder (:data:`ROW_BUILDERS`), advantage
estimator (``advantages.ADVANTAGE_ESTIMATORS``) or policy loss
(``losses.POLICY_LOSSES``) and select it by name. The model family
(:mod:`tracerl_jax.families`) supplies the rows' layout; nothing here
depends on it.

Shapes never depend on data: rollouts use a fixed batch and prompt bucket,
rows are built for all ``N * T`` (response, round) pairs, and the update
pipeline (:mod:`tracerl_jax.rl.pipeline`) packs them into a fixed number of
update batches on device. A steady-state iteration compiles nothing new.

Multi-process (``jax.distributed``): each process rolls out its share of the
prompts with :func:`response_keys` (keys from the *global* prompt index, so a
response does not depend on how many processes there are) and scores whole
groups locally; :func:`globalize` then makes the step's arrays global (each
process contributes its rows, nothing is gathered to a host), and rows,
scores, advantages and updates are global computations over all devices.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import advantages as adv_lib
from tracerl_jax import baselines, trajectory
from tracerl_jax.families import Family, RowSettings
from tracerl_jax.registry import Registry
from tracerl_jax.rows import Rows
from tracerl_jax.rl.distributed import allgather, rows_sharding, to_global
from tracerl_jax.sampling.block_sampler import Rollout
from tracerl_jax.tokenizers import encode_batch


@dataclasses.dataclass
class RolloutBatch:
    """One RL step's rollouts and rewards.

    A process's own batch holds host arrays (:func:`rollout_and_reward`);
    :func:`globalize` turns its arrays into the step's global device arrays.

    Attributes:
      prompts: int32 ``[N, L0]`` left-padded prompts (each prompt repeated ``k`` times,
        its responses consecutive).
      prompt_valid: bool ``[N, L0]``.
      rollout: the sampler's :class:`Rollout` (``[N, G]``).
      texts: the ``N`` decoded completions.
      scores: float32 ``[P, k]`` verifier scores.
      advantages: float32 ``[N]`` group z-scores (§7.4).
      keep: bool ``[N]`` whether the response's group survived the filter.
      score_seconds: wall seconds ``score_fn`` took on this process (the sandbox's time
        for a code task), part of the rollout time.
    """

    prompts: np.ndarray
    prompt_valid: np.ndarray
    rollout: Rollout
    texts: list
    scores: np.ndarray
    advantages: np.ndarray
    keep: np.ndarray
    score_seconds: float = 0.0


def decode_completions(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts (EOS and everything after it removed)."""
    tokens = np.asarray(rollout.tokens)
    lengths = np.asarray(rollout.lengths)
    out = []
    for row, n in zip(tokens, lengths):
        ids = [int(t) for t in row[:n]]
        if ids and ids[-1] == tokenizer.eos_id:
            ids = ids[:-1]
        out.append(tokenizer.decode(ids, skip_special_tokens=True))
    return out


def rollout_and_reward(sample_fn: Callable, params, tokenizer, examples: Sequence, *, k: int, prompt_len: int,
                       rng: Optional[jax.Array] = None, score_fn: Callable, group_filter: str = "constant",
                       keep_range: tuple[float, float] = (0.2, 0.8),
                       truncation_cap: Optional[int] = None,
                       row_keys: Optional[jax.Array] = None) -> RolloutBatch:
    """Samples ``k`` responses per prompt and scores them (§1.9, §7.4).

    Args:
      sample_fn: from :func:`tracerl_jax.sampling.make_block_sampler`.
      params: policy parameters.
      tokenizer: the :class:`tracerl_jax.tokenizers.Tokenizer`.
      examples: ``P`` task examples (``.question``).
      k: responses per prompt.
      prompt_len: padded prompt length ``L0`` (static bucket).
      rng: PRNG key for this RL step (split into one key per response).
      score_fn: ``(texts, examples, lengths) -> scores`` for the whole batch,
        e.g. :func:`tracerl_jax.evaluation.default_verifier` (task verifiers,
        or math-verify for MATH-style data).
      group_filter: ``"none"``, ``"constant"`` (drop groups with identical
        scores, the code rule) or ``"range"`` (keep ``keep_range`` accuracy,
        the math rule).
      keep_range: accuracy range of the ``"range"`` filter.
      truncation_cap: math rule of §7.4: a response of ``>= cap - 5`` tokens
        scores 0 (``None``: off).
      row_keys: instead of ``rng``, one key per response ``[P * k]`` (e.g.
        :func:`response_keys`), so a response is reproducible whatever the
        batch it is sampled in.

    Returns:
      :class:`RolloutBatch` with ``N = P * k`` responses.

    Raises:
      ValueError: a bad ``group_filter``, both or neither of ``rng`` and
        ``row_keys``, or ``row_keys`` of the wrong length.
    """
    if group_filter not in ("none", "constant", "range"):
        raise ValueError(f"group_filter must be 'none', 'constant' or 'range', got {group_filter!r}")
    if (rng is None) == (row_keys is None):
        raise ValueError("pass exactly one of rng (one key for the batch) and row_keys (one per response)")
    if row_keys is not None and row_keys.shape != (len(examples) * k,):
        raise ValueError(f"row_keys must have shape [P*k] = [{len(examples) * k}], got {tuple(row_keys.shape)}")
    texts_in = [tokenizer.chat_prompt(ex.question) for ex in examples for _ in range(k)]
    prompts, valid = encode_batch(tokenizer, texts_in, side="left", length=prompt_len)
    ro = sample_fn(params, prompts, valid, rng=rng) if row_keys is None else sample_fn(params, prompts, valid,
                                                                                       row_keys=row_keys)
    texts = decode_completions(tokenizer, ro)
    lengths = np.asarray(ro.lengths)
    t_score = time.perf_counter()
    scores = np.asarray(score_fn(texts, [e for e in examples for _ in range(k)], lengths), np.float32)
    score_seconds = time.perf_counter() - t_score
    if truncation_cap is not None:
        scores = np.asarray(adv_lib.truncation_penalty(scores, lengths, truncation_cap))
    scores = scores.reshape(len(examples), k)
    adv, keep = adv_lib.group_normalize(scores, keep_range=keep_range if group_filter == "range" else None,
                                        drop_constant=group_filter == "constant")
    return RolloutBatch(prompts, valid, ro, texts, scores, np.asarray(adv).reshape(-1),
                        np.repeat(np.asarray(keep), k), score_seconds)


# Training-row builders of the RL methods (``rl.method``):
# ``fn(batch: RolloutBatch, *, family: Family, settings: RowSettings, key) -> Rows``.
# A builder lays its rows out with ``family.layout(settings)``, so it works for every family.
ROW_BUILDERS: Registry = Registry("RL method")


@ROW_BUILDERS.register("TraceRL")
def trace_rows(batch: "RolloutBatch", *, family: Family, settings: RowSettings, key: jax.Array) -> Rows:
    """TraceRL (§4, §5): replay each recorded trajectory, one row per decoding round."""
    del key
    return trajectory.rows_from_rollout(
        jnp.asarray(batch.prompts), jnp.asarray(batch.prompt_valid), batch.rollout, layout=family.layout(settings),
        mask_id=settings.mask_id, pad_id=settings.pad_id, shrink=settings.shrink, post_num=settings.post_num,
        compat=settings.compat, completion_only=family.scores_completion_only(settings), pack=settings.pack).rows


def _masked_rows(batch: "RolloutBatch", family: Family, settings: RowSettings, key, coupled: bool) -> Rows:
    ro = batch.rollout
    response = jnp.where(completion_mask(batch), jnp.asarray(ro.tokens), settings.pad_id)  # PAD after the completion
    return baselines.random_masking_rows(
        key, jnp.asarray(batch.prompts), jnp.asarray(batch.prompt_valid), response, layout=family.layout(settings),
        mask_id=settings.mask_id, pad_id=settings.pad_id, lower_p=settings.lower_p, upper_p=settings.upper_p,
        ratio=settings.mask_ratio, num_draws=settings.num_draws, coupled=coupled, post_num=settings.post_num,
        compat=settings.compat, response_valid=jnp.asarray(ro.lengths) > 0)


@ROW_BUILDERS.register("random_masking")
def random_masking_rows(batch: "RolloutBatch", *, family: Family, settings: RowSettings, key: jax.Array) -> Rows:
    """The random-masking baseline (§9): random masks on the completion, ``PAD`` after it."""
    return _masked_rows(batch, family, settings, key, coupled=False)


@ROW_BUILDERS.register("coupled")
def coupled_rows(batch: "RolloutBatch", *, family: Family, settings: RowSettings, key: jax.Array) -> Rows:
    """The coupled baseline (§9): random masks and their complements."""
    return _masked_rows(batch, family, settings, key, coupled=True)


def build_policy_rows(method: str, batch: RolloutBatch, *, family: Family, settings: RowSettings,
                      key: jax.Array) -> tuple[Rows, jax.Array]:
    """Training rows of the RL method ``method`` (a :data:`ROW_BUILDERS` name) for every response.

    Rows of groups the reward filter dropped are marked invalid.

    Args:
      method: ``"TraceRL"``, ``"random_masking"``, ``"coupled"`` or a
        registered builder.
      batch: the step's :class:`RolloutBatch` (``N`` responses, ``G`` columns).
      family: the policy's :class:`~tracerl_jax.families.Family` (its layout).
      settings: :class:`~tracerl_jax.families.RowSettings`.
      key: PRNG key of random masks.

    Returns:
      ``(rows, completion)``: :class:`~tracerl_jax.rows.Rows` and bool ``[N, G]``
      (device arrays, global in a multi-process run).
    """
    rows = ROW_BUILDERS.get(method)(batch, family=family, settings=settings, key=key)
    keep = jnp.asarray(batch.keep)[rows.response_index]
    return rows._replace(row_valid=rows.row_valid & keep), completion_mask(batch)


def completion_mask(batch: RolloutBatch) -> jax.Array:
    """bool ``[N, G]``: the response tokens of each completion (EOS included)."""
    ro = batch.rollout
    return jnp.arange(ro.tokens.shape[1])[None] < jnp.asarray(ro.lengths)[:, None]


def response_targets(batch: RolloutBatch, completion: jax.Array, *, family: Family,
                     settings: RowSettings) -> tuple[jax.Array, jax.Array]:
    """What GAE needs per response (§8.3): ``(step_ids int32 [N, L1], trainable bool [N, L1])``.

    ``step_ids`` is the aligned step map shrunk per span of the family's
    layout; ``trainable`` the completion tokens the ``post_num`` rule keeps.
    """
    L1 = completion.shape[1]
    steps = jnp.asarray(batch.rollout.step_map)[:, :L1]
    step_ids, _ = trajectory.trace_step_ids(steps, jnp.sum(steps > 0, axis=1), layout=family.layout(settings),
                                            shrink=settings.shrink)
    response = jnp.where(completion, jnp.asarray(batch.rollout.tokens)[:, :L1], settings.pad_id)
    return step_ids, completion & trajectory.trainable_mask(response, settings.pad_id, settings.post_num)


def advantage_inputs(rows: Rows, batch: RolloutBatch, completion: jax.Array, *, family: Family,
                     settings: RowSettings, old_values: Optional[jax.Array] = None) -> adv_lib.AdvantageInputs:
    """What an advantage estimator needs of one RL step (§7.4, §8.2–8.3), for rows ``[R, ...]``.

    The terminal reward of GAE is the group z-score (Q-V3), placed on the
    last trace step among the trainable completion tokens. (The RL loop uses
    :func:`tracerl_jax.rl.pipeline.batch_advantages` on update batches; this
    is the same for rows in any other arrangement.)

    Args:
      rows: ``R`` rows of the step's responses.
      batch: the step's :class:`RolloutBatch` (``N`` responses).
      completion: bool ``[N, L1]``.
      family, settings: how the rows were built.
      old_values: float32 ``[R, L1]`` value-model outputs of ``rows``, or None.
    """
    if old_values is not None and np.shape(old_values) != np.shape(rows.p_mask):
        raise ValueError(f"old_values must have the rows' shape {np.shape(rows.p_mask)}, got {np.shape(old_values)}")
    step_ids, trainable = response_targets(batch, jnp.asarray(completion), family=family, settings=settings)
    rows = jax.tree.map(jnp.asarray, rows)
    return adv_lib.AdvantageInputs(rows.scored, rows.response_index, jnp.asarray(batch.advantages, jnp.float32),
                                   step_ids, trainable, None if old_values is None else jnp.asarray(old_values))


def compute_advantages(name: str, inputs: adv_lib.AdvantageInputs, *, gamma: float = 1.0,
                       lam: float = 1.0) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Runs the advantage estimator ``name`` (``advantages.ADVANTAGE_ESTIMATORS``), jitted.

    Returns:
      ``(advantages [R, L1], returns [R, L1] or None)`` as NumPy float32.
    """
    adv, ret = _estimate(adv_lib.ADVANTAGE_ESTIMATORS.get(name), inputs, jnp.float32(gamma), jnp.float32(lam))
    return np.asarray(adv), None if ret is None else np.asarray(ret)


@partial(jax.jit, static_argnums=0)
def _estimate(fn, inputs, gamma, lam):
    return fn(inputs, gamma=gamma, lam=lam)


def rollout_metrics(batch: RolloutBatch) -> dict:
    """Scalar summaries of a rollout over every process: reward, kept groups, length, tokens per forward.

    ``batch`` is this process's (host) batch; sums and counts are added up
    over processes, so the numbers do not depend on how many there are.
    """
    ro = batch.rollout
    lengths = np.asarray(ro.lengths, np.float64)
    steps = np.maximum(np.asarray(ro.num_steps), 1)
    groups = batch.keep.reshape(batch.scores.shape)[:, 0]
    local = np.array([batch.scores.sum(), batch.scores.size, groups.sum(), groups.size, lengths.sum(),
                      (lengths / steps).sum(), lengths.size], np.float64)
    t = allgather(local).sum(axis=0)
    return {"reward": float(t[0] / t[1]), "kept_groups": float(t[2] / t[3]), "response_length": float(t[4] / t[6]),
            "tokens_per_forward": float(t[5] / t[6])}


# ---------------------------------------------------------------------------
# Multi-host: per-process rollouts, one global batch
# ---------------------------------------------------------------------------


def response_keys(rng: jax.Array, num_prompts: int, k: int, first_prompt: int = 0) -> jax.Array:
    """One PRNG key per response, from the prompt's index in the *global* batch.

    Response ``j`` of global prompt ``g`` samples with
    ``fold_in(fold_in(rng, g), j)``. A process that rolls out prompts
    ``[first_prompt, first_prompt + num_prompts)`` of the step's batch gets
    exactly the keys a single process would use for them, so the sampled
    tokens do not depend on the number of processes.

    Args:
      rng: this RL step's rollout key.
      num_prompts: ``P`` prompts rolled out here.
      k: responses per prompt.
      first_prompt: global index of the first of them.

    Returns:
      Keys ``[P * k]``, the responses of a prompt consecutive.
    """
    if num_prompts < 1 or k < 1 or first_prompt < 0:
        raise ValueError(f"need num_prompts >= 1, k >= 1, first_prompt >= 0; got {num_prompts}, {k}, {first_prompt}")
    g = jnp.repeat(jnp.arange(first_prompt, first_prompt + num_prompts, dtype=jnp.uint32), k)
    j = jnp.tile(jnp.arange(k, dtype=jnp.uint32), num_prompts)
    return jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(rng, a), b))(g, j)


def globalize(batch: RolloutBatch, mesh) -> RolloutBatch:
    """This process's :class:`RolloutBatch` -> the step's, with global device arrays.

    Each process contributes its own responses (whole prompt groups, in
    process order: the global prompt order of
    :class:`~tracerl_jax.data.ExampleIterator`), sharded over the mesh's
    batch axes; nothing is gathered to a host. Rewards and group advantages
    were computed per group, so they need no reduction. ``texts`` and
    ``scores`` stay this process's.
    """
    sharding = rows_sharding(mesh)
    prompts, valid, advantages, keep, rollout = to_global(
        (batch.prompts, batch.prompt_valid, batch.advantages, batch.keep, tuple(batch.rollout)), sharding)
    return dataclasses.replace(batch, prompts=prompts, prompt_valid=valid, rollout=Rollout(*rollout),
                               advantages=advantages, keep=keep)
