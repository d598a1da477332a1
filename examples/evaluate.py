r"""Evaluate a checkpoint on held-out problems: accuracy, tokens per forward pass, throughput.

    python examples/evaluate.py --config=configs/evaluate.py --config.checkpoint=runs/sft_arithmetic/export
    python examples/evaluate.py --config=configs/evaluate.py:math500 --config.checkpoint=/ckpt/TraDo-4B-Instruct
    python examples/evaluate.py --config=configs/evaluate.py:math500,llada --config.checkpoint=/ckpt/LLaDA-8B-Instruct

The checkpoint is an ``examples/sft.py`` export, a Hugging Face directory
(TraDo/SDAR, LLaDA/MMaDA, Dream/DiffuCoder), ``random:<preset>`` or
``shipped:<name>``. The sampler of the model's family (block, or full
attention for LLaDA/Dream, whose extra knobs are in ``config.sampler``)
answers every problem ``num_samples`` times with the reference evaluation
settings (configs/evaluate.py); the task's verifier, or math-verify for
MATH500/GSM8K, scores each response. Every prompt shape is compiled before
the timed run, so tokens/s is steady-state sampling. Generations go to
``<output_dir>/generations.jsonl``, the numbers to ``summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# configs/evaluate.py:codefn_linear imports its task's knobs from configs.tracerl_codefn, which needs the
# repository root on the path whatever the working directory.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from tracerl_jax import evaluation  # noqa: E402
from tracerl_jax.data import bucket_length  # noqa: E402
from tracerl_jax.models import PRESET_NAMES, shipped_checkpoint  # noqa: E402
from tracerl_jax.models.hf_io import SHIPPED_CHECKPOINTS  # noqa: E402
from tracerl_jax.rl.specs import load_run_policy, run_directory  # noqa: E402
from tracerl_jax.tasks import Example  # noqa: E402
from tracerl_jax.tokenizers import load_tokenizer, pad_ids  # noqa: E402


def shipped_dir() -> Path:
    """Where checkpoints shipped with the package live (``tracerl_jax/assets/checkpoints``)."""
    return SHIPPED_CHECKPOINTS


def load_checkpoint(spec: str, *, tokenizer: str = "", dtype: str = "float32",
                    compute_dtype: Optional[str] = None, seed: int = 0) -> _common.Policy:
    """Loads the policy named by ``spec``.

    Args:
      spec: an export directory, a Hugging Face directory, an RL run's
        workdir (its final export, else its newest checkpoint) or one of its
        checkpoint steps (``<workdir>/checkpoints/<step>``), ``random:<preset>``
        (an untrained preset sized to the tokenizer) or ``shipped:<name>``
        (``tracerl_jax/assets/checkpoints/<name>``, either kind of directory).
      tokenizer: tokenizer name/path; "" = the one an export recorded, a
        Hugging Face directory's own, or else the shipped ``"tasks"``
        tokenizer (``random:`` presets and our small HF exports, which carry
        no tokenizer files).
      dtype: parameter dtype (checkpoints load straight into it).
      compute_dtype: activation/matmul dtype (None: the checkpoint's / ``dtype``).
      seed: init seed for ``random:``.

    Raises:
      ValueError: an empty spec, an unknown preset or shipped name, a path
        that is neither kind of checkpoint directory, or a model whose
        vocabulary is smaller than the tokenizer's.
    """
    if not spec:
        raise ValueError("checkpoint is empty; pass an export or Hugging Face directory, random:<preset> or "
                         "shipped:<name>")
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        if preset not in PRESET_NAMES:
            raise ValueError(f"checkpoint {spec!r}: unknown preset {preset!r}; presets: {', '.join(PRESET_NAMES)}")
        return _common.load_policy("", tokenizer=tokenizer or None,
                                   model=ml_collections.ConfigDict({"preset": preset}), seed=seed)
    if run_directory(spec) is not None:   # an RL run (in its own precision): its export, newest or given step
        cfg, graphdef, params, tok_spec, _ = load_run_policy(spec, tokenizer=tokenizer or None)
        return _common.Policy(cfg, graphdef, params, load_tokenizer(tok_spec), "run", {})
    if spec.startswith("shipped:"):
        try:
            spec = str(shipped_checkpoint(spec.split(":", 1)[1], root=shipped_dir()))
        except ValueError as e:
            raise ValueError(f"checkpoint {spec!r}: {e} (random:tiny gives an untrained model)") from None
    elif not Path(spec).is_dir():
        raise ValueError(f"checkpoint {spec!r} is not a directory (nor random:<preset> / shipped:<name>)")
    path = Path(spec)
    if not tokenizer and _common.is_hf_dir(path) and not _has_tokenizer(path):
        tokenizer = "tasks"  # e.g. the shipped arith_sft: safetensors exported by examples/sft.py
    policy = _common.load_policy(spec, tokenizer=tokenizer or None, dtype=dtype, compute_dtype=compute_dtype)
    if policy.config.vocab_size < policy.tokenizer.vocab_size:
        raise ValueError(f"checkpoint {spec!r} has vocab_size {policy.config.vocab_size}, smaller than its "
                         f"tokenizer's {policy.tokenizer.vocab_size}; pass the matching tokenizer")
    return policy


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or any(path.glob("*.model"))


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks the settings that would otherwise fail late (after loading a model) or deep inside jit.

    Raises:
      ValueError: naming the config field and what it must be.
    """
    s = cfg.sampler
    for name, v in (("sampler.block_size", s.block_size), ("sampler.gen_length", s.gen_length),
                    ("batch_size", cfg.batch_size), ("num_samples", cfg.num_samples)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config.{name} must be an int >= 1, got {v!r}")
    if s.gen_length % s.block_size:
        raise ValueError(f"config.sampler.gen_length={s.gen_length} must be a multiple of "
                         f"sampler.block_size={s.block_size}")
    bad = [b for b in cfg.prompt_buckets if int(b) < 1 or int(b) % s.block_size]
    if bad:
        raise ValueError(f"config.prompt_buckets must be positive multiples of sampler.block_size={s.block_size}, "
                         f"got {bad}")


def prompt_lengths(tokenizer, examples: list[Example], cfg: ml_collections.ConfigDict) -> list[int]:
    """The padded prompt lengths :func:`evaluation.evaluate` will use (one per bucket used)."""
    lens = [len(tokenizer.encode(evaluation.prompt_text(tokenizer, e, cfg.think))) for e in examples]
    if cfg.prompt_buckets:
        return sorted({bucket_length(n, cfg.prompt_buckets) for n in lens})
    return [bucket_length(max(lens), multiple=cfg.sampler.block_size)]


def warm_up(sample_fn: Callable, params, tokenizer, batch_size: int, lengths: list[int]) -> float:
    """Compiles ``sample_fn`` for ``[batch_size, L]`` prompts, every ``L``; returns the seconds spent.

    The prompts are one real token each; only the shapes matter to the
    compiler, so the timed evaluation afterwards compiles nothing. The price
    is one sampler batch per shape.
    """
    t0 = time.perf_counter()
    for L in lengths:
        ids, valid = pad_ids([[tokenizer.eos_id]] * batch_size, tokenizer.pad_id, side="left", length=L)
        keys = jax.random.split(jax.random.key(0), batch_size)
        jax.block_until_ready(sample_fn(params, ids, valid, row_keys=keys))
    return time.perf_counter() - t0


def evaluate_checkpoint(cfg: ml_collections.ConfigDict, write: Callable[[str], None] = print) -> dict:
    """Evaluates ``cfg.checkpoint`` on ``cfg.data``; writes generations and a summary.

    Args:
      cfg: a ``configs/evaluate.py`` config.
      write: where the report lines go.

    Returns:
      The :func:`tracerl_jax.evaluation.summary` numbers plus ``checkpoint``,
      ``warmup_seconds``, ``generations_path`` and ``summary_path``.
    """
    validate(cfg)
    policy = load_checkpoint(cfg.checkpoint, tokenizer=cfg.tokenizer, dtype=cfg.dtype,
                             compute_dtype=cfg.get("compute_dtype"), seed=cfg.seed)
    tok, s = policy.tokenizer, cfg.sampler
    examples = _common.eval_examples(cfg.data)
    if not examples:
        raise ValueError(f"config.data selects no examples ({cfg.data.name}, num={cfg.data.num})")
    sample_fn = _common.make_sampler(s, tok, policy.graphdef, policy.config, block_size=s.block_size,
                                     gen_length=s.gen_length)
    write(f"evaluating {cfg.checkpoint} ({policy.source}, {_common.num_params(policy.params) / 1e6:.2f}M params) "
          f"on {len(examples)} {cfg.data.name} problems x {cfg.num_samples} samples: {s.strategy}, "
          f"b={s.block_size}, {s.steps_per_block} steps/block, T={s.temperature}, top_k={s.top_k}, "
          f"top_p={s.top_p}, gen_length={s.gen_length}")

    buckets = tuple(cfg.prompt_buckets) or None
    warmup_seconds = 0.0
    if cfg.warmup:
        warmup_seconds = warm_up(sample_fn, policy.params, tok, cfg.batch_size, prompt_lengths(tok, examples, cfg))
    result = evaluation.evaluate(sample_fn, policy.params, tok, examples, batch_size=cfg.batch_size,
                                 block_size=s.block_size, rng=jax.random.key(cfg.seed), num_samples=cfg.num_samples,
                                 prompt_buckets=buckets, think=cfg.think, progress=cfg.progress)
    _common.print_eval(cfg.data.name, result, write)
    if cfg.warmup:
        write(f"compilation (warm-up, excluded from tokens/s): {warmup_seconds:.1f}s")

    out = Path(cfg.output_dir)
    gen_path, summary_path = out / "generations.jsonl", out / "summary.json"
    evaluation.write_generations_jsonl(gen_path, result["generations"])
    summary = {**evaluation.summary(result), "checkpoint": cfg.checkpoint, "warmup_seconds": warmup_seconds}
    summary_path.write_text(json.dumps({"summary": summary, "config": _common.config_to_dict(cfg)}, indent=2))
    rewards = np.asarray([g["reward"] for g in result["generations"]]).reshape(len(examples), cfg.num_samples)
    if cfg.num_samples > 1:
        write(f"pass@{cfg.num_samples} {float(np.mean(rewards.max(axis=1) > 0)):.3f} | "
              f"problems solved by every sample {float(np.mean(rewards.min(axis=1) > 0)):.3f}")
    write(f"wrote {gen_path} and {summary_path}")
    return {**summary, "generations_path": str(gen_path), "summary_path": str(summary_path)}


_CONFIG = None  # the --config flag holder, set by define_flags()
__doc__ = (__doc__ or "") + _common.config_help(_common.CONFIG_DIR / "evaluate.py")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv: Optional[list[str]] = None):
    """Defines ``--config`` on ``flag_values`` (tests pass their own, see ``_common.define_config_flag``)."""
    global _CONFIG
    _CONFIG = _common.define_config_flag("evaluate.py", "Evaluation config (configs/evaluate.py[:variant]).", flag_values, argv)
    return _CONFIG


main = _common.script_main(lambda: evaluate_checkpoint(_CONFIG.value))


if __name__ == "__main__":
    define_flags()
    app.run(main)
