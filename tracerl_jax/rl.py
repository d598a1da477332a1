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
rows are built for all ``N * T`` (response, round) pairs, filtered rows are
moved to the back by a host permutation (no compile), and updates consume
fixed-size slices. A steady-state iteration compiles nothing new.

Multi-host (``jax.distributed``): each process rolls out its share of the
prompts with :func:`response_keys` (keys from the *global* prompt index, so a
response does not depend on how many processes there are), scores whole
groups locally, then :func:`gather_rollouts` gives every process the whole
step's rollouts. Rows, packing and update batches are then built identically
everywhere and :func:`to_global` hands each process's devices their slice of
every batch. Only the (cheap) row bookkeeping is repeated per process; the
rollouts and the forward/backward passes are split.
"""

from __future__ import annotations

import dataclasses
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
from tracerl_jax.sampling.block_sampler import Rollout
from tracerl_jax.tokenizers import encode_batch
from tracerl_jax.train.step import to_microbatches


@dataclasses.dataclass
class RolloutBatch:
    """One RL step's rollouts and rewards (host-side record).

    Attributes:
      prompts: int32 ``[N, L0]`` left-padded prompts (each prompt repeated ``k`` times,
        its responses consecutive).
      prompt_valid: bool ``[N, L0]``.
      rollout: the sampler's :class:`Rollout` (device arrays, ``[N, G]``).
      texts: the ``N`` decoded completions.
      scores: float32 ``[P, k]`` verifier scores.
      advantages: float32 ``[N]`` group z-scores (§7.4).
      keep: bool ``[N]`` whether the response's group survived the filter.
    """

    prompts: np.ndarray
    prompt_valid: np.ndarray
    rollout: Rollout
    texts: list
    scores: np.ndarray
    advantages: np.ndarray
    keep: np.ndarray


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
    scores = np.asarray(score_fn(texts, [e for e in examples for _ in range(k)], lengths), np.float32)
    if truncation_cap is not None:
        scores = np.asarray(adv_lib.truncation_penalty(scores, lengths, truncation_cap))
    scores = scores.reshape(len(examples), k)
    adv, keep = adv_lib.group_normalize(scores, keep_range=keep_range if group_filter == "range" else None,
                                        drop_constant=group_filter == "constant")
    return RolloutBatch(prompts, valid, ro, texts, scores, np.asarray(adv).reshape(-1),
                        np.repeat(np.asarray(keep), k))


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
        compat=settings.compat, completion_only=family.scores_completion_only(settings)).rows


def _masked_rows(batch: "RolloutBatch", family: Family, settings: RowSettings, key, coupled: bool) -> Rows:
    ro = batch.rollout
    completion = jnp.arange(ro.tokens.shape[1])[None] < jnp.asarray(ro.lengths)[:, None]
    response = jnp.where(completion, jnp.asarray(ro.tokens), settings.pad_id)  # PAD after the completion
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
                      key: jax.Array) -> tuple[Rows, np.ndarray]:
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
      ``(rows, completion)``: :class:`~tracerl_jax.rows.Rows` and bool ``[N, G]``.
    """
    rows = ROW_BUILDERS.get(method)(batch, family=family, settings=settings, key=key)
    ro = batch.rollout
    completion = np.arange(ro.tokens.shape[1])[None] < np.asarray(ro.lengths)[:, None]
    keep = jnp.asarray(batch.keep)[rows.response_index]
    return rows._replace(row_valid=rows.row_valid & keep), completion


def pack_rows(rows: Rows, batch_rows: int) -> tuple[Rows, np.ndarray, int]:
    """Moves valid rows to the front (stable) and pads to a multiple of ``batch_rows``.

    The permutation is computed on the host and applied with NumPy, so the
    packed array has a static size ``round_up(R, batch_rows)`` and nothing
    compiles.

    Returns:
      ``(packed rows (NumPy), order [R_pad] source row of each packed row,
      number of update batches holding at least one valid row)``.
    """
    host = jax.tree.map(np.asarray, rows)
    R = host.row_valid.shape[0]
    R_pad = -(-R // batch_rows) * batch_rows
    order = np.argsort(~host.row_valid, kind="stable")
    if R_pad > R:
        order = np.concatenate([order, np.full(R_pad - R, order[-1])])
    packed = jax.tree.map(lambda a: a[order], host)
    n_valid = int(host.row_valid.sum())
    pad = np.arange(R_pad) >= n_valid
    packed = packed._replace(row_valid=packed.row_valid & ~pad, p_mask=packed.p_mask & ~pad[:, None])
    return packed, order, -(-n_valid // batch_rows)


def slice_rows(rows, i: int, batch_rows: int):
    """Rows ``[i*batch_rows, (i+1)*batch_rows)`` of a packed row set."""
    return jax.tree.map(lambda a: a[i * batch_rows:(i + 1) * batch_rows], rows)


def advantage_inputs(rows: Rows, batch: RolloutBatch, completion: np.ndarray, *, family: Family,
                     settings: RowSettings, old_values: Optional[np.ndarray] = None) -> adv_lib.AdvantageInputs:
    """What an advantage estimator needs of one RL step (§7.4, §8.2–8.3), from (packed) rows.

    The terminal reward of GAE is the group z-score (Q-V3); it is placed on
    the last trace step among the trainable completion tokens.

    Args:
      rows: the (packed) rows, ``R`` of them.
      batch: the step's :class:`RolloutBatch` (``N`` responses).
      completion: bool ``[N, L1]``.
      family, settings: how the rows were built (their trace steps are per
        span of ``family.layout(settings)``).
      old_values: float32 ``[R, L1]`` value-model outputs of ``rows``, or None.

    Returns:
      :class:`~tracerl_jax.advantages.AdvantageInputs` (host arrays).
    """
    N, L1 = np.shape(completion)
    if old_values is not None and np.shape(old_values) != np.shape(rows.p_mask):
        raise ValueError(f"old_values must have the rows' shape {np.shape(rows.p_mask)}, got {np.shape(old_values)}")
    steps = jnp.asarray(batch.rollout.step_map)[:, :L1]
    step_ids, _ = trajectory.trace_step_ids(steps, jnp.sum(steps > 0, axis=1), layout=family.layout(settings),
                                            shrink=settings.shrink)
    response = np.where(completion, np.asarray(batch.rollout.tokens)[:, :L1], settings.pad_id)
    trainable = jnp.asarray(completion) & trajectory.trainable_mask(jnp.asarray(response), settings.pad_id,
                                                                    settings.post_num)
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


def update_batches(rows, num_batches: int, batch_rows: int, grad_accum: int, L1_ref: float, *,
                   place: Optional[Callable] = None, **per_row):
    """Yields micro-batched update dicts ``{"rows", "num_rows", "L1_ref", **per_row}``.

    Every batch has the same shapes (``[GA, batch_rows / GA, ...]``);
    ``num_rows`` is the batch's valid-row count over ``GA``, so an update is
    the mean over the rows it really holds (the reference's ``1/B`` per row,
    with padding rows weighing nothing).

    Args:
      place: turns the host (NumPy) batch into device arrays; default
        ``jnp.asarray`` on the default device. A sharded loop passes
        ``lambda b: to_global(b, batch_sharding)``.
    """
    for i in range(num_batches):
        sl = lambda a: a[i * batch_rows:(i + 1) * batch_rows]
        b = {"rows": slice_rows(rows, i, batch_rows), **{k: sl(v) for k, v in per_row.items()}}
        b = jax.tree.map(np.asarray, b)
        nb = max(int(b["rows"].row_valid.sum()), 1)
        b["num_rows"] = np.full((batch_rows,), nb / grad_accum, np.float32)
        b["L1_ref"] = np.full((batch_rows,), L1_ref, np.float32)
        b = to_microbatches(b, grad_accum)
        yield place(b) if place is not None else jax.tree.map(jnp.asarray, b)


def rollout_metrics(batch: RolloutBatch) -> dict:
    """Scalar summaries of a rollout: reward, kept groups, length, tokens per forward."""
    ro = batch.rollout
    lengths = np.asarray(ro.lengths)
    steps = np.maximum(np.asarray(ro.num_steps), 1)
    return {
        "reward": float(batch.scores.mean()),
        "kept_groups": float(batch.keep.reshape(batch.scores.shape)[:, 0].mean()),
        "response_length": float(lengths.mean()),
        "tokens_per_forward": float((lengths / steps).mean()),
    }


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


def gather_rollouts(batch: RolloutBatch, tokenizer) -> RolloutBatch:
    """The whole step's :class:`RolloutBatch` on every process (host NumPy).

    Each process holds ``P/n`` complete prompt groups (``N/n`` responses);
    this concatenates them in process order, which is the global prompt
    order of :class:`~tracerl_jax.data.ExampleIterator`. Rewards and group
    advantages were computed per group, so they need no further reduction.
    Texts are re-decoded from the gathered tokens. With one process the
    batch comes back unchanged (no device round trip).

    Returns:
      A :class:`RolloutBatch` with ``N`` responses (NumPy arrays).
    """
    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils

    local = {"prompts": batch.prompts, "prompt_valid": batch.prompt_valid, "scores": batch.scores,
             "advantages": batch.advantages, "keep": batch.keep,
             "rollout": jax.tree.map(np.asarray, batch.rollout)}
    g = jax.tree.map(np.asarray, multihost_utils.process_allgather(local, tiled=True))
    rollout = Rollout(*g["rollout"])
    return RolloutBatch(g["prompts"], g["prompt_valid"], rollout, decode_completions(tokenizer, rollout),
                        g["scores"], g["advantages"], g["keep"])


def to_global(tree, sharding):
    """Host arrays that are identical on every process -> global ``jax.Array``\\ s.

    Each process passes the *whole* array (``global_shape == local shape``) and
    ``jax.make_array_from_process_local_data`` keeps only the slices its own
    devices hold under ``sharding`` (one sharding, or a matching pytree).
    """
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, tree)
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x), np.shape(x)),
                        tree, sharding)


def to_host(tree):
    """Global (possibly cross-process) arrays -> full NumPy arrays on every process."""
    def leaf(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(leaf, tree)
