"""The examples with full-attention models (LLaDA, Dream) selected by configuration alone.

``examples/tracerl.py`` (TraceRL, TraceRL + value model, random masking,
coupled), ``examples/sft.py`` (semi-AR and random-masking SFT, §10.2),
``examples/evaluate.py`` and ``examples/sample.py`` run end to end on tiny
``random:tiny-llada`` / ``random:tiny-dream`` models (or a Hugging Face LLaDA
directory); the only change from a block-model run is a config field.

All RL runs share one subprocess and all SFT runs another (``run_rl`` /
``run_sft`` below, called with ``python -c``; the two scripts cannot share
one process, both define ``--config``): each run parses real ``--config``
flag strings and calls the example's entry point, and the runs reuse each
other's compiled programs (in memory, and through a persistent XLA cache).
A random model earns no task reward, so the RL runs score with
``tests.test_rl_example.digit_reward`` (the share of digits in a completion).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest
from absl import flags

from tests.helpers.once import run_once
from tests.test_rl_example import read_metrics, restore_item, run_env  # noqa: F401  (run_env: fixture)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))  # how the scripts import _common and each other

import evaluate as evaluate_example  # noqa: E402  examples/evaluate.py
import sample as sample_example  # noqa: E402  examples/sample.py

from configs.evaluate import get_config as evaluate_config  # noqa: E402
from configs.sample import get_config as sample_config  # noqa: E402

FAMILIES = ("llada", "dream")
RL_RECIPES = {"tracerl": ("TraceRL", False), "value": ("TraceRL", True), "random_masking": ("random_masking", False),
              "coupled": ("coupled", False)}
# configs/tracerl.py shrunk to seconds; shrink and num_draws exercise the full-attention rows.
RL_ARGS = ("--config.task.num_train=16", "--config.task.num_eval=2", "--config.rollout.num_prompts=2",
           "--config.rollout.k=2", "--config.rollout.gen_length=8", "--config.rl.batch_rows=8",
           "--config.eval.batch_size=2", "--config.rl.total_steps=1", "--config.rl.shrink=2",
           "--config.rl.num_draws=2", "--config.rollout.group_filter=none")
# Dream's "ar" SFT is the same dispatch with other rows (tests/test_full_baselines.py checks those rows).
SFT_METHODS = {"llada": ("semi-ar", "random_masking"), "dream": ("semi-ar", "random_masking")}


def _parse(script: str, config_file: Path, args) -> ml_collections.ConfigDict:
    """The ConfigDict the script's ``--config`` flag gives for these command-line strings."""
    from ml_collections import config_flags

    argv = [script, f"--config={config_file}", *args]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    fv(argv)
    return holder.value


def run_rl(root: str) -> None:
    """Every RL recipe on ``random:tiny-<family>``, both families (in a subprocess): ``<root>/results.json``."""
    from examples import tracerl
    from tracerl_jax.rl import specs
    from tests.test_rl_example import digit_reward

    out = {}
    for family in FAMILIES:
        for name, (method, value) in RL_RECIPES.items():
            cfg = _parse("tracerl.py", REPO / "configs" / "tracerl.py",
                         [*RL_ARGS, f"--config.workdir={root}/{family}/{name}",
                          f"--config.model.init=random:tiny-{family}", f"--config.rl.method={method}",
                          f"--config.value.enabled={value}"])
            out[f"{family}/{name}"] = {"family": specs.policy_family(cfg.model.init),
                                       "summary": tracerl.train(cfg, score_fn=digit_reward)}
    Path(root, "results.json").write_text(json.dumps(out))


def run_sft(root: str) -> None:
    """The full-attention SFT methods on ``tiny-<family>``, both families (in a subprocess): ``<root>/results.json``."""
    import sft

    out = {}
    for family in FAMILIES:
        for method in SFT_METHODS[family]:
            cfg = _parse("sft.py", REPO / "configs" / "sft.py:smoke",
                         [f"--config.model.preset=tiny-{family}", f"--config.sft.method={method}",
                          "--config.sft.num_draws=2", "--config.num_steps=2", "--config.eval.num=4",
                          "--config.eval.batch_size=4", "--config.gen_length=8", "--config.task.num_train=16",
                          # Dream's semi-ar run starts with one update of ar rows (configs/sft.py:dream's stages).
                          f"--config.sft.ar_steps={int((family, method) == ('dream', 'semi-ar'))}",
                          "--config.log_every=1"])
            out[f"{family}/{method}"] = sft.train_and_evaluate(cfg, workdir=f"{root}/{family}/{method}")
    Path(root, "results.json").write_text(json.dumps(out))


def _driver(env, fn: str, root: Path) -> dict:
    code = f"from tests.test_full_examples import {fn}; {fn}({str(root)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((root / "results.json").read_text())


# Once per session, whichever xdist worker asks first (the tests of a family may land on either worker).
@pytest.fixture(scope="module")
def rl_results(run_env, tmp_path_factory):  # noqa: F811
    root = run_once(tmp_path_factory, "full_examples_rl", lambda path: _driver(run_env, "run_rl", path))
    return root, json.loads((root / "results.json").read_text())


@pytest.fixture(scope="module")
def sft_results(run_env, tmp_path_factory):  # noqa: F811
    root = run_once(tmp_path_factory, "full_examples_sft", lambda path: _driver(run_env, "run_sft", path))
    return root, json.loads((root / "results.json").read_text())


@pytest.fixture(params=FAMILIES)
def rl_runs(request, rl_results):
    root, results = rl_results
    family = request.param
    return family, root / family, {k.split("/")[1]: v for k, v in results.items() if k.startswith(family + "/")}


@pytest.fixture(params=FAMILIES)
def sft_runs(request, sft_results):
    root, results = sft_results
    family = request.param
    return family, root / family, {k.split("/")[1]: v for k, v in results.items() if k.startswith(family + "/")}


# ---------------------------------------------------------------------------
# tracerl.py
# ---------------------------------------------------------------------------


def test_tracerl_every_recipe_runs_a_full_attention_model(rl_runs):
    family, root, results = rl_runs
    assert set(results) == set(RL_RECIPES)
    for name, res in results.items():
        assert res["family"] == family, name
        assert res["summary"]["steps"] == 1 and not res["summary"]["preempted"]
        records = read_metrics(root / name)
        assert [r["step"] for r in records] == [0, 1]
        last = records[-1]
        assert 0.0 <= last["reward"] <= 1.0 and last["rows"] > 0, name
        assert math.isfinite(last["policy/loss"]) and last["policy/skipped"] == 0.0, name
        # The first update sees the rollout weights (§6.1) and the full-attention loss has no clamp.
        assert last["policy/log_ratio_clip_fraction"] == 0.0
        assert int(restore_item(root / name, 1, "policy")["step"]) >= 1, name   # updates were applied
        if RL_RECIPES[name][1]:
            assert math.isfinite(last["value/loss"]) and int(restore_item(root / name, 1, "value")["step"]) >= 1
        else:
            assert "value/loss" not in last


def test_tracerl_rows_follow_the_method(rl_runs):
    # N = 4 responses of G = 8 positions: TraceRL with shrink 2 builds at most ceil(9/2) = 5 rows per
    # response (§5); random masking num_draws = 2 rows, coupled adds each draw's complement (§9.2);
    # empty rows are dropped.
    _, root, _ = rl_runs
    rows = {name: read_metrics(root / name)[-1]["rows"] for name in RL_RECIPES}
    assert 0 < rows["tracerl"] <= 4 * 5 and rows["value"] == rows["tracerl"]   # the same rollout
    assert 0 < rows["random_masking"] <= 4 * 2 and rows["random_masking"] < rows["coupled"] <= 4 * 4


# ---------------------------------------------------------------------------
# sft.py
# ---------------------------------------------------------------------------


def test_sft_methods_train_and_export_a_full_attention_model(sft_runs):
    family, root, results = sft_runs
    assert set(results) == set(SFT_METHODS[family])
    for method, res in results.items():
        assert res["step"] == 2 and 0.0 <= res["eval/accuracy"] <= 1.0, method
        records = [r for r in read_metrics(root / method) if "train/loss" in r]
        assert records and all(math.isfinite(r["train/loss"]) for r in records), method
        exported = json.loads((Path(res["export_dir"]) / "model_config.json").read_text())
        assert exported["model_config"]["model_type"] == family, method
        # Adam's update counts: Dream's semi-ar run (one ar update first) restarted its moments at update 1.
        state = restore_item(root / method, 2, "train")
        counts = {int(x) for p, x in jax.tree_util.tree_leaves_with_path(state["opt_state"])
                  if jax.tree_util.keystr(p).endswith("['count']")}
        assert int(state["step"]) == 2 and counts == {1 if (family, method) == ("dream", "semi-ar") else 2}, method


# ---------------------------------------------------------------------------
# evaluate.py / sample.py (in process)
# ---------------------------------------------------------------------------


def _run_main(module, script: str, *args: str) -> None:
    argv = [script, *args]
    fv = flags.FlagValues()
    module.define_flags(fv, argv)
    fv(argv)
    module.main([script])


def test_evaluate_llada_hf_directory_with_prefix_cache(tmp_path, capsys):
    # A Hugging Face LLaDA directory (OLMo names), sampled with the prefix KV cache (§2.2).
    from tracerl_jax.models import save_hf_checkpoint

    policy = evaluate_example.load_checkpoint("random:tiny-llada", seed=3)
    save_hf_checkpoint(policy.params, policy.config, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llada"
    out = tmp_path / "eval"
    _run_main(evaluate_example, "evaluate.py", f"--config={REPO / 'configs' / 'evaluate.py'}:smoke",
              f"--config.checkpoint={tmp_path / 'hf'}", f"--config.output_dir={out}",
              "--config.sampler.use_cache=True", "--config.sampler.further_horizon=4",
              "--config.sampler.strategy=low_confidence_static")
    assert "[arithmetic] accuracy" in capsys.readouterr().out
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert len(gens) == 4 and all(1 <= g["length"] <= 8 for g in gens)
    # Static LLaDA rule, steps = steps_per_block in each of the 2 blocks: one token per forward pass.
    assert all(g["num_steps"] == 8 for g in gens) and summary["num_compiles"] == 0


def test_evaluate_dream_threshold_rule(tmp_path):
    cfg = evaluate_config("smoke")
    cfg.checkpoint = "random:tiny-dream"
    cfg.output_dir = str(tmp_path)
    cfg.warmup = False
    cfg.sampler.threshold = 1e-6    # every candidate passes (a top-1 probability is >= 1/V): a block per pass
    cfg.sampler.early_stop = False
    res = evaluate_example.evaluate_checkpoint(cfg, write=lambda line: None)
    gens = [json.loads(line) for line in Path(res["generations_path"]).read_text().splitlines()]
    # Dream commits the block's first token alone at the block's first step (§2.4), then the rest.
    assert all(g["num_steps"] == 2 * 2 for g in gens), [g["num_steps"] for g in gens]


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_prints_full_attention_trajectories(family, capsys):
    # Dream-style selection knobs (§2.4) reach the sampler through the config.
    _run_main(sample_example, "sample.py", f"--config={REPO / 'configs' / 'sample.py'}:smoke",
              f"--config.checkpoint=random:tiny-{family}", "--config.sampler.strategy=low_confidence_static",
              "--config.sampler.target=margin_confidence", "--config.sampler.alg_temp=0.5",
              "--config.sampler.pad_target_penalty=2.0")
    printed = capsys.readouterr().out
    heads = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(heads) == 2 and all(h.endswith(" tokens in 8 steps") for h in heads), heads
    assert printed.count("blk  0 | ") == 2 and printed.count("blk  1 | ") == 2


# ---------------------------------------------------------------------------
# Bad combinations: a ValueError naming the field
# ---------------------------------------------------------------------------


def test_rl_config_rejects_settings_of_the_other_family(tmp_path):
    from configs import tracerl as recipe
    from configs import tracerl_full
    from tracerl_jax.rl import config as setup
    from tracerl_jax.rl import specs

    def cfg(**changes):
        c = recipe.get_config()
        for path, v in changes.items():
            section, field = path.split("__")
            c[section][field] = v
        return c

    setup.check_config(cfg(), family="llada")
    setup.check_config(cfg(rollout__use_cache=True, rollout__further_horizon=4, rollout__compat="reference",
                           rl__num_draws=3), family="dream")
    for family, changes, message in (
            ("sdar", dict(rollout__use_cache=True), r"rollout.use_cache=True applies to full-attention models"),
            ("sdar", dict(rollout__target="margin_confidence"), r"rollout.target=.* applies to full-attention"),
            ("sdar", dict(rollout__compat="reference"), r"rollout.compat='reference' is implemented .* full-att"),
            ("sdar", dict(rl__num_draws=4), r"rl.num_draws=4 applies to full-attention models only"),
            ("llada", dict(rollout__strategy="sequential"), r"rollout.strategy='sequential' has no full-attention"),
            ("llada", dict(eval__strategy="sequential"), r"eval.strategy='sequential' has no full-attention"),
            ("dream", dict(rollout__target="entropy"), r"rollout.target must be one of"),
            ("dream", dict(rollout__further_horizon=8), r"rollout.further_horizon=8 needs rollout.use_cache=True"),
            ("llada", dict(rl__mask_ratio="block"), r"rl.mask_ratio='block' applies to block models only"),
            ("dream", dict(rl__num_draws=0), r"rl.num_draws must be an int >= 1")):
        with pytest.raises(ValueError, match=message):
            setup.check_config(cfg(**changes), family=family)
    with pytest.raises(ValueError, match=r"unknown variant 'mmada'"):
        tracerl_full.get_config("mmada")
    missing = cfg(model__init=str(tmp_path / "no_sft_yet"))
    with pytest.raises(ValueError, match=r"model.init=.* is not a directory"):
        specs.policy_family(missing.model.init)
    assert specs.policy_family(cfg(model__init="random:small-dream").model.init) == "dream"
    assert specs.policy_family(cfg().model.init) == "sdar"   # shipped:arith_sft
    # Each RL recipe reads the export of the SFT variant documented as its warm start.
    from configs import sft as sft_configs
    for family, start in (("llada", "llada"), ("dream", "dream_semiar")):
        full = tracerl_full.get_config(family)
        assert full.model.init == f"{sft_configs.get_config(start).workdir}/export"
        assert full.rollout.strategy == "low_confidence_static"


def test_full_attention_policy_loss_is_the_reference_one():
    from configs import tracerl as recipe
    from tracerl_jax.rl import config as setup
    from tracerl_jax.train.steps import FULL_ATTENTION_REF, PolicyLossConfig

    c = recipe.get_config()
    assert setup.policy_loss_config(c, "llada") == FULL_ATTENTION_REF   # §6.4
    assert setup.policy_loss_config(c, "sdar") == PolicyLossConfig()    # §6.2
    c.rl.normalizer = "batch_tokens"
    assert setup.policy_loss_config(c, "dream").normalizer == "batch_tokens"


def test_sampler_sections_name_the_bad_field(tmp_path):
    cfg = evaluate_config("smoke")
    cfg.output_dir = str(tmp_path)
    cfg.sampler.use_cache = True  # a block model (random:tiny)
    with pytest.raises(ValueError, match=r"sampler.use_cache=True applies to full-attention models"):
        evaluate_example.evaluate_checkpoint(cfg)
    cfg = sample_config("smoke")
    cfg.checkpoint = "random:tiny-dream"
    cfg.sampler.target = "bogus"
    with pytest.raises(ValueError, match=r"sampler.target must be one of"):
        sample_example.sample(cfg)
    cfg.sampler.target = "confidence"
    cfg.sampler.pad_target_penalty = 0.0
    with pytest.raises(ValueError, match=r"sampler: pad_target_penalty must be > 0"):
        sample_example.sample(cfg)
    with pytest.raises(ValueError, match=r"unknown variant modifier 'bert'"):
        evaluate_config("smoke,bert")
    ref = evaluate_config("math500,dream").sampler
    assert (ref.block_size, ref.gen_length, ref.temperature, ref.top_p, ref.top_k) == (32, 1600, 0.1, 0.95, 40)


def test_sft_rejects_methods_of_the_other_family():
    import sft

    from configs.sft import get_config as sft_config

    def cfg(preset, **sft_fields):
        c = sft_config("smoke")
        c.model.preset = preset
        c.sft.update(sft_fields)
        return c

    for preset, fields, message in (
            ("tiny-llada", dict(method="trace"), r"sft.method must be one of \('semi-ar', 'random_masking'\)"),
            ("tiny-llada", dict(method="ar"), r"sft.method must be one of .* for a llada model"),
            ("tiny", dict(method="random_masking"), r"sft.method must be one of \('semi-ar', 'trace'\)"),
            ("tiny", dict(num_draws=3), r"sft.num_draws=3 applies to full-attention"),
            ("tiny-dream", dict(ratio="block"), r"sft.ratio='block': full-attention semi-ar"),
            ("tiny-llada", dict(ar_steps=2), r"sft.ar_steps=2 trains ar rows, which a llada model does not take"),
            ("tiny-dream", dict(ar_steps=-1), r"sft.ar_steps must be an int in \[0, num_steps=\d+\]"),
            ("tiny-dream", dict(method="ar", ar_steps=1), r"sft.method='ar' has no second stage"),
            ("tiny-dream", dict(ar_steps=10**6), r"sft.ar_steps must be an int in \[0, num_steps=\d+\]")):
        with pytest.raises(ValueError, match=message):
            sft.train_and_evaluate(cfg(preset, **fields), workdir="/nonexistent/never_created")
    dream = sft_config("dream")  # the warm start's two stages: ar rows, then semi-ar rows
    assert dream.sft.ar_steps == 200 and dream.sft.method == "semi-ar" and sft_config("llada").sft.ar_steps == 0
    assert [sft.method_at(dream, s) for s in (0, dream.sft.ar_steps - 1, dream.sft.ar_steps)] == ["ar", "ar",
                                                                                          "semi-ar"]
    llada = sft_config("llada")
    assert llada.model.preset == "small-llada" and llada.export_hf and llada.sft.method == "semi-ar"
    assert llada.model.init == sft_config("dream").model.init == "shipped:arith_sft"  # the block model's weights
    assert sft.sft_normalizer(cfg("tiny-dream"), "dream") == "row_tokens"
    assert sft.sft_normalizer(cfg("tiny"), "sdar") == "global_L1"
