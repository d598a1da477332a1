"""An RL recipe (``configs/tracerl.py`` and the recipes built on it) read and checked.

Everything a run would find wrong about its recipe is found here first, before
anything is built or allocated, as a ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from tracerl_jax.advantages import ADVANTAGE_ESTIMATORS
from tracerl_jax.families import Family, RowSettings, get_family
from tracerl_jax.families.block import BlockFamily
from tracerl_jax.losses import POLICY_LOSSES
from tracerl_jax.models.config import canonical_dtype
from tracerl_jax.registry import check_name
from tracerl_jax.rl.stages import ROW_BUILDERS
from tracerl_jax.train.steps import PolicyLossConfig

REFERENCES = ("rollout", "initial")
ROLLOUT_ENGINES = ("block", "slots")
OLD_LOGPROBS = ("trainer", "rollout")


def mesh_shape(mesh, device_count: int, field: str = "mesh") -> tuple[int, int, int]:
    """``(data, fsdp, tensor)`` of a recipe's mesh; one entry may be -1 (the devices the others leave).

    Raises:
      ValueError: not three ints, more than one -1, a non-positive size, or a
        product that does not match ``device_count``.
    """
    try:
        shape = tuple(int(v) for v in mesh)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be (data, fsdp, tensor) ints, got {mesh!r}") from None
    if len(shape) != 3 or any(isinstance(v, bool) for v in mesh):
        raise ValueError(f"{field} must be (data, fsdp, tensor), got {mesh!r}")
    if shape.count(-1) > 1 or any(v == 0 or v < -1 for v in shape):
        raise ValueError(f"{field}={mesh!r}: sizes must be >= 1, with at most one -1 (the devices the others leave)")
    known = int(np.prod([v for v in shape if v != -1]))
    if -1 in shape:
        if device_count % known:
            raise ValueError(f"{field}={mesh!r}: {device_count} devices are not divisible by {known}")
        shape = tuple(device_count // known if v == -1 else v for v in shape)
    if int(np.prod(shape)) != device_count:
        raise ValueError(f"{field}={mesh!r} has {int(np.prod(shape))} devices; this run has {device_count}")
    return shape


def resolve_batch_rows(cfg, device_count: int) -> None:
    """Sets ``rl.batch_rows`` from ``rl.batch_rows_per_device`` when that is given.

    The reference's recipes state the update size per GPU (``batch_size_lm``
    x GA); a global ``batch_rows`` written for one device count would leave
    micro-batches that do not split over another, so the accelerator recipes
    give rows per device and the run multiplies by its device count.
    """
    per = cfg.rl.get("batch_rows_per_device")
    if per is None:
        return
    if not isinstance(per, int) or isinstance(per, bool) or per < 1:
        raise ValueError(f"rl.batch_rows_per_device must be an int >= 1 or None, got {per!r}")
    cfg.rl.batch_rows = per * device_count


def advantage_estimator(cfg) -> str:
    """``rl.advantage``, or step-level GAE with the value model and group z-scores without (§7.4, §8)."""
    return cfg.rl.advantage or ("step_gae" if cfg.value.enabled else "group")


def row_settings(cfg, tokenizer) -> RowSettings:
    """The row fields of the recipe."""
    c = cfg.rl
    return RowSettings(mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, block_size=cfg.rollout.block_size,
                       shrink=c.shrink, post_num=c.post_num, lower_p=c.lower_p, upper_p=c.upper_p,
                       mask_ratio=c.mask_ratio, num_draws=c.num_draws, compat=cfg.rollout.compat,
                       pack=c.get("pack_rounds"))


def policy_loss_config(cfg, family: Family | str) -> PolicyLossConfig:
    """The policy loss (§6) of ``cfg.rl`` in the family's reference form (block §6.2; full attention
    §6.4: no log-ratio clamp, a per-row token mean, an unnormalised KL)."""
    c = cfg.rl
    family = get_family(family) if isinstance(family, str) else family
    return dataclasses.replace(PolicyLossConfig(**family.policy_loss_defaults), name=c.loss, eps=c.eps, beta=c.beta,
                               kl_estimator=c.kl_estimator, normalizer=c.normalizer or family.normalizer)


def model_settings(cfg) -> dict:
    """The :class:`~tracerl_jax.models.ModelConfig` fields the recipe sets on any policy."""
    m = cfg.model
    return dict(remat=m.remat, attention_impl=m.attention_impl, param_dtype=m.get("param_dtype", "float32"),
                dtype=m.get("dtype", "float32"), scan_layers=m.get("scan_layers", False))


def rollout_rows_per_call(cfg, row_devices: int, process_count: int = 1) -> Optional[int]:
    """This process's rows per rollout sampler call (``rollout.rows_per_device`` x its batch devices).

    Args:
      cfg: the RL recipe.
      row_devices: the mesh's ``data x fsdp`` devices (all processes).
      process_count: processes of the run.

    Returns:
      The rows, or ``None`` (the field unset): a step's responses in one call.
    """
    per = cfg.rollout.get("rows_per_device")
    if per is None:
        return None
    return per * max(row_devices // process_count, 1)


def rollout_engine(cfg, rows_per_call: int):
    """The slot engine's settings for the training rollouts, or None for the block sampler (``rollout.engine``).

    Args:
      cfg: the RL recipe.
      rows_per_call: responses of one sampler call (the engine's queue).

    Returns:
      :class:`~tracerl_jax.sampling.EngineConfig` with ``rollout.slots``
      slots (default: ``rows_per_call``, at most 32: on the default recipe
      32 slots measured faster than 64, benchmarks/README.md) and the recipe's
      ``prompt_len`` as the prompt budget; None with ``rollout.engine='block'``.
    """
    from tracerl_jax.sampling import EngineConfig

    if cfg.rollout.get("engine", "block") == "block":
        return None
    slots = cfg.rollout.get("slots") or min(rows_per_call, 32)
    return EngineConfig(num_slots=slots, max_prompt_len=cfg.prompt_len)


def check_config(cfg, *, family: Family | str = "sdar", process_count: int = 1, device_count: int = 1,
                 platform: str = "cpu") -> None:
    """Rejects a recipe that cannot run, before anything is built.

    Args:
      cfg: the RL config.
      family: the policy's family: some settings exist for block models
        only, others for full attention only.
      process_count, device_count: of the run.
      platform: the backend (``cpu``, ``gpu``, ``tpu``): which dtypes it runs.

    Raises:
      ValueError: naming the field and what it must satisfy (lengths that are
        not block multiples, batches that do not split over the processes'
        prompts or the devices' rows, meshes that do not match the devices,
        unknown method/loss/estimator names, dtypes, settings of the other
        model family, ...).
    """
    r, c = cfg.rollout, cfg.rl
    family = get_family(family) if isinstance(family, str) else family
    check_name(ROW_BUILDERS, c.method, "rl.method")
    check_name(POLICY_LOSSES, c.loss, "rl.loss")
    estimator = advantage_estimator(cfg)
    check_name(ADVANTAGE_ESTIMATORS, estimator, "rl.advantage")
    if getattr(ADVANTAGE_ESTIMATORS.get(estimator), "needs_values", False) != bool(cfg.value.enabled):
        raise ValueError(f"rl.advantage={estimator!r} {'needs' if not cfg.value.enabled else 'does not use'} the "
                         f"value model; set value.enabled={not cfg.value.enabled} or choose another estimator")
    for name, v in (("rollout.num_prompts", r.num_prompts), ("rollout.k", r.k), ("rollout.block_size",
                    r.block_size), ("rl.batch_rows", c.batch_rows), ("rl.grad_accum", c.grad_accum),
                    ("eval.every", cfg.eval.every), ("eval.batch_size", cfg.eval.batch_size),
                    ("checkpoint.every", cfg.checkpoint.every), ("task.num_train", cfg.task.num_train)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    warmup = c.get("warmup", 0)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"rl.warmup must be an int >= 0 (RL steps), got {warmup!r}")
    if warmup and c.schedule == "cosine_per_rl_step":
        raise ValueError("rl.warmup is not defined for rl.schedule='cosine_per_rl_step' (it restarts every RL step)")
    if not 0.0 <= c.get("min_lr_scale", 1.0) <= 1.0:
        raise ValueError(f"rl.min_lr_scale must be in [0, 1], got {c.min_lr_scale!r}")
    if c.total_steps < 0 or cfg.task.num_eval < 0:
        raise ValueError(f"rl.total_steps and task.num_eval must be >= 0, got {c.total_steps}, {cfg.task.num_eval}")
    if r.gen_length % r.block_size or cfg.prompt_len % r.block_size:
        raise ValueError(f"rollout.gen_length={r.gen_length} and prompt_len={cfg.prompt_len} must be multiples of "
                         f"rollout.block_size={r.block_size}")
    _check_family_settings(cfg, family)
    _check_precision(cfg, platform)
    if c.get("reference", "rollout") not in REFERENCES:
        raise ValueError(f"rl.reference must be one of {REFERENCES}, got {c.get('reference')!r}")
    if c.get("old_logprobs", "trainer") not in OLD_LOGPROBS:
        raise ValueError(f"rl.old_logprobs must be one of {OLD_LOGPROBS}, got {c.get('old_logprobs')!r}")
    if c.batch_rows % c.grad_accum:
        raise ValueError(f"rl.batch_rows={c.batch_rows} must be divisible by rl.grad_accum={c.grad_accum}")
    if cfg.value.enabled and c.method != "TraceRL":
        raise ValueError("the value model supports rl.method='TraceRL' only (as the reference)")
    if r.num_prompts % process_count:
        raise ValueError(f"rollout.num_prompts={r.num_prompts} must be divisible by the number of processes "
                         f"({process_count}): each process rolls out whole prompt groups")
    data, fsdp, _ = mesh_shape(cfg.get("mesh", (-1, 1, 1)), device_count)
    row_devices = data * fsdp
    micro = c.batch_rows // c.grad_accum
    if micro % row_devices:
        raise ValueError(f"a micro-batch of rl.batch_rows/rl.grad_accum = {micro} rows must be divisible by the "
                         f"mesh's data x fsdp = {row_devices} devices; raise rl.batch_rows or lower rl.grad_accum")
    if (r.num_prompts * r.k) % row_devices:
        raise ValueError(f"rollout.num_prompts x rollout.k = {r.num_prompts * r.k} responses must be divisible by "
                         f"the mesh's data x fsdp = {row_devices} devices (rollouts are split over them)")
    engine = r.get("engine", "block")
    if engine not in ROLLOUT_ENGINES:
        raise ValueError(f"rollout.engine must be one of {ROLLOUT_ENGINES}, got {engine!r}")
    slots = r.get("slots")
    if slots is not None and (not isinstance(slots, int) or isinstance(slots, bool) or slots < 1):
        raise ValueError(f"rollout.slots must be an int >= 1 or None, got {slots!r}")
    if engine == "slots" and not isinstance(family, BlockFamily):
        raise ValueError(f"rollout.engine='slots' decodes block-diffusion models only; this policy's family is "
                         f"{family.name!r}: use rollout.engine='block'")
    per_call = r.get("rows_per_device")
    if per_call is not None:
        if not isinstance(per_call, int) or isinstance(per_call, bool) or per_call < 1:
            raise ValueError(f"rollout.rows_per_device must be an int >= 1 or None, got {per_call!r}")
        local_rows = r.num_prompts * r.k // process_count
        local_call = rollout_rows_per_call(cfg, row_devices, process_count)
        if local_rows > local_call and local_rows % local_call:
            raise ValueError(f"rollout.rows_per_device={per_call}: each process's {local_rows} responses "
                             f"(rollout.num_prompts x rollout.k / processes) must split into sampler calls of "
                             f"{local_call} rows ({per_call} per data x fsdp device)")
    if cfg.task.num_eval and cfg.eval.batch_size % (row_devices // process_count or 1):
        raise ValueError(f"eval.batch_size={cfg.eval.batch_size} must be divisible by each process's "
                         f"{row_devices // process_count} devices on the mesh's data x fsdp axes")


def _check_precision(cfg, platform: str) -> None:
    m = cfg.model
    for field, value in (("model.param_dtype", m.get("param_dtype", "float32")),
                         ("model.dtype", m.get("dtype", "float32")),
                         ("rollout.dtype", cfg.rollout.get("dtype") or m.get("dtype", "float32")),
                         ("rl.opt_state_dtype", cfg.rl.get("opt_state_dtype", "float32"))):
        name = canonical_dtype(value, field)
        if name == "float16" and platform == "tpu":
            raise ValueError(f"{field}={value!r}: TPUs do not compute in float16; use bfloat16")


def _check_family_settings(cfg, family: Family) -> None:
    r, c = cfg.rollout, cfg.rl
    family.check_sampler_section(r, "rollout")
    family.check_sampler_section(dict(r.to_dict(), strategy=cfg.eval.strategy), "eval")
    if r.compat not in ("recommended", "reference"):
        raise ValueError(f"rollout.compat must be 'recommended' or 'reference', got {r.compat!r}")
    if not isinstance(c.num_draws, int) or isinstance(c.num_draws, bool) or c.num_draws < 1:
        raise ValueError(f"rl.num_draws must be an int >= 1, got {c.num_draws!r}")
    family.check_rl_settings(r, c)
