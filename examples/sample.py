r"""Sample a few completions from a checkpoint and print them (optionally how they were decoded).

    python examples/sample.py --config=configs/sample.py --config.checkpoint=runs/sft_arithmetic/export \
        --config.prompts="('Compute 12+7.',)" --config.trajectory=table
    python examples/sample.py --config=configs/sample.py:sudoku4 --config.checkpoint=...
    python examples/sample.py --config=configs/sample.py:smoke --config.checkpoint=random:tiny-dream

Prompts come from the command line (``--config.prompts``) or, when none are
given, from a task or data set (``config.data``), in which case the verifier
also scores each completion. ``--config.trajectory=table`` prints every
token with the denoising step that committed it; ``frames`` draws the canvas
after each step (:func:`tracerl_jax.evaluation.render_trajectory`).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import _common  # noqa: E402
import evaluate  # noqa: E402  (examples/evaluate.py: this directory is first on sys.path)
from tracerl_jax import evaluation  # noqa: E402
from tracerl_jax.data import encode_prompts  # noqa: E402

TRAJECTORY = ("none", "table", "frames")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks the config before a model is loaded.

    Raises:
      ValueError: naming the config field and what it must be.
    """
    if cfg.trajectory not in TRAJECTORY:
        raise ValueError(f"config.trajectory must be one of {TRAJECTORY}, got {cfg.trajectory!r}")
    if isinstance(cfg.prompts, str):
        raise ValueError(f"config.prompts must be a tuple of strings, got the string {cfg.prompts!r}; "
                         f"write --config.prompts=\"({cfg.prompts!r},)\"")
    empty = [i for i, p in enumerate(cfg.prompts) if not str(p).strip()]
    if empty:
        raise ValueError(f"config.prompts has empty prompts at {empty}")
    s = cfg.sampler
    for name, v in (("sampler.block_size", s.block_size), ("sampler.gen_length", s.gen_length),
                    ("num_samples", cfg.num_samples)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config.{name} must be an int >= 1, got {v!r}")
    if s.gen_length % s.block_size:
        raise ValueError(f"config.sampler.gen_length={s.gen_length} must be a multiple of "
                         f"sampler.block_size={s.block_size}")


def prompts_of(cfg: ml_collections.ConfigDict, tokenizer) -> tuple[list[str], Optional[list]]:
    """``(prompt texts, examples)``: the command-line questions (examples None) or ``data.num`` problems."""
    if cfg.prompts:
        texts = [tokenizer.chat_prompt(q, kind=cfg.kind, think=cfg.think) if cfg.template else q
                 for q in cfg.prompts]
        return texts, None
    examples = _common.eval_examples(cfg.data)
    if not examples:
        raise ValueError(f"config.prompts is empty and config.data selects no problems ({cfg.data.name})")
    return [evaluation.prompt_text(tokenizer, e, cfg.think) for e in examples], examples


def sample(cfg: ml_collections.ConfigDict, write: Callable[[str], None] = print) -> list[dict]:
    """Samples ``cfg.num_samples`` completions of every prompt and prints them.

    Args:
      cfg: a ``configs/sample.py`` config.
      write: where the output lines go.

    Returns:
      One dict per completion: ``prompt``, ``sample``, ``completion`` (text),
      ``tokens`` and ``step_map`` (int lists of the completion, ``length``
      long), ``length``, ``num_steps``, ``reward`` (None without a verifier)
      and ``trajectory`` (the picture, or "").
    """
    validate(cfg)
    policy = evaluate.load_checkpoint(cfg.checkpoint, tokenizer=cfg.tokenizer, dtype=cfg.dtype,
                                      compute_dtype=cfg.get("compute_dtype"), seed=cfg.seed)
    tok, s = policy.tokenizer, cfg.sampler
    texts, examples = prompts_of(cfg, tok)
    sample_fn = _common.make_sampler(s, tok, policy.graphdef, policy.config, block_size=s.block_size,
                                     gen_length=s.gen_length)

    # Row k = (prompt k // num_samples, sample k % num_samples), keyed by k alone.
    K = cfg.num_samples
    ids_BxL, valid_BxL = encode_prompts(tok, texts, block_size=s.block_size)
    ids_BxL, valid_BxL = np.repeat(ids_BxL, K, axis=0), np.repeat(valid_BxL, K, axis=0)
    rng = jax.random.key(cfg.seed)
    row_keys = jax.vmap(lambda k: jax.random.fold_in(rng, k))(jnp.arange(ids_BxL.shape[0], dtype=jnp.uint32))
    ro = jax.tree.map(np.asarray, sample_fn(policy.params, ids_BxL, valid_BxL, row_keys=row_keys))

    completions = [tok.decode(ro.tokens[r, :ro.lengths[r]].tolist(), skip_special_tokens=True)
                   for r in range(ids_BxL.shape[0])]
    rewards = [None] * len(completions)
    if examples is not None and cfg.score:
        row_examples = [examples[r // K] for r in range(len(completions))]
        scorer = evaluation.default_verifier(row_examples)
        rewards = [float(x) for x in scorer(completions, row_examples, ro.lengths.tolist())]

    out = []
    for r, text in enumerate(completions):
        n = int(ro.lengths[r])
        picture = ""
        if cfg.trajectory != "none":
            picture = evaluation.render_trajectory(tok, ro.tokens[r], ro.step_map[r], n, s.block_size,
                                                   frames=cfg.trajectory == "frames")
        head = f"[{r // K}.{r % K}] {n} tokens in {int(ro.num_steps[r])} steps"
        if rewards[r] is not None:
            head += f" | reward {rewards[r]:.2f} (answer {examples[r // K].answer})"
        write(head)
        write("  prompt:     " + texts[r // K].replace("\n", "\n              "))
        write("  completion: " + text.replace("\n", "\n              "))
        if picture:
            write("  " + picture.replace("\n", "\n  "))
        out.append({"prompt": texts[r // K], "sample": r % K, "completion": text,
                    "tokens": ro.tokens[r, :n].tolist(), "step_map": ro.step_map[r, :n].tolist(), "length": n,
                    "num_steps": int(ro.num_steps[r]), "reward": rewards[r], "trajectory": picture})
    return out


_CONFIG = None  # the --config flag holder, set by define_flags()
__doc__ = (__doc__ or "") + _common.config_help(_common.CONFIG_DIR / "sample.py")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv: Optional[list[str]] = None):
    """Defines ``--config`` on ``flag_values`` (tests pass their own, see ``_common.define_config_flag``)."""
    global _CONFIG
    _CONFIG = _common.define_config_flag("sample.py", "Sampling config (configs/sample.py[:variant]).", flag_values, argv)
    return _CONFIG


main = _common.script_main(lambda: sample(_CONFIG.value))


if __name__ == "__main__":
    define_flags()
    app.run(main)
