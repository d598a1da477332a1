"""Training rows: the one data type every row builder returns and every loss reads.

A *row* is one model input built from one response: the prompt, the response
with some tokens replaced by ``MASK``, and which of those tokens it scores.
Block models and full-attention models differ only in how that input is laid
out (docs/algorithms.md §3.3, §5), so both are described by one type:

* the model input ``tokens``/``positions``/``mask_info``, ``[R, N]``;
* per-token arrays in the **response layout** ``[R, L1]``: ``labels`` (the
  clean response), ``p_mask`` (tokens the row scores) and ``read_index``
  (the input position whose output scores response token ``j``);
* per-row ``response_index``, ``round_index`` and ``row_valid``, ``[R]``.

Log-probs, values, advantages and returns of rows are ``[R, L1]`` as well, so
losses, GAE and the update pipeline never see the layout. Two layouts build
rows (:class:`ExtendedLayout`, :class:`SequenceLayout`); :func:`assemble`
turns per-row response masks into rows for either.

*Packed* rows (:func:`pack_rows`, block models) hold ``C`` TraceRL rounds of
one response in one model input ``[prompt | clean | noised copy 0 | ... |
copy C-1]``: the prompt and clean response, identical in every round, are run
once instead of ``C`` times. Their model input is ``[P, N_in]`` and every
per-round field gains a round axis: ``labels``/``p_mask``/``read_index``
``[P, C, L1]``, ``response_index``/``round_index``/``row_valid`` ``[P, C]``.
Scores come out ``[P, C, L1]``, i.e. the ``R = P*C`` rounds' ``[R, L1]``
after :func:`flat_rounds`, in the same order as the unpacked rows.

Conventions (docs/algorithms.md §3.6): response token ``j`` of a row is
scored by the model output at ``read_index[r, j]``: the noised copy
``L0 + L1 + j`` in the extended layout, ``L0 + j`` in a single sequence,
``L0 + j - 1`` for a model whose logits are shifted by one (Dream).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import checks
from tracerl_jax.attention import MaskInfo, causal_info, extended_info, full_info, packed_info

COMPAT = ("recommended", "reference")
SEQUENCE_FAMILIES = ("llada", "dream")


class Rows(NamedTuple):
    """Training rows of ``N`` responses (``R`` rows, model input length ``N_in``).

    Attributes:
      tokens: int32 ``[R, N_in]`` model input.
      positions: int32 ``[R, N_in]`` RoPE positions.
      mask_info: :class:`~tracerl_jax.attention.MaskInfo`, fields ``[R, N_in]``.
      labels: int32 ``[R, L1]`` the clean response of the row's response.
      p_mask: bool ``[R, L1]`` response tokens the row scores.
      read_index: int32 ``[R, L1]`` input position whose output scores each
        response token (see the module docstring).
      response_index: int32 ``[R]`` the response each row was built from.
      round_index: int32 ``[R]`` TraceRL round (0-based), a baseline's draw,
        or 0/1 for a coupled primary/complement.
      row_valid: bool ``[R]`` rows that exist (non-empty ``p_mask``).
    """

    tokens: jax.Array
    positions: jax.Array
    mask_info: MaskInfo
    labels: jax.Array
    p_mask: jax.Array
    read_index: jax.Array
    response_index: jax.Array
    round_index: jax.Array
    row_valid: jax.Array

    @property
    def response_len(self) -> int:
        """``L1``."""
        return self.labels.shape[-1]

    @property
    def scored(self) -> jax.Array:
        """bool ``[R, L1]``: scored tokens of valid rows (what the losses reduce over)."""
        return response_mask(self)

    @property
    def rounds_per_input(self) -> int | None:
        """``C`` for packed rows (round fields ``[P, C, ...]``), None for one round per input."""
        return self.labels.shape[1] if self.labels.ndim == 3 else None


def response_mask(rows: Rows) -> jax.Array:
    """bool ``[R, L1]`` (packed: ``[P, C, L1]``): ``p_mask`` of the valid rows, the mask every loss takes."""
    return rows.p_mask & rows.row_valid[..., None]


def flat_rounds(x: jax.Array, rows: Rows) -> jax.Array:
    """A per-round array of packed rows, ``[P, C, ...]`` -> ``[P*C, ...]`` (identity for unpacked rows).

    Args:
      x: ``[P, C, L1]`` or ``[P, C]`` (packed), or ``[R, L1]`` / ``[R]``.
      rows: the rows ``x`` belongs to.
    """
    if rows.rounds_per_input is None:
        return x
    return x.reshape(-1, *x.shape[2:])


def check_rows(rows: Rows) -> None:
    """Raises ``ValueError`` unless the fields of ``rows`` have consistent shapes.

    Host-side (shapes only), so it runs before tracing.
    """
    if not isinstance(rows, Rows):
        raise ValueError(f"expected tracerl_jax.rows.Rows, got {type(rows).__name__}")
    checks.rank("rows.tokens", rows.tokens, 2, "[R, N]")
    if np.ndim(rows.labels) not in (2, 3):
        raise ValueError(f"rows.labels must be [R, L1] (or [P, C, L1] packed), got shape {np.shape(rows.labels)}")
    R, N = np.shape(rows.tokens)
    lead = tuple(np.shape(rows.labels)[:-1])
    L1 = np.shape(rows.labels)[-1]
    if lead[0] != R:
        raise ValueError(f"rows.labels has {lead[0]} rows but rows.tokens has {R}")
    for name in ("positions", "mask_info.block", "mask_info.noised", "mask_info.valid"):
        checks.shape(f"rows.{name}", _field(rows, name), (R, N))
    for name in ("p_mask", "read_index"):
        checks.shape(f"rows.{name}", getattr(rows, name), lead + (L1,))
    for name in ("response_index", "round_index", "row_valid"):
        checks.shape(f"rows.{name}", getattr(rows, name), lead)


def _field(rows: Rows, dotted: str):
    obj = rows
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExtendedLayout:
    """Block models: ``[prompt L0 | clean response L1 | noised response L1]`` (§3.3).

    Prompt blocks are right-aligned to the prompt end, response blocks start at
    the response; the noised copy attends to the prompt, earlier clean blocks
    and its own block; positions are the unpadded absolute ones (§3.5).

    Attributes:
      block_size: ``b``; must equal the sampler's.
    """

    block_size: int

    def __post_init__(self):
        if not isinstance(self.block_size, (int, np.integer)) or self.block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {self.block_size!r}")

    @property
    def round_span(self) -> int:
        """TraceRL rounds group step ids per block (§4.3)."""
        return self.block_size

    def input_length(self, prompt_len: int, response_len: int) -> int:
        return prompt_len + 2 * response_len

    def build(self, prompt_ids, prompt_valid, labels, noised):
        """``(tokens, positions, mask_info, read_index)`` of rows; shapes as :class:`Rows`."""
        R, L1 = labels.shape
        L0 = prompt_ids.shape[1]
        tokens = jnp.concatenate([prompt_ids, labels, noised], axis=1)
        read = jnp.broadcast_to(L0 + L1 + jnp.arange(L1, dtype=jnp.int32), (R, L1))
        return tokens, extended_positions(prompt_valid, L1), extended_info(prompt_valid, L1, self.block_size), read


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    """Full-attention models: one sequence ``[prompt L0 | noisy response L1]`` (§5).

    Attributes:
      family: ``"llada"`` (reads token ``j`` at ``L0 + j``) or ``"dream"``
        (logits shifted by one: reads at ``L0 + j - 1``).
      pad_id: the pad id (Dream's reference mask hides ``PAD`` keys).
      compat: ``"recommended"``: real prompt tokens count positions from 0 and
        left padding is masked as keys; ``"reference"``: positions
        ``0..N-1``, LLaDA attends to pads (Q-F4), Dream masks ``PAD`` keys at
        index ``<= L0``.
      causal: a causal mask instead of the bidirectional one (Dream's ``ar``
        SFT, §10.2).
    """

    family: str
    pad_id: int = 0
    compat: str = "recommended"
    causal: bool = False

    def __post_init__(self):
        if self.family not in SEQUENCE_FAMILIES:
            raise ValueError(f"family must be one of {SEQUENCE_FAMILIES}, got {self.family!r}")
        if self.compat not in COMPAT:
            raise ValueError(f"compat must be one of {COMPAT}, got {self.compat!r}")

    @property
    def shift(self) -> int:
        return int(self.family == "dream")

    @property
    def round_span(self) -> int | None:
        """TraceRL rounds group step ids over the whole response (§5)."""
        return None

    def input_length(self, prompt_len: int, response_len: int) -> int:
        return prompt_len + response_len

    def build(self, prompt_ids, prompt_valid, labels, noised):
        """``(tokens, positions, mask_info, read_index)`` of rows; shapes as :class:`Rows`."""
        R, L1 = labels.shape
        L0 = prompt_ids.shape[1]
        tokens = jnp.concatenate([prompt_ids, noised], axis=1)
        positions, info = sequence_layout(prompt_valid, tokens, pad_id=self.pad_id, family=self.family,
                                          compat=self.compat)
        if self.causal:
            info = causal_info(info.valid)
        # The prompt is never empty (L0 >= 1), so Dream's first read L0 - 1 is in range.
        read = jnp.broadcast_to(L0 - self.shift + jnp.arange(L1, dtype=jnp.int32), (R, L1))
        return tokens, positions, info, read


Layout = ExtendedLayout | SequenceLayout


def layout_of(layout: Layout | None, block_size: int | None = None) -> Layout:
    """The layout a row builder was given: ``layout``, or ``ExtendedLayout(block_size)`` as shorthand.

    Raises:
      ValueError: both or neither given, or not a layout.
    """
    if (layout is None) == (block_size is None):
        raise ValueError("pass exactly one of layout (ExtendedLayout / SequenceLayout) and block_size "
                         f"(shorthand for ExtendedLayout(block_size)); got layout={layout!r}, "
                         f"block_size={block_size!r}")
    if layout is None:
        return ExtendedLayout(block_size)
    if not isinstance(layout, (ExtendedLayout, SequenceLayout)):
        raise ValueError(f"layout must be an ExtendedLayout or SequenceLayout, got {type(layout).__name__}")
    return layout


def extended_positions(prompt_valid: jax.Array, response_len: int) -> jax.Array:
    """RoPE positions of the extended layout (§3.5).

    Real prompt tokens count from 0; prompt pads get 1 (arbitrary, they are
    masked keys); response token ``j`` gets ``P_real + j`` in both copies,
    the unpadded absolute position used at generation time.

    Args:
      prompt_valid: bool ``[B, L0]``.
      response_len: ``L1``.

    Returns:
      int32 ``[B, L0+2*L1]``.
    """
    pv = prompt_valid.astype(jnp.int32)
    ppos = jnp.where(prompt_valid, jnp.cumsum(pv, axis=1) - 1, 1)
    rpos = jnp.sum(pv, axis=1, keepdims=True) + jnp.arange(response_len, dtype=jnp.int32)[None]
    return jnp.concatenate([ppos, rpos, rpos], axis=1).astype(jnp.int32)


def sequence_layout(prompt_valid: jax.Array, tokens: jax.Array, *, pad_id: int, family: str,
                    compat: str = "recommended") -> tuple[jax.Array, MaskInfo]:
    """Positions and attention info of full-attention sequences (§5; see :class:`SequenceLayout`).

    Args:
      prompt_valid: bool ``[R, L0]`` False at left padding.
      tokens: int ``[R, L0+L1]`` the model input (Dream's reference mask reads it).

    Returns:
      ``(positions int32 [R, L0+L1], MaskInfo [R, L0+L1])``.
    """
    R, L0 = prompt_valid.shape
    L = tokens.shape[1]
    if compat == "reference":
        positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None], (R, L))
        if family == "llada":
            valid = jnp.ones((R, L), bool)
        else:  # the reference Dream trainer: PAD keys at index <= L0 (the first response slot too)
            valid = ~((tokens == pad_id) & (jnp.arange(L)[None] <= L0))
        return positions, full_info(valid)
    valid = jnp.concatenate([prompt_valid, jnp.ones((R, L - L0), bool)], axis=1)
    positions = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    return positions, full_info(valid)


def assemble(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array, masked: jax.Array,
             scored: jax.Array, response_index: jax.Array, round_index: jax.Array, row_valid: jax.Array, *,
             layout: Layout, mask_id: int) -> Rows:
    """Rows from per-row response masks, in either layout.

    Every row builder (TraceRL rounds, random masking, coupled, SFT) decides
    per row which response tokens are ``MASK`` in the input (``masked``) and
    which it scores (``scored``); this function does the rest.

    Args:
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      masked: bool ``[R, L1]`` response positions replaced by ``MASK``.
      scored: bool ``[R, L1]`` positions in ``p_mask``.
      response_index, round_index: int ``[R]``; row_valid: bool ``[R]``
        (rows with an empty ``scored`` are marked invalid too).
      layout: :class:`ExtendedLayout` or :class:`SequenceLayout`.
      mask_id: the ``MASK`` id.

    Returns:
      :class:`Rows` with ``R`` rows.
    """
    p_ids = prompt_ids[response_index].astype(jnp.int32)
    p_valid = prompt_valid[response_index].astype(bool)
    labels = response_ids[response_index].astype(jnp.int32)
    noised = jnp.where(masked, jnp.int32(mask_id), labels)
    tokens, positions, info, read = layout.build(p_ids, p_valid, labels, noised)
    return Rows(tokens=tokens.astype(jnp.int32), positions=positions, mask_info=info, labels=labels,
                p_mask=scored, read_index=read.astype(jnp.int32),
                response_index=response_index.astype(jnp.int32), round_index=round_index.astype(jnp.int32),
                row_valid=row_valid & jnp.any(scored, axis=1))


# --------------------------------------------------------------------------
# Packed rows: several rounds of one response per model input
# --------------------------------------------------------------------------


def check_copies(copies) -> int:
    """``copies`` (rounds per packed input) as an int >= 1, else ``ValueError``."""
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 1:
        raise ValueError(f"copies (rounds per packed row) must be an int >= 1, got {copies!r}")
    return int(copies)


def pack_rows(rows: Rows, copies: int, *, block_size: int) -> Rows:
    """Packs each run of ``C = copies`` consecutive extended-layout rows into one model input.

    The rows must be rounds of one response per run (as :func:`tracerl_jax.trajectory.build_rows`
    orders them when ``max_rounds`` is a multiple of ``C``): they share the
    prompt and the clean response, which the packed input holds once, followed
    by the ``C`` noised copies at the response positions (§3.5). The mask
    (:func:`tracerl_jax.attention.packed_info`) lets each copy see what its
    own row saw, so every round's log-probs, values, losses and gradients are
    those of the unpacked rows up to float rounding.

    Args:
      rows: extended-layout :class:`Rows`, ``R`` rows of input length ``L0 + 2*L1``.
      copies: ``C``, a divisor of ``R``.
      block_size: the layout's ``b``.

    Returns:
      packed :class:`Rows`: input ``[R/C, L0 + (C+1)*L1]``, round fields
      ``[R/C, C, ...]`` (see the module docstring).

    Raises:
      ValueError: rows already packed or not in the extended layout, ``R`` not
        a multiple of ``C``, or (for arrays on the host) a run mixing
        responses or prompts, or noised positions that are not the response's.
    """
    check_rows(rows)
    C = check_copies(copies)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if rows.rounds_per_input is not None:
        raise ValueError(f"rows are packed already ({rows.rounds_per_input} rounds per input)")
    R, N = np.shape(rows.tokens)
    L1 = rows.response_len
    L0 = N - 2 * L1
    if L0 < 1:
        raise ValueError(f"rows of input length {N} with L1={L1} are not the extended layout [prompt | clean | "
                         "noised]; only block-model rows pack")
    if R % C:
        raise ValueError(f"{R} rows do not split into packed rows of {C} rounds: build rows with max_rounds a "
                         f"multiple of copies={C}")
    _check_packable(rows, C, L0, L1, int(block_size))
    return _pack_rows(rows, copies=C, block_size=int(block_size))


def _check_packable(rows: Rows, C: int, L0: int, L1: int, block_size: int) -> None:
    """Value checks of :func:`pack_rows` when the rows are concrete host-readable arrays."""
    try:
        resp = np.asarray(rows.response_index).reshape(-1, C)
        toks = np.asarray(rows.tokens)
        pos = np.asarray(rows.positions)
        blk = np.asarray(rows.mask_info.block[:1, L0:L0 + L1])
        read = np.asarray(rows.read_index[:1])
    except (jax.errors.TracerArrayConversionError, RuntimeError):
        return  # traced, or a multi-process array: shapes were checked, the builder guarantees the rest
    bad = np.flatnonzero(np.any(resp != resp[:, :1], axis=1))
    if bad.size:
        p = int(bad[0])
        raise ValueError(f"packed row {p} would hold rounds of different responses {sorted(set(resp[p].tolist()))}: "
                         f"each run of copies={C} consecutive rows must be rounds of one response")
    head = toks[:, :L0 + L1].reshape(-1, C, L0 + L1)
    bad = np.flatnonzero(np.any(head != head[:, :1], axis=(1, 2)))
    if bad.size:
        raise ValueError(f"packed row {int(bad[0])}: its rounds differ in the prompt or clean response")
    if np.any(pos[:, L0 + L1:] != pos[:, L0:L0 + L1]):
        r = int(np.flatnonzero(np.any(pos[:, L0 + L1:] != pos[:, L0:L0 + L1], axis=1))[0])
        raise ValueError(f"row {r}: positions of its noised copy do not match the response positions (§3.5)")
    if np.any(blk != np.arange(L1) // block_size) or np.any(read != L0 + L1 + np.arange(L1)):
        raise ValueError(f"rows are not the extended layout of block_size={block_size}")


@partial(jax.jit, static_argnames=("copies", "block_size"))
def _pack_rows(rows: Rows, *, copies: int, block_size: int) -> Rows:
    C = copies
    R, N = rows.tokens.shape
    L1 = rows.labels.shape[1]
    L0, P = N - 2 * L1, R // C
    head = L0 + L1
    tokens = jnp.concatenate([rows.tokens[::C, :head], rows.tokens[:, head:].reshape(P, C * L1)], axis=1)
    positions = jnp.concatenate([rows.positions[::C, :head], rows.positions[:, head:].reshape(P, C * L1)], axis=1)
    info = packed_info(rows.mask_info.valid[::C, :L0], L1, block_size, C)
    read = head + jnp.arange(C, dtype=jnp.int32)[:, None] * L1 + jnp.arange(L1, dtype=jnp.int32)[None]
    g = lambda x: x.reshape(P, C, *x.shape[1:])  # noqa: E731
    return Rows(tokens=tokens, positions=positions, mask_info=info, labels=g(rows.labels), p_mask=g(rows.p_mask),
                read_index=jnp.broadcast_to(read[None], (P, C, L1)), response_index=g(rows.response_index),
                round_index=g(rows.round_index), row_valid=g(rows.row_valid))


# --------------------------------------------------------------------------
# Rows <-> per-response arrays, reading model outputs
# --------------------------------------------------------------------------


def read_outputs(outputs: jax.Array, read_index: jax.Array) -> jax.Array:
    """Model outputs ``[R, N_in, ...]`` at each response token's read position -> ``[R, L1, ...]``.

    Packed rows: ``read_index [P, C, L1]`` reads ``[P, N_in, ...]`` into ``[P, C, L1, ...]``.
    """
    flat = read_index.reshape(read_index.shape[0], -1)
    idx = flat.reshape(flat.shape + (1,) * (outputs.ndim - 2))
    out = jnp.take_along_axis(outputs, idx, axis=1)
    return out.reshape(read_index.shape + outputs.shape[2:])


def scatter(token_values: jax.Array, scored: jax.Array, response_index: jax.Array) -> jax.Array:
    """Per-response values ``[N, L1]`` -> row layout ``[R, L1]``, 0 where not ``scored``.

    Args:
      token_values: ``[N, L1]``.
      scored: bool ``[R, L1]`` (e.g. :func:`response_mask`).
      response_index: int ``[R]`` response of each row.
    """
    v = token_values[response_index]
    return jnp.where(scored, v, jnp.zeros((), v.dtype))


def gather(row_values: jax.Array, scored: jax.Array, response_index: jax.Array, num_responses: int) -> jax.Array:
    """Row layout ``[R, L1]`` -> per-response ``[N, L1]``, summed over rows.

    A token is scored in at most one row of a response, so the sum picks the
    value of the row that scored it (e.g. ``V_j^old``, §8.2); unscored tokens
    get 0.
    """
    v = jnp.where(scored, row_values, jnp.zeros((), row_values.dtype))
    L1 = v.shape[-1]
    return jax.ops.segment_sum(v.reshape(-1, L1), response_index.reshape(-1), num_segments=num_responses)


def select_rows(rows: Rows, keep: jax.Array) -> Rows:
    """``rows`` with ``row_valid`` and ``p_mask`` cleared where ``keep [R]`` is False."""
    keep = jnp.asarray(keep, bool)
    return rows._replace(row_valid=rows.row_valid & keep, p_mask=rows.p_mask & keep[..., None])


def restrict(rows: Rows, scorable: jax.Array) -> Rows:
    """Scores only tokens with ``scorable [N, L1]`` (per response); rows left empty become invalid."""
    p_mask = rows.p_mask & jnp.asarray(scorable, bool)[rows.response_index]
    return rows._replace(p_mask=p_mask, row_valid=rows.row_valid & jnp.any(p_mask, axis=-1))


def check_response_arrays(prompt_ids, prompt_valid, response_ids, *, per_response=None,
                          per_token=None) -> tuple[int, int, int]:
    """Host-side shape checks shared by the row builders, before tracing.

    Args:
      prompt_ids: ``[N, L0]``; prompt_valid: ``[N, L0]``; response_ids: ``[N, L1]``.
      per_response: name -> array that must be ``[N]`` (None values skipped).
      per_token: name -> array that must be ``[N, L1]`` (None values skipped).

    Returns:
      ``(N, L0, L1)``.
    """
    checks.rank("prompt_ids", prompt_ids, 2, "[N, L0]")
    checks.rank("response_ids", response_ids, 2, "[N, L1]")
    checks.integer("prompt_ids", prompt_ids)
    checks.integer("response_ids", response_ids)
    N, L0 = np.shape(prompt_ids)
    L1 = np.shape(response_ids)[1]
    if L0 < 1:
        raise ValueError(f"prompt_ids must have L0 >= 1 columns, got {L0}")
    if L1 < 1:
        raise ValueError(f"response_ids must have L1 >= 1 columns, got {L1}")
    checks.shape("prompt_valid", prompt_valid, (N, L0))
    checks.shape("response_ids", response_ids, (N, L1))
    for name, x in (per_response or {}).items():
        if x is not None:
            checks.shape(name, x, (N,))
    for name, x in (per_token or {}).items():
        if x is not None:
            checks.shape(name, x, (N, L1))
    return N, L0, L1


def check_post_num(post_num: Optional[int]) -> None:
    if post_num is not None and (not isinstance(post_num, (int, np.integer)) or isinstance(post_num, bool)
                                 or post_num < 0):
        raise ValueError(f"post_num must be None or an int >= 0, got {post_num!r}")
