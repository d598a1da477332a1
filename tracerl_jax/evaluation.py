"""Held-out evaluation of a sampler: accuracy, tokens per forward pass, throughput.

:func:`evaluate` runs a block sampler over a list of
:class:`~tracerl_jax.tasks.Example` with fixed, bucketed shapes: prompts are
padded to one length per bucket and the last batch of a bucket is filled with
repeats (dropped before scoring), so a second call with the same settings
compiles nothing. Responses are scored by the task verifier (built-in tasks)
or by math-verify (MATH500/GSM8K-style examples), or by any ``verify_fn``.

Reported numbers:

* ``accuracy``: mean reward over all responses (rewards are 0/1 for the
  shipped verifiers).
* ``mean_length``: mean completion length in tokens (EOS included).
* ``tokens_per_forward``: completion tokens / denoising forward passes
  (``Rollout.num_steps``), summed over responses -- the parallelism the
  remasking strategy achieved (1.0 for one token per step).
* ``tokens_per_second``: completion tokens / sampler wall time over the
  batches that triggered no compilation (steady state). When every batch
  compiled (a first call with one batch) it falls back to all batches and
  ``steady_state`` is False.

Example::

    sample_fn = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(cfg), scfg)
    result = evaluate(sample_fn, params, tok, examples, batch_size=64, block_size=4)
    print(result["accuracy"], result["tokens_per_forward"])
    write_generations_jsonl("generations.jsonl", result["generations"])
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax.data import bucket_length, padded_batches
from tracerl_jax.diagnostics import CompileCounter
from tracerl_jax.tasks import Example, task_names
from tracerl_jax.tasks import verify_batch as task_verify_batch
from tracerl_jax.tokenizers import Tokenizer, pad_ids

VerifyFn = Callable[[str, Example], float]
# (responses, examples, lengths) -> rewards; one call for the whole evaluation.
BatchVerifyFn = Callable[[Sequence[str], Sequence[Example], Sequence[int]], Sequence[float]]


# ---------------------------------------------------------------------------
# Verifiers
# ---------------------------------------------------------------------------


def _is_task_example(ex: Example) -> bool:
    return ex.meta.get("task") in task_names()


def default_verifier(examples: Sequence[Example]) -> BatchVerifyFn:
    """The verifier matching ``examples``.

    * Built-in tasks (``meta["task"]`` registered): the task's own verifier,
      one ``Task.verify_batch`` call per task (``"codefn"`` runs the batch's
      programs in the sandbox in one call).
    * Other ``kind == "math"`` examples (MATH500, GSM8K, reference math
      files): :func:`tracerl_jax.rewards.score_math` (math-verify, every
      ``\\boxed{}`` answer against ``Example.answer``; boxes echoed from
      ``Example.question`` are left out), imported lazily.

    Raises:
      ValueError: for examples of another kind (code needs test execution;
        pass ``verify_fn``).
    """
    kinds = {("task" if _is_task_example(e) else e.meta.get("kind", "math")) for e in examples}
    bad = kinds - {"task", "math"}
    if bad:
        raise ValueError(f"no default verifier for example kinds {sorted(bad)}; pass verify_fn")

    def scorer(responses, exs, lengths):
        rewards = [0.0] * len(responses)
        task_idx = [i for i, e in enumerate(exs) if _is_task_example(e)]
        math_idx = [i for i, e in enumerate(exs) if not _is_task_example(e)]
        if task_idx:
            # One call per task for the whole batch: a code task sends it to the sandbox at once.
            scores = task_verify_batch([responses[i] for i in task_idx], [exs[i] for i in task_idx])
            for i, s in zip(task_idx, scores):
                rewards[i] = float(s)
        if math_idx:
            from tracerl_jax.rewards import score_math  # lazy: starts worker processes

            results = score_math([responses[i] for i in math_idx], [exs[i].answer for i in math_idx],
                                 prompts=[exs[i].question for i in math_idx])
            for i, res in zip(math_idx, results):
                rewards[i] = float(res.reward)
        return rewards

    return scorer


def _as_batch(verify_fn: VerifyFn) -> BatchVerifyFn:
    return lambda responses, exs, lengths: [float(verify_fn(r, e)) for r, e in zip(responses, exs)]


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def prompt_text(tokenizer: Tokenizer, example: Example, think: bool = False) -> str:
    """The templated prompt of an example (its ``kind`` and ``prefix`` from ``meta``)."""
    return tokenizer.chat_prompt(example.question, kind=example.meta.get("kind", "math"), think=think,
                                 prefix=example.meta.get("prefix", "") or "")


def _row_keys(rng: jax.Array, ids: np.ndarray) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(ids, jnp.uint32))


def evaluate(sample_fn: Callable, params: Any, tokenizer: Tokenizer, examples: Sequence[Example], *,
             batch_size: int, block_size: int, rng: Optional[jax.Array] = None,
             verify_fn: Optional[VerifyFn] = None, batch_verify_fn: Optional[BatchVerifyFn] = None,
             num_samples: int = 1, prompt_buckets: Optional[Sequence[int]] = None,
             prompt_len: Optional[int] = None, think: bool = False, keep_step_maps: bool = True,
             progress: bool = False) -> dict[str, Any]:
    """Samples one or more responses per example and scores them.

    Args:
      sample_fn: from :func:`tracerl_jax.sampling.make_block_sampler`.
      params: model parameters for ``sample_fn``.
      tokenizer: encodes prompts, decodes responses.
      examples: the problems (:class:`~tracerl_jax.tasks.Example`).
      batch_size: rows per sampler call (fixed; the last batch is padded).
      block_size: prompts are padded to multiples of it.
      rng: PRNG key; row ``k`` (example ``k // num_samples``, sample
        ``k % num_samples``) samples with ``fold_in(rng, k)``, so results do
        not depend on ``batch_size``. Default ``key(0)``.
      verify_fn: ``(response_text, example) -> reward``; default
        :func:`default_verifier`.
      batch_verify_fn: ``(texts, examples, lengths) -> rewards`` (one call
        for all responses; wins over ``verify_fn``).
      num_samples: responses per example (the reference evaluates 3).
      prompt_buckets: optional prompt lengths (multiples of ``block_size``);
        examples are grouped by bucket, one compiled shape per bucket used.
        Default: one length for all prompts (the longest, rounded up to
        ``block_size``).
      prompt_len: force one prompt length (overrides ``prompt_buckets``).
      think: use the tokenizer's ``think`` template.
      keep_step_maps: include each response's step map in ``generations``.
      progress: show a tqdm bar over batches.

    Returns:
      A dict with ``accuracy``, ``mean_length``, ``tokens_per_forward``,
      ``tokens_per_second``, ``steady_state`` (bool), ``num_examples``,
      ``num_responses``, ``num_batches``, ``num_compiles``, ``sample_seconds``
      and ``generations``: one dict per response (``index``, ``sample``,
      ``question``, ``prompt``, ``response``, ``answer``, ``reward``,
      ``length``, ``num_steps`` and optionally ``step_map``).

    Raises:
      ValueError: empty ``examples``, bad ``batch_size``/``num_samples``, or
        a prompt longer than the largest bucket.
    """
    if not examples:
        raise ValueError("examples is empty")
    if batch_size < 1 or num_samples < 1:
        raise ValueError(f"batch_size and num_samples must be >= 1, got {batch_size}, {num_samples}")
    if rng is None:
        rng = jax.random.key(0)
    if batch_verify_fn is None:
        batch_verify_fn = _as_batch(verify_fn) if verify_fn is not None else default_verifier(examples)

    prompts = [prompt_text(tokenizer, e, think) for e in examples]
    seqs = [tokenizer.encode(p) for p in prompts]
    # One row per (example, sample); rows are grouped by their prompt bucket.
    rows = np.repeat(np.arange(len(examples)), num_samples)
    if prompt_len is not None:
        lens = np.full(len(rows), int(prompt_len))
        if prompt_len % block_size:
            raise ValueError(f"prompt_len={prompt_len} must be a multiple of block_size={block_size}")
    elif prompt_buckets:
        lens = np.asarray([bucket_length(len(seqs[e]), prompt_buckets) for e in rows])
    else:
        lens = np.full(len(rows), bucket_length(max(map(len, seqs)), multiple=block_size))

    tokens_out: dict[int, tuple] = {}
    steady_tokens, steady_time, all_tokens, all_time = 0, 0.0, 0, 0.0
    num_compiles, num_batches = 0, 0
    plan = []
    for L in sorted(set(lens.tolist())):
        group = np.flatnonzero(lens == L)
        plan += [(L, group[idx], n) for idx, n in padded_batches(group.size, batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="evaluate", leave=False)
    for L, row_ids, n in plan:
        ids, valid = pad_ids([seqs[rows[r]] for r in row_ids], tokenizer.pad_id, side="left", length=int(L))
        keys = _row_keys(rng, row_ids)
        with CompileCounter() as cc:
            t0 = time.perf_counter()
            ro = sample_fn(params, ids, valid, row_keys=keys)
            ro = jax.block_until_ready(ro)
            dt = time.perf_counter() - t0
        host = jax.tree.map(np.asarray, ro)
        toks = int(host.lengths[:n].sum())
        all_tokens, all_time = all_tokens + toks, all_time + dt
        if cc.count == 0:
            steady_tokens, steady_time = steady_tokens + toks, steady_time + dt
        num_compiles += cc.count
        num_batches += 1
        for k in range(n):
            tokens_out[int(row_ids[k])] = (host.tokens[k], host.step_map[k], int(host.lengths[k]),
                                           int(host.num_steps[k]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    order = range(len(rows))
    texts = [tokenizer.decode(tokens_out[r][0][:tokens_out[r][2]].tolist(), skip_special_tokens=True)
             for r in order]
    lengths = [tokens_out[r][2] for r in order]
    row_examples = [examples[rows[r]] for r in order]
    rewards = [float(x) for x in batch_verify_fn(texts, row_examples, lengths)]
    steps = [tokens_out[r][3] for r in order]
    generations = []
    for r in order:
        e = examples[rows[r]]
        g = {"index": int(rows[r]), "sample": int(r % num_samples), "question": e.question,
             "prompt": prompts[rows[r]], "response": texts[r], "answer": e.answer, "reward": rewards[r],
             "length": lengths[r], "num_steps": steps[r]}
        if keep_step_maps:
            g["step_map"] = tokens_out[r][1][:lengths[r]].tolist()
        generations.append(g)
    steady = steady_time > 0
    tps_tokens, tps_time = (steady_tokens, steady_time) if steady else (all_tokens, all_time)
    return {
        "accuracy": float(np.mean(rewards)),
        "mean_length": float(np.mean(lengths)),
        "tokens_per_forward": float(sum(lengths) / max(sum(steps), 1)),
        "tokens_per_second": float(tps_tokens / tps_time) if tps_time > 0 else 0.0,
        "steady_state": bool(steady),
        "num_examples": len(examples),
        "num_responses": len(rows),
        "num_batches": num_batches,
        "num_compiles": int(num_compiles),
        "sample_seconds": float(all_time),
        "generations": generations,
    }


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The scalar part of an :func:`evaluate` result (for metrics writers)."""
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float, bool, np.number)) and not isinstance(v, str)}


def write_generations_jsonl(path: str | os.PathLike, generations: Sequence[dict]) -> None:
    """Writes one JSON object per generation (UTF-8, creating parent directories)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for g in generations:
            f.write(json.dumps(g, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Trajectory visualisation
# ---------------------------------------------------------------------------


def _piece(tokenizer: Tokenizer, t: int) -> str:
    s = tokenizer.decode([int(t)])
    return s.replace("\n", "\\n") if s else f"<{int(t)}>"


def render_trajectory(tokenizer: Tokenizer, tokens: Sequence[int], step_map: Sequence[int], length: int,
                      block_size: int, *, frames: bool = False) -> str:
    """Text picture of how a response was decoded.

    Default: one line per block, every token followed by the (1-based, global)
    denoising step that committed it, e.g. ``blk 0 |  5·1  3·2  +·1  7·3``.
    With ``frames``: the canvas after each step, ``_`` for still-masked
    positions of the block being decoded.

    Args:
      tokenizer: decodes single tokens.
      tokens, step_map: one response of a :class:`~tracerl_jax.sampling.Rollout`.
      length: its completion length (later positions are shown as context
        of the final block, in brackets).
      block_size: ``b``.
      frames: draw per-step frames instead of the block table.

    Returns:
      A multi-line string.

    Raises:
      ValueError: a bad ``block_size`` or ``length``, or ``tokens`` and
        ``step_map`` that are not 1-D of one length (pass one row).
    """
    tokens, step_map = np.asarray(tokens), np.asarray(step_map)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if tokens.ndim != 1 or tokens.shape != step_map.shape:
        raise ValueError(f"tokens {tokens.shape} and step_map {step_map.shape} must be 1-D of equal length "
                         "(one row of a Rollout)")
    if not 0 <= int(length) <= tokens.shape[0]:
        raise ValueError(f"length must be in [0, {tokens.shape[0]}], got {length}")
    used = int(np.max(np.flatnonzero(step_map > 0), initial=-1)) + 1
    # Whole blocks, but never past the row (a caller may pass a cut row).
    used = min(-(-max(used, length) // block_size) * block_size, tokens.shape[0])
    pieces = [_piece(tokenizer, t) for t in tokens[:used]]
    if not frames:
        lines = []
        for b0 in range(0, used, block_size):
            cells = []
            for j in range(b0, min(b0 + block_size, used)):
                cell = f"{pieces[j]}·{int(step_map[j])}"
                cells.append(cell if j < length else f"[{cell}]")
            lines.append(f"blk {b0 // block_size:2d} | " + "  ".join(cells))
        return "\n".join(lines)
    lines = []
    blocks = np.arange(used) // block_size
    sm = step_map[:used].astype(np.int64)
    for s in range(1, int(sm.max(initial=0)) + 1):
        if not np.any(sm == s):
            continue
        current = blocks[np.argmax(sm == s)]
        shown = [pieces[j] if 0 < sm[j] <= s else ("_" if blocks[j] == current else "")
                 for j in range(used)]
        lines.append(f"step {s:3d}: " + "".join(shown))
    return "\n".join(lines)
