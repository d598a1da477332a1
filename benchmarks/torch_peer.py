"""A PyTorch eager peer of the block sampler and the TraceRL policy step, for side-by-side timing.

Why. A speed number only means something next to the same computation done
the way people already do it. The reference TraDo/SDAR stack runs a
``transformers`` Qwen3-style model eagerly in PyTorch: a Python loop over
blocks and denoising steps around a growing (dynamic) KV cache, and a plain
``loss.backward(); optimizer.step()`` update. This module is that, written
for this benchmark (nothing copied from the reference code) on a stock
``transformers.Qwen3ForCausalLM`` that loads the very weights our model has
(exported with :func:`tracerl_jax.models.save_hf_checkpoint`).

It computes what the library computes (``tests/test_torch_peer.py`` proves
it: identical greedy tokens, policy loss and gradient norm within 1e-4):

* :func:`peer_sample` -- block diffusion, ``compat="recommended"`` layout
  (docs/algorithms.md §1, ``tracerl_jax/sampling/block_sampler.py``): prefill the
  left-padded prompt with a block-causal mask whose blocks end at the prompt
  end; per block, denoising forwards of the ``[B, b]`` block attending to the
  cache without writing it (the reference's ``store_kv=False``); commit
  tokens with ``low_confidence_static`` or ``low_confidence_dynamic``
  (ties to the lower index, as ours); then one forward writing the finished
  block's K/V to the cache. Per-row EOS/budget stopping, step map,
  log-probs and confidences as ours. Sampling: temperature (0 = greedy on
  the unfiltered softmax) and top-k; top-p is not implemented.
* :func:`PeerPolicyStep` -- the TraceRL policy update on rows in the
  extended layout ``[prompt | clean | noised]``: the 4-D block mask built in
  torch from the rows' ``MaskInfo`` vectors (same predicate, same dead-row
  repair), trajectory log-probs read at the noised copy, PPO-clip on the
  log-ratio clamped to ±10, k3 KL against ``logp_old`` (beta 0.01), the
  ``global_L1`` normaliser with ``num_rows``, gradient accumulation over
  micro-batches, NaN/Inf skip, global-norm clip 1.0 (optax's formula) and
  ``torch.optim.AdamW``.

Masks go to ``transformers`` as 4-D float additive masks (0 allowed,
``finfo.min`` elsewhere), which it passes through unchanged; the default
attention is ``sdpa`` (PyTorch's fused scaled-dot-product attention, the
``transformers`` default), ``"eager"`` is the plain matmul/softmax path.

Threads: call :func:`set_threads` with the core count JAX/XLA uses (all
cores the process may run on) so the two get the same hardware. Importing
this module sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is already set (it
must be set before torch starts its OpenMP runtime): with OpenMP's default
spin-waiting, two torch threads on a machine whose cores other processes
also want wait for each other at every parallel region, and a ``small``
B=1 forward measured 683 ms wall / 155 CPU-ms instead of 50 ms / 7 CPU-ms
(load average 8 on 2 cores). XLA's thread pool does not suffer this.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch's OpenMP runtime starts (module docstring)

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

NEG = torch.finfo(torch.float32).min
# transformers >= 5.24 names the forward's cache argument ``cache`` (``past_key_values`` before).
CACHE_ARG = "cache" if "cache" in inspect.signature(transformers.Qwen3Model.forward).parameters else "past_key_values"


def set_threads(n: Optional[int] = None) -> int:
    """Sets torch's intra-op threads (default: the cores this process may use); returns the count."""
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return torch.get_num_threads()


# --------------------------------------------------------------------------
# Model: our weights in a stock transformers Qwen3
# --------------------------------------------------------------------------


def export_weights(params, config, directory) -> Path:
    """Writes our model as a ``transformers`` Qwen3 checkpoint (``config.json`` + safetensors).

    SDAR/TraDo are Qwen3 decoders with a block-diffusion mask; the mask is an
    input here, so the config is written with ``model_type="qwen3"`` (the
    same tensors, a type ``transformers`` knows).
    """
    from tracerl_jax.models import save_hf_checkpoint

    directory = Path(directory)
    save_hf_checkpoint(params, config.replace(model_type="qwen3"), directory)
    return directory


def load_model(directory, attn: str = "sdpa") -> transformers.Qwen3ForCausalLM:
    """The exported checkpoint as a float32 ``Qwen3ForCausalLM`` in eval mode."""
    model = transformers.Qwen3ForCausalLM.from_pretrained(directory, attn_implementation=attn, dtype=torch.float32)
    return model.float().eval()


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """bool mask -> float additive mask (0 where allowed, ``finfo.min`` elsewhere)."""
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, NEG)


def block_mask(block: torch.Tensor, noised: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The library's attention predicate over one sequence, ``[B, 1, L, L]`` bool, with dead-row repair.

    Clean query: keys of blocks ``<=`` its own; noised query: clean keys of
    strictly earlier blocks and noised keys of its own block; never a noised
    key from a clean query; never an invalid key. A query with no allowed
    key gets itself (``process_pad``).
    """
    qb, kb = block[:, :, None], block[:, None, :]
    qn, kn = noised[:, :, None], noised[:, None, :]
    clean = torch.where(qn, kb < qb, kb <= qb)
    m = torch.where(kn, qn & (kb == qb), clean) & valid[:, None, :]
    dead = ~m.any(-1, keepdim=True)
    eye = torch.eye(m.shape[-1], dtype=torch.bool)[None]
    return (m | (dead & eye))[:, None]


# --------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------


class BlockCache(DynamicCache):
    """A ``DynamicCache`` that can be read without being written.

    With ``store=False`` a forward attends to ``[cached K/V | its own K/V]``
    and leaves the cache as it was (the denoising forwards); with
    ``store=True`` it appends (prefill and the finished block's write).
    """

    store = True

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.store:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


class PeerRollout(NamedTuple):
    """What :func:`peer_sample` returns (NumPy, the fields of our ``Rollout``) plus forward counts."""

    tokens: np.ndarray
    step_map: np.ndarray
    logprobs: np.ndarray
    confidences: np.ndarray
    lengths: np.ndarray
    num_steps: np.ndarray
    forwards: dict


def _sample(logits: torch.Tensor, temperature: float, top_k: int, mask_id: int, gen: torch.Generator):
    """tokens, confidence, model log-prob per position (``tracerl_jax.sampling.token_sampling.sample``)."""
    logits = logits.float()
    logp_model = torch.log_softmax(logits, dim=-1)
    z = logits.clone()
    z[..., mask_id] = NEG
    if temperature == 0.0:
        tok = z.argmax(-1)
        lp = logp_model.gather(-1, tok[..., None])[..., 0]
        return tok, lp.exp(), lp
    if temperature != 1.0:
        z = z / temperature
    if top_k > 0:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = torch.where(z >= kth, z, torch.full_like(z, NEG))
    logp_s = torch.log_softmax(z, dim=-1)
    flat = logp_s.exp().reshape(-1, z.shape[-1])
    tok = torch.multinomial(flat, 1, generator=gen).reshape(z.shape[:-1])
    conf = logp_s.gather(-1, tok[..., None])[..., 0].exp()
    return tok, conf, logp_model.gather(-1, tok[..., None])[..., 0]


def _select(strategy: str, conf: torch.Tensor, masked: torch.Tensor, quota: int, threshold: float) -> torch.Tensor:
    """Commit mask of one step (``tracerl_jax.sampling.remasking.select``, no overwrite)."""
    k = torch.clamp(masked.sum(-1, keepdim=True), max=quota)
    score = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
    order = torch.argsort(-score, dim=-1, stable=True)          # ties: lower index first
    rank = torch.argsort(order, dim=-1, stable=True)
    topk = (rank < k) & masked
    if strategy == "low_confidence_static":
        return topk
    if strategy == "low_confidence_dynamic":
        high = masked & (conf > threshold)
        return torch.where(high.sum(-1, keepdim=True) >= k, high, topk)
    raise ValueError(f"peer supports low_confidence_static/dynamic, got {strategy!r}")


@torch.no_grad()
def peer_sample(model, prompts: np.ndarray, prompt_valid: np.ndarray, cfg, seed: int = 0) -> PeerRollout:
    """Block-diffusion generation with a dynamic KV cache, eagerly, as a Python loop.

    Args:
      model: a ``Qwen3ForCausalLM`` (see :func:`load_model`).
      prompts: int ``[B, Lp]`` left-padded prompt ids.
      prompt_valid: bool ``[B, Lp]`` (a suffix of each row).
      cfg: a :class:`tracerl_jax.sampling.BlockSamplerConfig` (``compat="recommended"``,
        ``top_p=1``).
      seed: seed of the torch generator (sampled tokens differ from ours; greedy ones do not).

    Returns:
      :class:`PeerRollout`; ``forwards`` counts batch-wide ``prefill``, ``denoise``, ``save`` forwards.
    """
    if cfg.compat != "recommended" or cfg.top_p != 1.0:
        raise ValueError("the peer implements compat='recommended' without top-p")
    gen = torch.Generator().manual_seed(seed)
    inner, head = model.model, model.lm_head
    prompts = torch.as_tensor(np.asarray(prompts), dtype=torch.long)
    pvalid = torch.as_tensor(np.asarray(prompt_valid), dtype=torch.bool)
    B, Lp = prompts.shape
    b, S, G = cfg.block_size, cfg.steps_per_block, cfg.gen_length
    Lg = -(-Lp // b) * b
    nb = G // b
    base, rem = divmod(b, S)
    quotas = [base + 1 if s < rem else base for s in range(S)]

    # Canvas: prompt right-aligned to Lg, positions count real tokens.
    P = pvalid.sum(-1)
    start = Lg - P
    c = torch.arange(Lg + G)[None]
    src = torch.clamp(c - start[:, None] + (Lp - P)[:, None], 0, Lp - 1)
    is_prompt = (c >= start[:, None]) & (c < Lg)
    canvas_p = torch.where(is_prompt[:, :Lg], prompts.gather(1, src[:, :Lg]), cfg.pad_id)
    positions = torch.clamp(c - start[:, None], min=0)
    kv_valid = (c >= start[:, None])[:, :Lg]

    cache = BlockCache()
    cache.store = True
    blk_id = torch.arange(Lg) // b
    m = block_mask(blk_id[None].expand(B, Lg), torch.zeros(B, Lg, dtype=torch.bool), kv_valid)
    inner(input_ids=canvas_p, position_ids=positions[:, :Lg], attention_mask=additive(m),
          **{CACHE_ARG: cache}, use_cache=True)
    fwd = dict(prefill=1, denoise=0, save=0)

    resp = torch.full((B, G), cfg.mask_id, dtype=torch.long)
    step = torch.zeros(B, G, dtype=torch.long)
    logp = torch.zeros(B, G)
    conf = torch.zeros(B, G)
    finished = torch.zeros(B, dtype=torch.bool)
    appended = torch.zeros(B, dtype=torch.long)
    blocks_done = torch.zeros(B, dtype=torch.long)
    g = torch.zeros(B, dtype=torch.long)
    pos_in = torch.arange(b)[None]
    j = 0
    while j < nb and not bool(finished.all()):
        off = j * b
        live = ~finished
        blk = resp[:, off:off + b].clone()
        bstep = step[:, off:off + b].clone()
        blogp, bconf = logp[:, off:off + b].clone(), conf[:, off:off + b].clone()
        bpos = positions[:, Lg + off:Lg + off + b]
        # every cached key that is valid, and the whole block: one mask for denoise and save forwards
        mask = additive(torch.cat([kv_valid, torch.ones(B, b, dtype=torch.bool)], 1)[:, None, None, :]
                        .expand(B, 1, b, kv_valid.shape[1] + b))
        cache.store = False
        for s in range(S):
            masked = blk == cfg.mask_id
            active = live & masked.any(-1)
            if not bool(active.any()):
                break
            h = inner(input_ids=blk, position_ids=bpos, attention_mask=mask, **{CACHE_ARG: cache},
                      use_cache=True).last_hidden_state
            fwd["denoise"] += 1
            tok, cf, lp = _sample(head(h), cfg.temperature, cfg.top_k, cfg.mask_id, gen)
            commit = _select(cfg.strategy, cf, masked, quotas[s], cfg.threshold) & active[:, None]
            first = commit & (bstep == 0)
            blk = torch.where(commit, tok, blk)
            bstep = torch.where(first, (g + 1)[:, None], bstep)
            blogp = torch.where(commit, lp, blogp)
            bconf = torch.where(commit, cf, bconf)
            g = g + active.long()
        # Stop scan: EOS checked before the budget.
        idx = off + pos_in
        is_eos = (blk == cfg.eos_id) & (not cfg.ignore_eos)
        stop = is_eos | (idx >= cfg.budget)
        any_stop = stop.any(-1)
        first_stop = torch.where(any_stop, stop.long().argmax(-1), torch.full_like(any_stop, b, dtype=torch.long))
        app = (pos_in < first_stop[:, None]) | ((pos_in == first_stop[:, None]) & is_eos)
        appended = appended + torch.where(live, app.sum(-1), 0)
        finished = finished | (live & (any_stop | (appended >= cfg.budget)))
        resp[:, off:off + b], step[:, off:off + b] = blk, bstep
        logp[:, off:off + b], conf[:, off:off + b] = blogp, bconf
        blocks_done = blocks_done + live.long()
        if bool((~finished).any()) and j + 1 < nb:
            cache.store = True
            inner(input_ids=blk, position_ids=bpos, attention_mask=mask, **{CACHE_ARG: cache}, use_cache=True)
            kv_valid = torch.cat([kv_valid, torch.ones(B, b, dtype=torch.bool)], 1)
            fwd["save"] += 1
        j += 1
    in_run = torch.arange(G)[None] < (blocks_done * b)[:, None]
    return PeerRollout(
        torch.where(in_run, resp, cfg.pad_id).int().numpy(), torch.where(in_run, step, 0).int().numpy(),
        torch.where(in_run, logp, 0.0).numpy(), torch.where(in_run, conf, 0.0).numpy(),
        appended.int().numpy(), g.int().numpy(), fwd)


# --------------------------------------------------------------------------
# Policy step
# --------------------------------------------------------------------------


def rows_to_torch(rows, logp_old, advantages, *, grad_accum: int, L1_ref: float) -> list[dict]:
    """Our block-model ``Rows`` (+ old log-probs, advantages) as ``grad_accum`` torch micro-batches.

    ``num_rows`` is ``max(valid rows, 1) / grad_accum`` for every micro-batch,
    as :func:`tracerl_jax.train.steps.batch_scalars`.
    """
    a = lambda x: np.array(x)  # a writable copy (torch warns about read-only JAX-backed buffers)
    R = a(rows.row_valid).shape[0]
    num_rows = max(float(a(rows.row_valid).sum()), 1.0) / grad_accum
    full = dict(
        tokens=torch.as_tensor(a(rows.tokens), dtype=torch.long),
        positions=torch.as_tensor(a(rows.positions), dtype=torch.long),
        block=torch.as_tensor(a(rows.mask_info.block), dtype=torch.long),
        noised=torch.as_tensor(a(rows.mask_info.noised), dtype=torch.bool),
        valid=torch.as_tensor(a(rows.mask_info.valid), dtype=torch.bool),
        labels=torch.as_tensor(a(rows.labels), dtype=torch.long),
        p_mask=torch.as_tensor(a(rows.scored), dtype=torch.bool),
        logp_old=torch.as_tensor(a(logp_old), dtype=torch.float32),
        advantages=torch.as_tensor(a(advantages), dtype=torch.float32))
    mb = R // grad_accum
    return [dict({k: v[i * mb:(i + 1) * mb] for k, v in full.items()}, num_rows=num_rows, L1_ref=float(L1_ref))
            for i in range(grad_accum)]


def trajectory_logprobs(model, micro: dict) -> torch.Tensor:
    """``log pi(label)`` of every response position read at the noised copy, float32 ``[R, L1]``."""
    mask = additive(block_mask(micro["block"], micro["noised"], micro["valid"]))
    h = model.model(input_ids=micro["tokens"], position_ids=micro["positions"], attention_mask=mask,
                    use_cache=False).last_hidden_state
    L1 = micro["labels"].shape[1]
    logits = model.lm_head(h[:, -L1:]).float()
    return torch.log_softmax(logits, -1).gather(-1, micro["labels"][..., None])[..., 0]


def policy_loss(logp, micro: dict, *, eps=0.2, log_ratio_clip=10.0, beta=0.01) -> torch.Tensor:
    """PPO-clip + beta * k3 KL against ``logp_old``, ``global_L1`` normaliser (``losses.policy_loss``)."""
    p = micro["p_mask"]
    adv = micro["advantages"][:, None]
    raw = torch.where(p, logp - micro["logp_old"], 0.0)
    ratio = torch.exp(torch.clamp(raw, -log_ratio_clip, log_ratio_clip))
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    reduce = lambda x: (torch.where(p, x, 0.0).sum(-1) / micro["L1_ref"]).sum() / micro["num_rows"]
    kappa = raw  # logp_ref = logp_old
    k3 = torch.exp(torch.clamp(-kappa, -log_ratio_clip, log_ratio_clip)) - 1.0 + kappa
    return -reduce(surr) + beta * reduce(k3)


class PeerPolicyStep:
    """One TraceRL update, eagerly: forward + backward per micro-batch, clip, AdamW.

    Args:
      model: a ``Qwen3ForCausalLM`` (trained in place; call :meth:`reset` to
        go back to the initial weights and a fresh optimizer).
      lr, max_grad_norm, betas, eps_adam, weight_decay: as
        :class:`tracerl_jax.train.optimizer.OptimizerConfig`'s defaults.
      remat: ``gradient_checkpointing_enable()`` (recompute each layer in the backward).
    """

    def __init__(self, model, lr=1e-5, max_grad_norm: Optional[float] = 1.0, betas=(0.9, 0.999),
                 eps_adam=1e-8, weight_decay=0.0, remat: bool = False):
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.opt_args = dict(lr=lr, betas=betas, eps=eps_adam, weight_decay=weight_decay)
        if remat:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._init = [p.detach().clone() for p in self.params]
        self.reset()

    def reset(self):
        with torch.no_grad():
            for p, p0 in zip(self.params, self._init):
                p.copy_(p0)
        self.opt = torch.optim.AdamW(self.params, **self.opt_args)

    def __call__(self, micros: list[dict]) -> dict:
        """Returns ``loss`` (mean over micro-batches), ``grad_norm`` (before clipping), ``skipped``."""
        model = self.model
        model.train()  # no dropout in Qwen3; train() only enables gradient checkpointing when asked
        self.opt.zero_grad(set_to_none=True)
        ga, total = len(micros), 0.0
        for micro in micros:
            loss = policy_loss(trajectory_logprobs(model, micro), micro)
            (loss / ga).backward()
            total += float(loss.detach()) / ga
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        ok = bool(torch.isfinite(norm)) and np.isfinite(total)
        if ok:
            if self.max_grad_norm is not None and float(norm) >= self.max_grad_norm:
                torch._foreach_mul_(grads, self.max_grad_norm / float(norm))   # optax clip_by_global_norm
            self.opt.step()
        model.eval()
        return dict(loss=total, grad_norm=float(norm), skipped=float(not ok))


def peer_old_logprobs(model, micros: list[dict]) -> torch.Tensor:
    """``logp_old`` with the current weights, forward only, ``[R, L1]``."""
    with torch.no_grad():
        return torch.cat([trajectory_logprobs(model, m) for m in micros])
