"""TraceRL policy loss, value loss and SFT losses (docs/algorithms.md §6, §8.6, §10).

Every loss is a small pure function: per-token arrays ``[R, T]`` (for
training rows the response layout ``T = L1``, see :mod:`tracerl_jax.rows`)
plus a boolean ``p_mask`` in, ``(loss, metrics)`` out. Masking is by ``where`` (no boolean
indexing), so shapes stay static and masked positions never leak NaN/inf into
values or gradients.

Normalisers (§6.4, Q-L2), applied to a per-token quantity ``x``:

* ``"global_L1"`` [REF, block models]: ``(1/B) Σ_n Σ_t p·x / L1_ref``.
  ``L1_ref`` is an explicit scalar (the RL step's padded response length), so
  bucketing/padding never changes the per-token weight (Appendix A.1).
* ``"row_tokens"`` [REF, full-attention models]: ``(1/B) Σ_n Σ_t p·x / max(Σ_t p, 1)``.
* ``"batch_tokens"``: ``Σ_n Σ_t p·x / max(Σ_n Σ_t p, 1)``.

``B`` is ``num_rows`` when given (e.g. the number of real rows of the whole
accumulated batch, when rows are padded), else ``R``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import checks

from tracerl_jax.registry import Registry

NORMALIZERS = ("global_L1", "row_tokens", "batch_tokens")
# Metrics that are means over a micro-batch's scored tokens: a train step combines them over
# micro-batches weighted by each one's ``num_tokens`` (an empty micro-batch weighs nothing).
TOKEN_MEAN_METRICS = frozenset({"clip_fraction", "ratio_mean", "approx_kl", "log_ratio_clip_fraction",
                                "advantage_mean", "advantage_std", "value_clip_fraction", "value_mean",
                                "return_mean", "value_error", "nll"})
KL_NORMALIZERS = NORMALIZERS + ("sum",)
KL_ESTIMATORS = ("k1", "k2", "k3")


def _check_normalizer(normalizer: str, L1_ref, allowed=NORMALIZERS, name="normalizer") -> None:
    if normalizer not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {normalizer!r}")
    if normalizer == "global_L1" and L1_ref is None:
        raise ValueError(f"L1_ref (the padded response length, a scalar) is required for "
                         f"{name}='global_L1'")


def _check_mask(p_mask) -> tuple[int, int]:
    if np.ndim(p_mask) != 2:
        raise ValueError(f"p_mask must have shape [R, T], got {np.shape(p_mask)}")
    return tuple(np.shape(p_mask))


def masked_reduce(x: jax.Array, p_mask: jax.Array, *, normalizer: str = "global_L1",
                  L1_ref=None, num_rows=None) -> jax.Array:
    """Reduces a per-token quantity ``x [R, T]`` over ``p_mask`` to a scalar.

    See the module docstring for the normalisers; ``"sum"`` is
    ``(1/B) Σ_n Σ_t p·x`` (the full-attention [REF] KL, §6.4).
    """
    p = p_mask.astype(jnp.float32)
    x = jnp.where(p_mask, x, 0.0)
    R = x.shape[0]
    B = jnp.asarray(R if num_rows is None else num_rows, jnp.float32)
    if normalizer == "batch_tokens":
        return jnp.sum(x) / jnp.maximum(jnp.sum(p), 1.0)
    per_row = jnp.sum(x, axis=-1)
    if normalizer == "global_L1":
        per_row = per_row / jnp.asarray(L1_ref, jnp.float32)
    elif normalizer == "row_tokens":
        per_row = per_row / jnp.maximum(jnp.sum(p, axis=-1), 1.0)
    return jnp.sum(per_row) / B


def _token_mean(x, p_mask):
    p = p_mask.astype(jnp.float32)
    return jnp.sum(jnp.where(p_mask, x, 0.0)) / jnp.maximum(jnp.sum(p), 1.0)


def kl_penalty(logp: jax.Array, logp_ref: jax.Array, p_mask: jax.Array, *,
               estimator: str = "k3", log_ratio_clip: Optional[float] = 10.0) -> jax.Array:
    """Per-token KL estimate of ``KL(π_θ ‖ π_ref)`` on rollout tokens (§6.3).

    With ``κ = p·(logp − logp_ref)``:

    * ``k1 = κ``;  ``k2 = κ²/2``;
    * ``k3 = exp(clip(−κ, −c, c)) − 1 + κ`` (``= e^u − 1 − u`` with ``u = −κ``,
      non-negative), ``c = log_ratio_clip`` (``None``: no clamp, [REF] LLaDA,
      Q-L3).

    Args:
      logp, logp_ref, p_mask: ``[R, T]``.

    Returns:
      float32 ``[R, T]``, 0 outside ``p_mask``.
    """
    kappa = jnp.where(p_mask, logp.astype(jnp.float32) - logp_ref.astype(jnp.float32), 0.0)
    if estimator == "k1":
        k = kappa
    elif estimator == "k2":
        k = 0.5 * kappa * kappa
    elif estimator == "k3":
        neg = -kappa if log_ratio_clip is None else jnp.clip(-kappa, -log_ratio_clip, log_ratio_clip)
        k = jnp.exp(neg) - 1.0 + kappa
    else:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    return jnp.where(p_mask, k, 0.0)


def policy_loss(logp_new: jax.Array, logp_old: jax.Array, advantages: jax.Array,
                p_mask: jax.Array, *, eps: float = 0.2, log_ratio_clip: Optional[float] = 10.0,
                normalizer: str = "global_L1", L1_ref=None, num_rows=None, beta: float = 0.0,
                logp_ref: Optional[jax.Array] = None, kl_estimator: str = "k3",
                kl_normalizer: Optional[str] = None) -> tuple[jax.Array, dict]:
    """PPO-clip surrogate with an optional KL penalty (§6.2–6.4).

    With ``p = p_mask``, ``ℓ = logp_new``, ``ℓ° = logp_old``, ``c = log_ratio_clip``::

        δ   = clip(p·(ℓ − ℓ°), −c, c)             # c=None: no clamp (Q-L3 [REF] LLaDA)
        ρ   = exp(δ)
        s   = min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)
        L   = −reduce(s)  +  β · reduce_kl(kl_penalty(ℓ, logp_ref))

    ``reduce`` is :func:`masked_reduce` with ``normalizer``; ``reduce_kl`` uses
    ``kl_normalizer`` (default: the same; ``"sum"`` is the full-attention
    [REF] KL, unnormalised). Block models [REF]: ``normalizer="global_L1"``,
    ``L1_ref=L1``, clamp 10. Full-attention [REF]: ``"row_tokens"``,
    ``log_ratio_clip=None``, ``kl_normalizer="sum"``.

    The KL reference is explicit (Q-L1): pass ``logp_ref=logp_old`` for the
    reference behaviour (a trust region around the pre-update policy), or a
    frozen reference model's log-probs. Where ``ρ`` is clipped on the side
    that the ``min`` selects (``ρ > 1+ε`` with ``A > 0``, ``ρ < 1−ε`` with
    ``A < 0``) the surrogate's gradient is exactly zero.

    Args:
      logp_new: float ``[R, T]`` current log-probs of the labels.
      logp_old: float ``[R, T]`` log-probs before the update (§6.1).
      advantages: float ``[R]`` (one per row) or ``[R, T]`` (per token, §8.7).
      p_mask: bool ``[R, T]``.
      eps: PPO clip ε.
      log_ratio_clip: clamp of the log-ratio (and inside k3), or None.
      normalizer: ``"global_L1"`` | ``"row_tokens"`` | ``"batch_tokens"``.
      L1_ref: scalar, required for ``"global_L1"``.
      num_rows: scalar row count ``B`` of the mean over rows (default ``R``).
      beta: KL coefficient; ``beta != 0`` needs ``logp_ref``.
      logp_ref: float ``[R, T]`` or None.
      kl_estimator: ``"k3"`` [REF default] | ``"k1"`` | ``"k2"``.
      kl_normalizer: None (same as ``normalizer``) or one of the normalisers
        or ``"sum"``.

    Returns:
      ``(loss, metrics)``: scalar float32 loss; metrics (no gradient):
      ``pg_loss``, ``kl``, ``clip_fraction`` (scored tokens whose gradient the
      clip removes), ``ratio_mean``/``ratio_min``/``ratio_max``, ``approx_kl``
      (token mean k3 between new and old), ``log_ratio_clip_fraction``,
      ``num_tokens``, ``advantage_mean``, ``advantage_std`` (token-level spread of
      the advantages, the variance a value model is meant to reduce).

    Example::

      loss, m = policy_loss(lp, lp_old, adv, rows.p_mask, L1_ref=L1,
                            beta=0.01, logp_ref=lp_old)
    """
    R, T = _check_mask(p_mask)
    checks.shape("logp_new", logp_new, (R, T))
    checks.shape("logp_old", logp_old, (R, T))
    if np.shape(advantages) not in ((R,), (R, T)):
        raise ValueError(f"advantages must have shape ({R},) or ({R}, {T}), got {np.shape(advantages)}")
    _check_normalizer(normalizer, L1_ref)
    kl_norm = normalizer if kl_normalizer is None else kl_normalizer
    _check_normalizer(kl_norm, L1_ref, KL_NORMALIZERS, "kl_normalizer")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if isinstance(eps, (int, float)) and not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if logp_ref is not None:
        checks.shape("logp_ref", logp_ref, (R, T))
    elif not (isinstance(beta, (int, float)) and beta == 0):
        raise ValueError("logp_ref is required when beta != 0 (pass logp_old for the reference "
                         "behaviour Q-L1, or a frozen reference model's log-probs)")

    p_mask = jnp.asarray(p_mask, bool)
    adv = jnp.asarray(advantages, jnp.float32)
    adv = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, (R, T))
    raw = jnp.where(p_mask, logp_new.astype(jnp.float32) - logp_old.astype(jnp.float32), 0.0)
    delta = raw if log_ratio_clip is None else jnp.clip(raw, -log_ratio_clip, log_ratio_clip)
    ratio = jnp.exp(delta)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * adv)
    pg_loss = -masked_reduce(surrogate, p_mask, normalizer=normalizer, L1_ref=L1_ref,
                             num_rows=num_rows)
    if logp_ref is not None:
        kl_tok = kl_penalty(logp_new, logp_ref, p_mask, estimator=kl_estimator,
                            log_ratio_clip=log_ratio_clip)
        kl = masked_reduce(kl_tok, p_mask, normalizer=kl_norm, L1_ref=L1_ref, num_rows=num_rows)
    else:
        kl = jnp.zeros((), jnp.float32)
    loss = pg_loss + beta * kl

    sg = jax.lax.stop_gradient
    r, a = sg(ratio), sg(adv)
    clipped = ((a > 0) & (r > 1.0 + eps)) | ((a < 0) & (r < 1.0 - eps))
    big = jnp.finfo(jnp.float32).max
    metrics = {
        "pg_loss": sg(pg_loss),
        "kl": sg(kl),
        "clip_fraction": _token_mean(clipped.astype(jnp.float32), p_mask),
        "ratio_mean": _token_mean(r, p_mask),
        "ratio_min": jnp.min(jnp.where(p_mask, r, big)),
        "ratio_max": jnp.max(jnp.where(p_mask, r, -big)),
        "approx_kl": _token_mean(sg(jnp.exp(-delta) - 1.0 + delta), p_mask),
        "log_ratio_clip_fraction": (_token_mean((sg(raw) != sg(delta)).astype(jnp.float32), p_mask)),
        "num_tokens": jnp.sum(p_mask.astype(jnp.float32)),
        "advantage_mean": _token_mean(a, p_mask),
        "advantage_std": jnp.sqrt(jnp.maximum(_token_mean(a * a, p_mask) - _token_mean(a, p_mask) ** 2, 0.0)),
    }
    return loss, metrics


# Policy losses by name (``PolicyLossConfig.name``). An entry takes
# ``(logp_new, logp_old, advantages, p_mask, **settings)`` with the settings of
# :func:`policy_loss` and returns ``(loss, metrics)``.
POLICY_LOSSES: Registry = Registry("policy loss")
POLICY_LOSSES.register("ppo_clip", policy_loss)


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, p_mask: jax.Array,
               *, clip: Optional[float] = 0.2, normalizer: str = "global_L1", L1_ref=None,
               num_rows=None) -> tuple[jax.Array, dict]:
    """Clipped value regression (§8.6)::

        v_clip = V_old + clip(v − V_old, −c, c)                 # c = clip; None: no clip
        ℓ      = ½ · max((v − R)², (v_clip − R)²)
        loss   = reduce(ℓ)                                      # [REF] global_L1 with L1

    The clip is its own argument (Q-V2 fix); the reference reuses the policy
    ``eps = 0.2``, so pass ``clip=eps`` for parity.

    Args:
      values: float ``[R, T]`` current values at the scored positions (the
        noised-position outputs in the row layout).
      old_values: float ``[R, T]`` values before the update.
      returns: float ``[R, T]`` targets ``R_j`` (§8.4).
      p_mask: bool ``[R, T]``.
      clip, normalizer, L1_ref, num_rows: see above / module docstring.

    Returns:
      ``(loss, metrics)`` with ``value_clip_fraction``, ``value_mean``,
      ``return_mean``, ``value_error`` (token-mean squared error),
      ``num_tokens``.
    """
    R, T = _check_mask(p_mask)
    for name, x in (("values", values), ("old_values", old_values), ("returns", returns)):
        checks.shape(name, x, (R, T))
    _check_normalizer(normalizer, L1_ref)
    if isinstance(clip, (int, float)) and not clip >= 0:
        raise ValueError(f"clip must be None or >= 0, got {clip!r}")
    p_mask = jnp.asarray(p_mask, bool)
    v = jnp.where(p_mask, values.astype(jnp.float32), 0.0)
    old = jnp.where(p_mask, old_values.astype(jnp.float32), 0.0)
    ret = jnp.where(p_mask, returns.astype(jnp.float32), 0.0)
    v_clip = v if clip is None else old + jnp.clip(v - old, -clip, clip)
    err, err_clip = (v - ret) ** 2, (v_clip - ret) ** 2
    loss = masked_reduce(0.5 * jnp.maximum(err, err_clip), p_mask, normalizer=normalizer,
                         L1_ref=L1_ref, num_rows=num_rows)
    sg = jax.lax.stop_gradient
    metrics = {
        "value_clip_fraction": _token_mean(sg(err_clip > err).astype(jnp.float32), p_mask),
        "value_mean": _token_mean(sg(v), p_mask),
        "return_mean": _token_mean(ret, p_mask),
        "value_error": _token_mean(sg(err), p_mask),
        "num_tokens": jnp.sum(p_mask.astype(jnp.float32)),
    }
    return loss, metrics


# --------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------


def token_logprobs(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``log softmax(logits)[label]`` in float32.

    Computed as ``z[label] − logsumexp(z)`` so the ``[.., V]`` log-softmax is
    never materialised.

    Args:
      logits: ``[..., V]`` any float dtype.
      labels: int ``[...]``.

    Returns:
      float32 ``[...]``.
    """
    if np.shape(logits)[:-1] != np.shape(labels):
        raise ValueError(f"labels must have shape {np.shape(logits)[:-1]} (logits without the vocab "
                         f"axis), got {np.shape(labels)}")
    z = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(z, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def _as_logp(logits_or_logp, labels, p_mask):
    R, T = _check_mask(p_mask)
    if np.ndim(logits_or_logp) == 3:
        if labels is None:
            raise ValueError("labels are required when logits [R, T, V] are given")
        checks.shape("labels", labels, (R, T))
        if tuple(np.shape(logits_or_logp)[:2]) != (R, T):
            raise ValueError(f"logits must have shape ({R}, {T}, V), got {np.shape(logits_or_logp)}")
        return token_logprobs(logits_or_logp, labels)
    checks.shape("logp", logits_or_logp, (R, T))
    return logits_or_logp.astype(jnp.float32)


def masked_nll(logits_or_logp: jax.Array, labels: Optional[jax.Array], p_mask: jax.Array, *,
               normalizer: str = "global_L1", L1_ref=None, num_rows=None,
               row_weights: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
    """Masked negative log-likelihood, the SFT loss of §10::

        loss = reduce(−w_n · log p(label))        # [REF] block SFT: global_L1, w = 1

    Block semi-AR SFT (random rows, ``baselines.semi_ar_sft_rows``) and trace
    SFT (``trajectory.build_rows``) both use this on the row layout. No
    ``1/t`` weighting unless ``row_weights`` is given. The reference block SFT
    does not divide by the accumulation count (Q-O4); that is the caller's
    choice.

    Args:
      logits_or_logp: logits ``[R, T, V]`` (then ``labels`` ``[R, T]`` is
        required) or token log-probs ``[R, T]`` (``labels`` ignored).
      labels: int ``[R, T]`` or None.
      p_mask: bool ``[R, T]``.
      normalizer, L1_ref, num_rows: see the module docstring.
      row_weights: optional float ``[R]`` per-row weights ``w_n``.

    Returns:
      ``(loss, {"nll": token-mean NLL, "num_tokens": scored tokens})``.
    """
    logp = _as_logp(logits_or_logp, labels, p_mask)
    _check_normalizer(normalizer, L1_ref)
    R = logp.shape[0]
    nll = -logp
    if row_weights is not None:
        checks.shape("row_weights", row_weights, (R,))
        nll = nll * jnp.asarray(row_weights, jnp.float32)[:, None]
    p_mask = jnp.asarray(p_mask, bool)
    loss = masked_reduce(nll, p_mask, normalizer=normalizer, L1_ref=L1_ref, num_rows=num_rows)
    metrics = {"nll": _token_mean(jax.lax.stop_gradient(-logp), p_mask),
               "num_tokens": jnp.sum(p_mask.astype(jnp.float32))}
    return loss, metrics


def random_masking_sft_loss(logits_or_logp: jax.Array, labels: Optional[jax.Array],
                            p_mask: jax.Array, *, mask_ratio: Optional[jax.Array] = None,
                            normalizer: str = "row_tokens", L1_ref=None,
                            num_rows=None) -> tuple[jax.Array, dict]:
    """Random-masking (MDLM-style) SFT loss (§10.2).

    [REF] (``mask_ratio=None``): ``(1/B) Σ_n −Σ_t p·log p / max(Σ_t p, 1)``,
    no ``1/t`` weighting. With ``mask_ratio`` ``t_n`` ``[R]`` (the row's
    sampled masking ratio) each row is weighted by ``1/t_n``, the MDLM ELBO
    weighting (use it with ``normalizer="global_L1"`` or ``"batch_tokens"``
    for the usual ``1/(t·L)`` form).

    Args: as :func:`masked_nll`; ``mask_ratio`` float ``[R]`` in ``(0, 1]``.
    """
    weights = None
    if mask_ratio is not None:
        checks.shape("mask_ratio", mask_ratio, (np.shape(p_mask)[0],))
        weights = 1.0 / jnp.maximum(jnp.asarray(mask_ratio, jnp.float32), 1e-6)
    return masked_nll(logits_or_logp, labels, p_mask, normalizer=normalizer, L1_ref=L1_ref,
                      num_rows=num_rows, row_weights=weights)
