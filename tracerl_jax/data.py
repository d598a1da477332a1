"""Prompt/response batching with bucketed shapes, and a resumable example iterator.

Static shapes keep the compiled programs few (DESIGN.md principle 4): every
length that reaches a jitted function goes through :func:`bucket_length`, so
a run sees a handful of ``[B, L]`` shapes instead of one per batch.

* :func:`encode_prompts` -- left-padded prompt ids for the samplers.
* :func:`encode_sft_pairs` -- ``[prompt | response]`` pairs for SFT rows:
  prompts left-padded to ``L0``, responses right-padded with ``PAD`` to
  ``L1``, each response ending in ``EOS`` (§3.2, §10.1).
* :class:`ExampleIterator` -- a deterministic, shuffling, infinite stream of
  index batches whose position (epoch, offset) is a small JSON dict that a
  checkpoint saves and restores, and which hands each process its own slice of
  every global batch (multi-host).

Example::

    prompts = [tok.chat_prompt(e.question) for e in examples]
    pairs = encode_sft_pairs(tok, prompts, [e.solution for e in examples], block_size=4)
    it = ExampleIterator(len(examples), batch_size=64, seed=0)
    idx = next(it)                     # int [64] indices into the data set
    state = it.state                   # {"seed": 0, "epoch": 0, "position": 64, ...}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from tracerl_jax.tokenizers import Tokenizer, pad_ids


def bucket_length(n: int, buckets: Optional[Sequence[int]] = None, *, multiple: int = 1) -> int:
    """The static length that ``n`` tokens are padded to.

    With ``buckets``, the smallest bucket ``>= n``; otherwise ``n`` rounded up
    to a multiple of ``multiple`` (at least one ``multiple``, so an empty
    batch still has a valid shape).

    Args:
      n: the longest sequence, ``>= 0``.
      buckets: optional increasing lengths, e.g. ``(64, 128, 256, 512)``.
      multiple: rounding granularity without buckets (e.g. the block size).

    Returns:
      The padded length.

    Raises:
      ValueError: for a negative ``n``, a bad ``multiple``, or ``n`` larger
        than every bucket (the message names both).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
    if buckets:
        bs = sorted(int(b) for b in buckets)
        if bs[0] < 1:
            raise ValueError(f"buckets must be positive, got {list(buckets)}")
        for b in bs:
            if b >= n:
                return b
        raise ValueError(f"length {n} exceeds the largest bucket {bs[-1]} (buckets={bs})")
    return max(1, -(-int(n) // multiple)) * multiple


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_block_size(block_size) -> None:
    if not _is_int(block_size) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")


def _check_buckets(buckets, block_size: int, name: str) -> None:
    if buckets:
        bad = [b for b in buckets if int(b) % block_size]
        if bad:
            raise ValueError(f"{name} must be multiples of block_size={block_size}, got {bad}")


def encode_prompts(tokenizer: Tokenizer, texts: Sequence[str], *, block_size: int,
                   buckets: Optional[Sequence[int]] = None,
                   length: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids whose length is a bucketed multiple of ``block_size``.

    Args:
      tokenizer: any :class:`~tracerl_jax.tokenizers.Tokenizer`.
      texts: ``B`` prompt strings, already templated (``tok.chat_prompt``).
      block_size: ``b``; the padded length is a multiple of it.
      buckets: optional allowed lengths (multiples of ``b``).
      length: force this padded length (overrides ``buckets``; e.g. one
        length for a whole data set so every batch has the same shape).

    Returns:
      ``(ids int32 [B, L0], valid bool [B, L0])``, ``valid`` False on padding.

    Raises:
      ValueError: a bad ``block_size``, a bucket or ``length`` not a
        multiple of ``b``, a prompt longer than the largest bucket or
        ``length``, or an empty prompt.
    """
    _check_block_size(block_size)
    _check_buckets(buckets, block_size, "buckets")
    seqs = [tokenizer.encode(t) for t in texts]
    for i, s in enumerate(seqs):
        if not s:
            raise ValueError(f"prompt {i} encodes to no tokens")
    longest = max((len(s) for s in seqs), default=0)
    if length is None:
        length = bucket_length(longest, buckets, multiple=block_size)
    elif length % block_size:
        raise ValueError(f"length {length} must be a multiple of block_size={block_size}")
    return pad_ids(seqs, tokenizer.pad_id, side="left", length=length)


class SFTPairs(NamedTuple):
    """Tokenised ``(prompt, response)`` pairs (host NumPy).

    Attributes:
      prompt_ids: int32 ``[N, L0]`` left-padded with ``PAD``.
      prompt_valid: bool ``[N, L0]``.
      response_ids: int32 ``[N, L1]`` right-padded with ``PAD``; each
        response ends with ``EOS`` unless it was cut at ``max_response_len``.
      response_lengths: int32 ``[N]`` tokens before the padding (EOS included).
      kept: int64 ``[N]`` indices of the input pairs that were kept (prompts
        longer than ``max_prompt_len`` are dropped, §3.2).
    """

    prompt_ids: np.ndarray
    prompt_valid: np.ndarray
    response_ids: np.ndarray
    response_lengths: np.ndarray
    kept: np.ndarray

    def take(self, index) -> "SFTPairs":
        """The pairs at ``index`` (an int array), shapes unchanged otherwise."""
        return SFTPairs(*(a[index] for a in self))


def encode_sft_pairs(tokenizer: Tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                     block_size: int, prompt_buckets: Optional[Sequence[int]] = None,
                     response_buckets: Optional[Sequence[int]] = None,
                     prompt_len: Optional[int] = None, response_len: Optional[int] = None,
                     max_prompt_len: Optional[int] = None, max_response_len: Optional[int] = None,
                     add_eos: bool = True) -> SFTPairs:
    """Tokenises SFT pairs into the ``[prompt L0 | response L1]`` layout (§3.2).

    ``EOS`` is appended to every response (unless it already ends with one),
    so the model learns to stop. Prompts longer than ``max_prompt_len`` are
    dropped with their responses, as the reference does (``kept`` says which
    survive). Responses longer than ``max_response_len`` are cut to it (and
    then carry no ``EOS``), as ``L1 = min(R, max_gen_length)`` does.

    Args:
      tokenizer: any :class:`~tracerl_jax.tokenizers.Tokenizer`.
      prompts: ``N`` templated prompt strings.
      responses: ``N`` response strings (no EOS needed).
      block_size: ``b``; ``L0`` and ``L1`` are multiples of it.
      prompt_buckets, response_buckets: optional allowed ``L0`` / ``L1``.
      prompt_len, response_len: force ``L0`` / ``L1`` (multiples of ``b``).
      max_prompt_len: drop longer prompts (None keeps all).
      max_response_len: cut longer responses (None keeps all).
      add_eos: append ``tokenizer.eos_id``.

    Returns:
      :class:`SFTPairs`.

    Raises:
      ValueError: mismatched list lengths, a bad ``block_size`` or
        ``max_*_len``, nothing left after dropping, or a length that does
        not fit its bucket / forced length.
    """
    _check_block_size(block_size)
    # A negative cut would silently drop tokens from the end (``r[:-2]``).
    for name, v in (("max_prompt_len", max_prompt_len), ("max_response_len", max_response_len)):
        if v is not None and (not _is_int(v) or v < 1):
            raise ValueError(f"{name} must be None or an int >= 1, got {v!r}")
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have equal length, got {len(prompts)} "
                         f"and {len(responses)}")
    _check_buckets(prompt_buckets, block_size, "prompt_buckets")
    _check_buckets(response_buckets, block_size, "response_buckets")
    for name, v in (("prompt_len", prompt_len), ("response_len", response_len)):
        if v is not None and v % block_size:
            raise ValueError(f"{name}={v} must be a multiple of block_size={block_size}")
    p_seqs, r_seqs, kept = [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        pi = tokenizer.encode(p)
        if not pi:
            raise ValueError(f"prompt {i} encodes to no tokens")
        if max_prompt_len is not None and len(pi) > max_prompt_len:
            continue
        ri = tokenizer.encode(r)
        if add_eos and (not ri or ri[-1] != tokenizer.eos_id):
            ri = ri + [tokenizer.eos_id]
        if max_response_len is not None:
            ri = ri[:max_response_len]
        p_seqs.append(pi)
        r_seqs.append(ri)
        kept.append(i)
    if not kept:
        raise ValueError(f"every prompt is longer than max_prompt_len={max_prompt_len}")
    L0 = prompt_len or bucket_length(max(map(len, p_seqs)), prompt_buckets, multiple=block_size)
    L1 = response_len or bucket_length(max(map(len, r_seqs)), response_buckets, multiple=block_size)
    p_ids, p_valid = pad_ids(p_seqs, tokenizer.pad_id, side="left", length=L0)
    r_ids, _ = pad_ids(r_seqs, tokenizer.pad_id, side="right", length=L1)
    lengths = np.asarray([len(r) for r in r_seqs], np.int32)
    return SFTPairs(p_ids, p_valid, r_ids, lengths, np.asarray(kept, np.int64))


# ---------------------------------------------------------------------------
# Resumable, shardable iteration
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ExampleIterator:
    """Infinite, deterministic stream of index batches over ``num_examples`` items.

    Epoch ``e`` visits the items in ``permutation(seed, e)`` (or in order with
    ``shuffle=False``). A global batch takes the next ``batch_size`` indices
    and runs on into the next epoch when one ends, so every batch has the same
    shape. The whole position is ``(epoch, position)``; :attr:`state` /
    :meth:`restore` save and reload it (JSON), so a resumed run sees exactly
    the batches it would have seen.

    Multi-host: every process keeps the same global position and gets rows
    ``[process_index * B/P, (process_index+1) * B/P)`` of each global batch
    (``B = batch_size``, ``P = process_count``).

    Attributes:
      num_examples: data set size (``>= 1``).
      batch_size: global batch size (divisible by ``process_count``).
      seed: shuffle seed.
      shuffle: shuffle each epoch.
      process_index, process_count: this process's slice of each batch.
      epoch, position: the stream position (the next global index is
        ``order(epoch)[position]``).
    """

    num_examples: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    process_index: int = 0
    process_count: int = 1
    epoch: int = 0
    position: int = 0

    def __post_init__(self):
        for name in ("num_examples", "batch_size", "process_count"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        # numpy's seeding rejects negative seeds only when the first epoch is drawn.
        for name in ("seed", "epoch"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not _is_int(self.process_index) or not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index must be in [0, process_count={self.process_count}), "
                             f"got {self.process_index!r}")
        # A negative position would slice from the end of the epoch's order.
        if not _is_int(self.position) or not 0 <= self.position < self.num_examples:
            raise ValueError(f"position must be in [0, num_examples={self.num_examples}), got {self.position!r}")
        if self.batch_size % self.process_count:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by "
                             f"process_count={self.process_count}")
        self._order_cache: tuple[int, np.ndarray] | None = None

    @property
    def local_batch_size(self) -> int:
        """Rows this process gets per batch."""
        return self.batch_size // self.process_count

    def order(self, epoch: int) -> np.ndarray:
        """The visiting order of ``epoch`` (int64 ``[num_examples]``)."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        if self.shuffle:
            order = np.random.default_rng([int(self.seed), int(epoch)]).permutation(self.num_examples)
        else:
            order = np.arange(self.num_examples)
        self._order_cache = (epoch, order)
        return order

    def next_global(self) -> np.ndarray:
        """The next global batch of indices (int64 ``[batch_size]``); advances the position."""
        out, need = [], self.batch_size
        while need:
            take = self.order(self.epoch)[self.position:self.position + need]
            out.append(take)
            need -= take.size
            self.position += take.size
            if self.position >= self.num_examples:
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(out)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        """This process's rows of the next global batch (int64 ``[local_batch_size]``)."""
        g = self.next_global()
        k = self.local_batch_size
        return g[self.process_index * k:(self.process_index + 1) * k]

    @property
    def state(self) -> dict[str, Any]:
        """JSON-serialisable position (plus what it must match on restore)."""
        return {"epoch": int(self.epoch), "position": int(self.position), "seed": int(self.seed),
                "num_examples": int(self.num_examples), "batch_size": int(self.batch_size),
                "shuffle": bool(self.shuffle)}

    def restore(self, state: Mapping[str, Any]) -> "ExampleIterator":
        """Moves to a saved position.

        Raises:
          ValueError: if the saved stream was over a different data set size,
            seed, batch size or shuffle setting (it would silently continue
            another stream), or ``state`` lacks ``epoch``/``position``.
        """
        missing = [k for k in ("epoch", "position") if k not in state]
        if missing:
            raise ValueError(f"iterator state is missing {missing}; got keys {sorted(state)}")
        for key in ("num_examples", "seed", "batch_size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"iterator state was saved with {key}={state[key]!r}, this iterator "
                                 f"has {key}={getattr(self, key)!r}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.num_examples:
            raise ValueError(f"invalid iterator state epoch={epoch}, position={position}")
        self.epoch, self.position = epoch, position
        return self


def padded_batches(num: int, batch_size: int) -> list[tuple[np.ndarray, int]]:
    """Index batches of a fixed size covering ``range(num)`` once, in order.

    The last batch is filled with repeats of its final index so every batch
    has ``batch_size`` rows; the caller drops the repeats.

    Returns:
      A list of ``(indices int64 [batch_size], number of real rows)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for start in range(0, num, batch_size):
        idx = np.arange(start, min(start + batch_size, num))
        n = idx.size
        out.append((np.concatenate([idx, np.full(batch_size - n, idx[-1])]).astype(np.int64), n))
    return out
