r"""SFT of a small diffusion LM, from scratch or from ``model.init``: block models (§10.1) or LLaDA / Dream (§10.2).

    python examples/sft.py --config=configs/sft.py --config.num_steps=1500
    python examples/sft.py --config=configs/sft.py:llada          # LLaDA layout, from the shipped block model
    python examples/sft.py --config=configs/sft.py --config.model.preset=tiny-dream --config.sft.method=ar

The loop: a batch of (prompt, worked solution) pairs -> SFT rows -> one
AdamW update on the masked NLL. The preset's family picks the rows: a block
model trains on the extended layout (random in-block masks for ``semi-ar``,
left-to-right rounds for ``trace``); a LLaDA/Dream model on single sequences
(``semi-ar``: groups of ``block_size`` positions left to right, each with
random masks inside and everything after it masked; ``random_masking``:
``sft.num_draws`` copies with one masking ratio each; ``ar``: Dream's
next-token loss), with the per-row token mean as the loss (§10.2). Every ``eval.every``
steps the block sampler answers held-out problems and the task verifier
scores them. Orbax checkpoints make the run resumable (rerun the same
command); at the end the parameters are exported to ``<workdir>/export``
(``load_model`` / ``examples/tracerl.py`` read it), optionally also as
Hugging Face safetensors.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Config files import their base recipe as ``from configs import ...`` (sft.py:codefn), which needs the
# repository root on the path whatever the working directory.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import _common  # noqa: E402
from tracerl_jax import evaluation  # noqa: E402
from tracerl_jax.data import ExampleIterator, SFTPairs, encode_sft_pairs  # noqa: E402
from tracerl_jax.families import Family, RowSettings, get_family  # noqa: E402
from tracerl_jax.models import get_preset, init_model, save_hf_checkpoint, split_model  # noqa: E402
from tracerl_jax.models.transfer import transfer_weights  # noqa: E402
from tracerl_jax.rl.specs import load_policy  # noqa: E402
from tracerl_jax.tasks import get_task  # noqa: E402
from tracerl_jax.tokenizers import load_tokenizer  # noqa: E402
from tracerl_jax.train import checkpoint as ckpt_lib  # noqa: E402
from tracerl_jax.train.metrics import MetricsWriter, plot_curves  # noqa: E402
from tracerl_jax.train.optimizer import OptimizerConfig, learning_rate, make_optimizer  # noqa: E402
from tracerl_jax.train.sharding import make_mesh  # noqa: E402
from tracerl_jax.train.step import init_train_state, state_shardings, to_microbatches  # noqa: E402
from tracerl_jax.train.steps import batch_scalars, make_sft_step  # noqa: E402

def row_settings(cfg: ml_collections.ConfigDict, tok) -> RowSettings:
    """The row fields of the SFT config (``sft.post_num < 0`` turns the pad rule off)."""
    post_num = None if cfg.sft.post_num < 0 else int(cfg.sft.post_num)
    return RowSettings(mask_id=tok.mask_id, pad_id=tok.pad_id, block_size=cfg.block_size, shrink=cfg.sft.shrink,
                       post_num=post_num, lower_p=cfg.sft.lower_p, upper_p=cfg.sft.upper_p)


def method_at(cfg: ml_collections.ConfigDict, step: int) -> str:
    """The rows update ``step`` (0-based) trains on: ``ar`` for the first ``sft.ar_steps``, then ``sft.method``."""
    return "ar" if step < cfg.sft.get("ar_steps", 0) else cfg.sft.method


def sft_rows(key, pairs: SFTPairs, cfg: ml_collections.ConfigDict, family: Family, settings: RowSettings,
             method: str | None = None):
    """Training rows of one batch of pairs, as the model's family builds them (§10); ``method``
    overrides ``sft.method``."""
    return family.sft_rows(method or cfg.sft.method, key, pairs, settings, ratio=cfg.sft.ratio,
                           num_draws=cfg.sft.num_draws)


def sft_normalizer(cfg: ml_collections.ConfigDict, family: Family | str) -> str:
    """``sft.normalizer``, or the family's reference one when None (global_L1 §10.1, row_tokens §10.2)."""
    family = get_family(family) if isinstance(family, str) else family
    return cfg.sft.normalizer or family.normalizer


def _validate(cfg: ml_collections.ConfigDict, family: Family) -> None:
    try:
        family.check_sft_settings(cfg.sft.method, cfg.sft.ratio, cfg.sft.num_draws)
    except ValueError as e:
        raise ValueError(f"{e} (model.preset={cfg.model.preset!r})") from None
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by grad_accum={cfg.grad_accum}")
    if not 0 <= cfg.stop_at <= cfg.num_steps:
        raise ValueError(f"stop_at={cfg.stop_at} must be in [0, num_steps={cfg.num_steps}]")
    if cfg.gen_length % cfg.block_size:
        raise ValueError(f"gen_length={cfg.gen_length} must be a multiple of block_size={cfg.block_size}")
    ar_steps = cfg.sft.get("ar_steps", 0)
    if isinstance(ar_steps, bool) or not isinstance(ar_steps, int) or not 0 <= ar_steps <= cfg.num_steps:
        raise ValueError(f"sft.ar_steps must be an int in [0, num_steps={cfg.num_steps}], got {ar_steps!r}")
    if ar_steps and cfg.sft.method == "ar":
        raise ValueError(f"sft.ar_steps={ar_steps} puts ar rows before sft.method's; sft.method='ar' has no "
                         "second stage (leave ar_steps 0)")
    if ar_steps and "ar" not in family.sft_methods:
        raise ValueError(f"sft.ar_steps={ar_steps} trains ar rows, which a {family.name} model does not take "
                         f"(model.preset={cfg.model.preset!r}; Dream models only)")


def initial_model(cfg: ml_collections.ConfigDict, model_cfg, tok, say=print):
    """The model SFT starts from: a fresh ``model.preset``, or the weights of ``model.init`` carried into it.

    ``model.init`` takes what ``examples/tracerl.py``'s does (``shipped:arith_sft``, an export, an HF
    directory). Its family may differ from the preset's: a block checkpoint can start a LLaDA- or
    Dream-layout model of the same shape (tracerl_jax.models.transfer).
    """
    model = init_model(model_cfg, seed=cfg.seed)
    spec = cfg.model.get("init")
    if not spec:
        return model
    _, source = load_policy(spec, tok, scan_layers=model_cfg.scan_layers)
    model, report = transfer_weights(source, model)
    say(f"model.init={spec} ({source.config.family}) -> {cfg.model.preset} ({model_cfg.family}): "
        f"{len(report.copied)} weights copied, {len(report.dropped)} dropped {list(report.dropped[:2])}..., "
        f"{len(report.kept_init)} left at init")
    return model


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
    """Runs (or resumes) SFT; returns the final evaluation summary.

    Args:
      cfg: a ``configs/sft.py`` config.
      workdir: overrides ``cfg.workdir``.

    Returns:
      ``{"step", "eval/accuracy", ...}`` of the final evaluation, and
      ``export_dir``.
    """
    family = get_family(get_preset(cfg.model.preset).family)  # picks the rows, the loss form and the sampler
    _validate(cfg, family)
    workdir = Path(workdir or cfg.workdir).absolute()
    # The learning-rate schedule always spans num_steps; stop_at ends the run
    # early on that schedule (a deliberately under-trained warm start).
    last = cfg.stop_at or cfg.num_steps
    workdir.mkdir(parents=True, exist_ok=True)
    say = tqdm.write if cfg.progress else print

    # Data: train pairs tokenised once with one (L0, L1) for the run, so the
    # update compiles once; held-out problems from the disjoint test split.
    tok = load_tokenizer(cfg.tokenizer)
    task = get_task(cfg.task.name, **_common.task_knobs(cfg.task))
    train = task.generate("train", cfg.task.num_train, seed=cfg.task.seed)
    held_out = task.generate("test", cfg.eval.num, seed=cfg.task.seed)
    lengths = family.sft_lengths(cfg.gen_length, cfg.max_response_len)
    pairs = encode_sft_pairs(tok, [evaluation.prompt_text(tok, e) for e in train], [e.solution for e in train],
                             block_size=cfg.block_size, **lengths)
    L0, L1 = pairs.prompt_ids.shape[1], pairs.response_ids.shape[1]
    it = ExampleIterator(len(pairs.kept), cfg.batch_size, seed=cfg.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())

    # Model, optimizer, optional mesh.
    model_cfg = _common.model_config(cfg.model, tok)
    graphdef, params = split_model(initial_model(cfg, model_cfg, tok, say))
    opt_cfg = OptimizerConfig(
        learning_rate=cfg.optimizer.learning_rate, schedule=cfg.optimizer.schedule, warmup=cfg.optimizer.warmup,
        min_lr_scale=cfg.optimizer.min_lr_scale, total_updates=cfg.num_steps, b1=cfg.optimizer.b1,
        b2=cfg.optimizer.b2, eps=cfg.optimizer.eps, weight_decay=cfg.optimizer.weight_decay,
        max_grad_norm=cfg.optimizer.max_grad_norm, state_dtype=cfg.optimizer.get("state_dtype"))
    optimizer = make_optimizer(opt_cfg)
    state = init_train_state(params, optimizer)
    mesh = make_mesh(*cfg.mesh) if int(np.prod(cfg.mesh)) > 1 else None
    step_kw = {}
    if mesh is not None:
        shardings = state_shardings(state, optimizer, mesh)
        state = jax.device_put(state, shardings)
        step_kw = dict(mesh=mesh, state_sharding=shardings)
    train_step = make_sft_step(graphdef, optimizer, normalizer=sft_normalizer(cfg, family), **step_kw)
    rng = jax.random.key(cfg.seed)

    # Resume.
    ckpt = ckpt_lib.CheckpointManager(workdir / "checkpoints", max_to_keep=cfg.max_to_keep)
    restored = ckpt.restore(target={"train": state, "rng": rng})
    start = 0
    if restored is not None:
        state, rng = restored.state["train"], restored.state["rng"]
        it.restore(restored.meta["data"])
        start = restored.step
        say(f"resumed from step {start} ({workdir / 'checkpoints'})")
    ar_steps = cfg.sft.get("ar_steps", 0)
    method = f"ar for {ar_steps} updates, then {cfg.sft.method}" if ar_steps else cfg.sft.method
    say(f"SFT {method} on {cfg.task.name} {_common.task_knobs(cfg.task)}: {len(pairs.kept)} pairs, "
        f"L0={L0} L1={L1}, model {cfg.model.preset} ({family.name}, {_common.num_params(state.params) / 1e6:.2f}M params), "
        f"{cfg.num_steps} steps of {cfg.batch_size}")

    sample_fn = _common.make_sampler(cfg.eval, tok, graphdef, model_cfg, block_size=cfg.block_size,
                                     gen_length=cfg.gen_length, name="eval")
    settings = row_settings(cfg, tok)
    writer = MetricsWriter(workdir)

    def run_eval(step, params):
        result = evaluation.evaluate(sample_fn, params, tok, held_out, batch_size=cfg.eval.batch_size,
                                     block_size=cfg.block_size, rng=jax.random.split(rng)[1])
        _common.print_eval(f"step {step}", result, say)
        writer.write(step, {f"eval/{k}": v for k, v in evaluation.summary(result).items()})
        return result

    def save(step):
        ckpt.save(step, {"train": state, "rng": rng},
                  meta={"data": it.state, "config": _common.config_to_dict(cfg)}, force=True)

    if cfg.model.get("init") and start == 0 and cfg.eval.every:  # what the carried weights score as they are
        run_eval(0, state.params)
    t_start, acc, t_log = time.perf_counter(), [], time.perf_counter()
    bar = tqdm(range(start, last), initial=start, total=last, desc="sft",
               disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        if step == ar_steps > 0:
            # The ar rows' late gradients are small; Adam moments kept from them would scale the first
            # updates of the new rows far up, so the second stage starts with fresh moments.
            state = state._replace(opt_state=optimizer.init(state.params))
            if mesh is not None:
                state = jax.device_put(state, shardings)
        batch_pairs = pairs.take(next(it))
        rows = sft_rows(jax.random.fold_in(jax.random.split(rng)[0], step), batch_pairs, cfg, family, settings,
                        method_at(cfg, step))
        batch = dict(rows=rows, **batch_scalars(rows.row_valid, cfg.grad_accum, L1))
        lr = learning_rate(opt_cfg, step)
        state, metrics = train_step(state, to_microbatches(batch, cfg.grad_accum), lr)
        acc.append(metrics)
        done = step + 1
        if done % cfg.log_every == 0 or done == last:
            host = jax.device_get(acc)
            mean = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
            now = time.perf_counter()
            mean["train/steps_per_second"] = len(acc) / (now - t_log)
            writer.write(done, mean)
            bar.set_postfix(loss=f"{mean['train/loss']:.4f}", nll=f"{mean['train/nll']:.3f}")
            acc, t_log = [], now
        if cfg.eval.every and done % cfg.eval.every == 0 and done != last:
            run_eval(done, state.params)
        if done % cfg.checkpoint_every == 0 or done == last:
            save(done)
    bar.close()

    final = run_eval(last, state.params)
    if ckpt.latest_step() != last:
        save(last)
    ckpt.close()
    wall = time.perf_counter() - t_start
    evaluation.write_generations_jsonl(workdir / "eval_generations.jsonl", final["generations"])
    export_dir = export(workdir / "export", state.params, model_cfg, cfg, final)
    writer.write(last, {"train/wall_seconds": wall})
    writer.close()
    try:
        plot_curves(writer.jsonl_path, workdir / "curves.png", ["train/loss", "eval/accuracy"])
    except ValueError:
        pass
    say(f"done in {wall:.0f}s; exported to {export_dir}")
    return {"step": last, **{f"eval/{k}": v for k, v in evaluation.summary(final).items()},
            "export_dir": str(export_dir), "wall_seconds": wall}


def export(path: Path, params, model_cfg, cfg: ml_collections.ConfigDict, final: dict) -> Path:
    """Writes the final policy for ``examples/tracerl.py`` (and optionally HF safetensors)."""
    extra = {"tokenizer": cfg.tokenizer, "task": {"name": cfg.task.name, "knobs": _common.task_knobs(cfg.task)},
             "block_size": cfg.block_size, "gen_length": cfg.gen_length,
             "eval": evaluation.summary(final), "sft_config": _common.config_to_dict(cfg)}
    out = ckpt_lib.export_model(path, params, model_cfg, extra=extra)
    if cfg.export_hf and jax.process_index() == 0:
        save_hf_checkpoint(params, model_cfg, out / "hf")
    return out


__doc__ = (__doc__ or "") + _common.config_help(_common.CONFIG_DIR / "sft.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_common.CONFIG_DIR / "sft.py"), "SFT config file (configs/sft.py[:variant]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Overrides config.workdir.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
