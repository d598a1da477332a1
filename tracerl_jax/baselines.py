"""Random-masking and coupled rows for block models (ALGORITHMS.md §9.1, §10.1).

The non-trajectory baselines train on the same extended layout as TraceRL
(``[prompt | clean | noised]``, §3.3) but mask response tokens at random
instead of replaying the sampler's trace. Every row builder here draws a
boolean mask per response and hands it to ``trajectory.assemble_rows``, so the
layout, positions, attention info and ``post_num`` rule are the TraceRL ones.

Masking ratio (``ratio``), Q-T5:

* ``"token"`` [REF]: per token ``u_t ~ U(lower_p, upper_p)``, ``v_t ~ U(0, 1)``,
  masked iff ``v_t <= u_t``, i.e. i.i.d. Bernoulli with mean
  ``(lower_p+upper_p)/2``; no per-row ratio at all.
* ``"block"`` [RECOMMENDED for block models]: one ``u ~ U(lower_p, upper_p)``
  per response block, shared by its tokens.
* ``"row"``: one ``u`` per row.

Randomness is explicit (Appendix A.3): ``key`` is split into one key per
response, so rows are a deterministic function of the key.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax.trajectory import (TrainRows, _check_common, _check_rank, _check_shape,
                                    apply_post_num, assemble_rows)

RATIOS = ("token", "row", "block")
ORDERS = ("interleaved", "appended")


def draw_masks(key: jax.Array, num_responses: int, response_len: int, *, block_size: int,
               lower_p: float = 0.1, upper_p: float = 0.9,
               ratio: str = "block") -> tuple[jax.Array, jax.Array]:
    """Random response masks (see the module docstring for ``ratio``).

    Args:
      key: PRNG key.
      num_responses: ``N``; response_len: ``L1``; block_size: ``b``.
      lower_p, upper_p: range of the masking threshold ``u``.
      ratio: ``"token"`` | ``"row"`` | ``"block"``.

    Returns:
      ``(masked bool [N, L1], threshold float32 [N, L1])``: ``threshold`` is
      each token's ``u`` (constant per row/block for those modes), e.g. the
      ``t`` of an MDLM ``1/t`` weighting.
    """
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if not 0.0 <= lower_p <= upper_p <= 1.0:
        raise ValueError(f"need 0 <= lower_p <= upper_p <= 1, got lower_p={lower_p!r}, "
                         f"upper_p={upper_p!r}")
    L1, b = response_len, block_size
    nb = -(-L1 // b)

    def one(k):
        ku, kv = jax.random.split(k)
        n = {"token": L1, "row": 1, "block": nb}[ratio]
        u = jax.random.uniform(ku, (n,), jnp.float32, lower_p, upper_p)
        if ratio != "token":  # one threshold per row / per block, shared by its tokens
            u = jnp.repeat(u, L1 if ratio == "row" else b)[:L1]
        return jax.random.uniform(kv, (L1,), jnp.float32) <= u, u

    return jax.vmap(one)(jax.random.split(key, num_responses))


def _check_inputs(prompt_ids, prompt_valid, response_ids, response_valid, block_size, post_num,
                  post_num_scope, compat, ratio, lower_p, upper_p):
    scope = _check_common(block_size, post_num, post_num_scope, compat)
    ratio = ratio or ("token" if compat == "reference" else "block")
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if not 0.0 <= lower_p <= upper_p <= 1.0:
        raise ValueError(f"need 0 <= lower_p <= upper_p <= 1, got lower_p={lower_p!r}, "
                         f"upper_p={upper_p!r}")
    _check_rank("prompt_ids", prompt_ids, 2)
    _check_rank("response_ids", response_ids, 2)
    N, L0 = np.shape(prompt_ids)
    _check_shape("prompt_valid", prompt_valid, (N, L0))
    _check_shape("response_ids", response_ids, (N, np.shape(response_ids)[1]))
    if response_valid is not None:
        _check_shape("response_valid", response_valid, (N,))
    return scope, ratio


@partial(jax.jit, static_argnames=("block_size", "mask_id", "pad_id", "lower_p", "upper_p",
                                   "ratio", "post_num", "scope", "coupled", "order"))
def _rows(key, prompt_ids, prompt_valid, response_ids, response_valid, *, block_size, mask_id,
          pad_id, lower_p, upper_p, ratio, post_num, scope, coupled, order):
    N, L1 = response_ids.shape
    masked, _ = draw_masks(key, N, L1, block_size=block_size, lower_p=lower_p, upper_p=upper_p,
                           ratio=ratio)
    idx = jnp.arange(N, dtype=jnp.int32)
    kind = jnp.zeros((N,), jnp.int32)
    if coupled:
        pair = jnp.stack([masked, ~masked], axis=1)  # [N, 2, L1]: primary, complement
        if order == "interleaved":  # Q-T7 fix: a row and its complement are neighbours
            masked = pair.reshape(2 * N, L1)
            idx, kind = jnp.repeat(idx, 2), jnp.tile(jnp.arange(2, dtype=jnp.int32), N)
        else:  # [REF]: all primaries, then all complements
            masked = jnp.moveaxis(pair, 1, 0).reshape(2 * N, L1)
            idx, kind = jnp.tile(idx, 2), jnp.repeat(jnp.arange(2, dtype=jnp.int32), N)
    scored = apply_post_num(masked, response_ids[idx], pad_id, post_num, scope)
    return assemble_rows(prompt_ids, prompt_valid, response_ids, masked, scored, idx, kind,
                         response_valid[idx], block_size=block_size, mask_id=mask_id)


def random_masking_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array,
                        response_ids: jax.Array, *, block_size: int, mask_id: int, pad_id: int,
                        lower_p: float = 0.1, upper_p: float = 0.9, ratio: Optional[str] = None,
                        post_num: Optional[int] = 0, post_num_scope: Optional[str] = None,
                        compat: str = "recommended",
                        response_valid: Optional[jax.Array] = None) -> TrainRows:
    """``random_masking`` (§9.1): one row per response.

    The noised copy is the clean response with ``MASK`` at the drawn
    positions; unmasked tokens of the same block stay clean and serve as
    in-block context. ``p_mask`` = the masked tokens, after the ``post_num``
    rule; rows with nothing to score are marked invalid.

    Args:
      key: PRNG key.
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      block_size, mask_id, pad_id: as in ``trajectory.build_rows``.
      lower_p, upper_p: masking range (defaults of the reference).
      ratio: ``"token"`` | ``"row"`` | ``"block"``; default ``"token"`` under
        ``compat="reference"`` (Q-T5), else ``"block"``.
      post_num, post_num_scope, compat: as in ``trajectory.build_rows``
        (``compat="reference"`` counts ``post_num`` per row).
      response_valid: optional bool ``[N]``; False rows are marked invalid.

    Returns:
      :class:`TrainRows` with ``R = N`` rows (``round_index`` 0).
    """
    scope, ratio = _check_inputs(prompt_ids, prompt_valid, response_ids, response_valid,
                                 block_size, post_num, post_num_scope, compat, ratio,
                                 lower_p, upper_p)
    return _call(key, prompt_ids, prompt_valid, response_ids, response_valid, block_size,
                 mask_id, pad_id, lower_p, upper_p, ratio, post_num, scope, False, "interleaved")


def coupled_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array,
                 response_ids: jax.Array, *, block_size: int, mask_id: int, pad_id: int,
                 lower_p: float = 0.1, upper_p: float = 0.9, ratio: Optional[str] = None,
                 order: Optional[str] = None, post_num: Optional[int] = 0,
                 post_num_scope: Optional[str] = None, compat: str = "recommended",
                 response_valid: Optional[jax.Array] = None) -> TrainRows:
    """``coupled`` (§9.1): a primary row and its complement per response.

    One draw gives the primary mask ``K``; the complementary row masks (and
    scores) exactly the response positions not in ``K``, so the two rows
    together score every response token once (before ``post_num``). Both
    rows belong to the same response and carry its reward.

    Args:
      order: ``"interleaved"`` [RECOMMENDED, Q-T7 fix]: rows ``2n, 2n+1`` are
        response ``n``'s primary and complement, so they share an optimizer
        step; ``"appended"`` [REF]: all ``N`` primaries, then all complements.
        Default from ``compat``.
      Others: as :func:`random_masking_rows`.

    Returns:
      :class:`TrainRows` with ``R = 2N`` rows; ``round_index`` is 0 for the
      primary and 1 for the complementary row.
    """
    scope, ratio = _check_inputs(prompt_ids, prompt_valid, response_ids, response_valid,
                                 block_size, post_num, post_num_scope, compat, ratio,
                                 lower_p, upper_p)
    order = order or ("appended" if compat == "reference" else "interleaved")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return _call(key, prompt_ids, prompt_valid, response_ids, response_valid, block_size,
                 mask_id, pad_id, lower_p, upper_p, ratio, post_num, scope, True, order)


def semi_ar_sft_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array,
                     response_ids: jax.Array, **kwargs) -> TrainRows:
    """Block-model ``semi-ar`` SFT rows (§10.1): the same rows as
    :func:`random_masking_rows` (one row per example, random in-block masks,
    ``p_mask`` = masked tokens, per-row ``post_num`` under
    ``compat="reference"``). Train them with ``losses.masked_nll``."""
    return random_masking_rows(key, prompt_ids, prompt_valid, response_ids, **kwargs)


def _call(key, prompt_ids, prompt_valid, response_ids, response_valid, block_size, mask_id,
          pad_id, lower_p, upper_p, ratio, post_num, scope, coupled, order):
    N = np.shape(prompt_ids)[0]
    rv = jnp.ones((N,), bool) if response_valid is None else jnp.asarray(response_valid, bool)
    return _rows(key, jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool),
                 jnp.asarray(response_ids), rv, block_size=int(block_size), mask_id=int(mask_id),
                 pad_id=int(pad_id), lower_p=float(lower_p), upper_p=float(upper_p), ratio=ratio,
                 post_num=post_num, scope=scope, coupled=coupled, order=order)
