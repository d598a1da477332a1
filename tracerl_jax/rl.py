"""The stages of one TraceRL iteration, as functions an RL loop composes.

    rollout -> rewards -> group advantages -> training rows
            -> (old values -> step-level GAE) -> old log-probs -> policy updates
            -> (value updates)

``examples/tracerl.py`` wires these into the full loop; the notebook runs a
few iterations with them. Each stage is a small function so a researcher can
swap one (another reward, another row builder, another advantage) by editing
a few lines.

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
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import advantages as adv_lib
from tracerl_jax import baselines, trajectory
from tracerl_jax.sampling.block_sampler import Rollout
from tracerl_jax.scoring import rows_from_rollout
from tracerl_jax.tokenizers import encode_batch
from tracerl_jax.train import steps as steps_lib
from tracerl_jax.train.step import to_microbatches

METHODS = ("TraceRL", "random_masking", "coupled")


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


def build_policy_rows(method: str, batch: RolloutBatch, *, block_size: int, mask_id: int, pad_id: int,
                      key: jax.Array, shrink: int = 1, post_num=0, lower_p: float = 0.1, upper_p: float = 0.9,
                      mask_ratio: str = "block") -> tuple[trajectory.TrainRows, np.ndarray]:
    """Training rows of the chosen method for every response (§4, §9.1).

    ``TraceRL`` replays the recorded trajectory; ``random_masking`` and
    ``coupled`` are the baselines (random masks, and random masks plus their
    complements). Rows of filtered groups are marked invalid.

    Returns:
      ``(rows, completion)``: :class:`TrainRows` and bool ``[N, L1]``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    ro = batch.rollout
    prompts, valid = jnp.asarray(batch.prompts), jnp.asarray(batch.prompt_valid)
    completion = jnp.arange(ro.tokens.shape[1])[None] < ro.lengths[:, None]
    if method == "TraceRL":
        rr = rows_from_rollout(prompts, valid, ro, block_size=block_size, mask_id=mask_id, pad_id=pad_id,
                               shrink=shrink, post_num=post_num)
        rows = rr.rows
    else:
        response = jnp.where(completion, ro.tokens, pad_id)
        builder = baselines.random_masking_rows if method == "random_masking" else baselines.coupled_rows
        rows = builder(key, prompts, valid, response, block_size=block_size, mask_id=mask_id, pad_id=pad_id,
                       lower_p=lower_p, upper_p=upper_p, ratio=mask_ratio, post_num=post_num,
                       response_valid=ro.lengths > 0)
    keep = jnp.asarray(batch.keep)[rows.response_index]
    rows = rows._replace(row_valid=rows.row_valid & keep)
    return rows, np.asarray(completion)


def pack_rows(rows: trajectory.TrainRows, batch_rows: int) -> tuple[trajectory.TrainRows, np.ndarray, int]:
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


def value_advantages(value_graphdef, value_params, rows: trajectory.TrainRows, num_batches: int,
                     batch_rows: int, batch: RolloutBatch, completion: np.ndarray, *, block_size: int,
                     shrink: int, pad_id: int, post_num, gamma: float, lam: float, micro_batch: int):
    """Old values, token rewards and step-level GAE (§8.2–8.4) on packed rows.

    The terminal reward is the group z-score (Q-V3), placed on the last trace
    step among trainable tokens.

    Returns:
      ``(old_values [R_pad, L1], advantages [R_pad, L1], returns [R_pad, L1])``
      as NumPy float32.
    """
    R_pad, L1 = rows.p_mask.shape[0], completion.shape[1]
    vals = np.zeros((R_pad, L1), np.float32)
    for i in range(num_batches):
        vals[i * batch_rows:(i + 1) * batch_rows] = np.asarray(
            steps_lib.old_values(value_graphdef, value_params, slice_rows(rows, i, batch_rows), micro_batch))
    A, R = step_advantages(vals, rows, batch, completion, block_size=block_size, shrink=shrink, pad_id=pad_id,
                           post_num=post_num, gamma=gamma, lam=lam)
    return vals, A, R


def step_advantages(old_values: np.ndarray, rows: trajectory.TrainRows, batch: RolloutBatch,
                    completion: np.ndarray, *, block_size: int, shrink: int, pad_id: int, post_num, gamma: float,
                    lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Step-level GAE (§8.2–8.4) from old values already computed on packed rows.

    The second half of :func:`value_advantages`, for loops that compute the
    old values themselves (e.g. with a sharded forward pass).

    Args:
      old_values: float32 ``[R_pad, L1]`` value-model outputs of the packed rows.
      rows: the packed rows (``R_pad`` of them).
      batch: the step's :class:`RolloutBatch` (``N`` responses).
      completion: bool ``[N, L1]``.

    Returns:
      ``(advantages [R_pad, L1], returns [R_pad, L1])`` as NumPy float32.
    """
    R_pad, L1 = rows.p_mask.shape[0], completion.shape[1]
    if np.shape(old_values) != (R_pad, L1):
        raise ValueError(f"old_values must be [R_pad, L1] = [{R_pad}, {L1}], got {np.shape(old_values)}")
    vals = np.asarray(old_values, np.float32)
    step_ids, ok = trajectory.trace_step_ids(batch.rollout.step_map[:, :L1],
                                             jnp.sum(batch.rollout.step_map[:, :L1] > 0, axis=1),
                                             block_size=block_size, shrink=shrink)
    response = np.where(completion, np.asarray(batch.rollout.tokens)[:, :L1], pad_id)
    trainable = jnp.asarray(completion) & trajectory.trainable_mask(jnp.asarray(response), pad_id, post_num)
    token_rewards = adv_lib.outcome_token_rewards(jnp.asarray(batch.advantages), step_ids, trainable)
    L0 = rows.p_mask.shape[1] - L1
    row_values = np.concatenate([np.zeros((R_pad, L0), np.float32), vals], axis=1)
    A, R = _gae_rows(jax.tree.map(jnp.asarray, rows), jnp.asarray(row_values), token_rewards, step_ids,
                     trainable, gamma, lam)
    return np.asarray(A)[:, L0:], np.asarray(R)[:, L0:]


@jax.jit
def _gae_rows(rows, row_values, token_rewards, step_ids, trainable, gamma, lam):
    return adv_lib.step_gae_rows(rows, row_values, token_rewards, step_ids, trainable, gamma=gamma, lam=lam)


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
