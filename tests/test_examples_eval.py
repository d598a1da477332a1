"""examples/evaluate.py and examples/sample.py, in-process on a tiny random model.

The scripts' ``--config`` flags are parsed into private ``FlagValues`` (as
``app.run`` would parse the global ones), then ``main`` runs, so the real
command-line path is exercised without a subprocess per run.
"""

import json
import sys
from pathlib import Path

import ml_collections
import pytest
from absl import flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))  # how the scripts import _common and each other

import evaluate as evaluate_example  # noqa: E402  examples/evaluate.py
import sample as sample_example  # noqa: E402  examples/sample.py

from configs.evaluate import get_config as evaluate_config  # noqa: E402
from configs.sample import get_config as sample_config  # noqa: E402
from tracerl_jax.models import get_preset, init_model, save_hf_checkpoint, split_model  # noqa: E402
from tracerl_jax.train.checkpoint import export_model  # noqa: E402

CONFIGS = REPO / "configs"


def _run_main(module, script: str, *args: str) -> None:
    argv = [script, *args]
    fv = flags.FlagValues()
    module.define_flags(fv, argv)
    fv(argv)
    module.main([script])


def _eval_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
    cfg = evaluate_config("smoke")
    cfg.output_dir = str(tmp_path / "eval")
    cfg.update_from_flattened_dict(overrides)
    return cfg


# ---------------------------------------------------------------------------
# evaluate.py
# ---------------------------------------------------------------------------


def test_evaluate_main_on_a_random_model(tmp_path, capsys):
    out = tmp_path / "eval"
    _run_main(evaluate_example, "evaluate.py", f"--config={CONFIGS / 'evaluate.py'}:smoke",
              f"--config.output_dir={out}", "--config.num_samples=2")
    printed = capsys.readouterr().out
    assert "[arithmetic] accuracy" in printed and "tokens/forward" in printed and "tokens/s" in printed
    assert "(incl. compile)" not in printed and "pass@2" in printed
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 8 and [(g["index"], g["sample"]) for g in gens] == [(i, s) for i in range(4) for s in (0, 1)]
    assert all(1 <= g["length"] <= 8 and g["reward"] in (0.0, 1.0) for g in gens)
    saved = json.loads((out / "summary.json").read_text())
    summary = saved["summary"]
    # The warm-up compiled the one prompt shape, so the timed run compiled nothing.
    assert summary["num_compiles"] == 0 and summary["steady_state"] == 1.0 and summary["tokens_per_second"] > 0
    assert summary["warmup_seconds"] > 0
    assert summary["tokens_per_forward"] == pytest.approx(sum(g["length"] for g in gens) /
                                                          sum(g["num_steps"] for g in gens))
    assert saved["config"]["checkpoint"] == "random:tiny" and saved["config"]["num_samples"] == 2


def test_evaluate_export_shipped_and_hf_dirs_agree(tmp_path, monkeypatch):
    # The same weights as an export found through shipped:<name>, and as HF safetensors.
    policy = evaluate_example.load_checkpoint("random:tiny", seed=5)
    shipped = tmp_path / "assets"
    export_model(shipped / "mini", policy.params, policy.config, extra={"tokenizer": "tasks"})
    save_hf_checkpoint(policy.params, policy.config, tmp_path / "hf")
    monkeypatch.setattr(evaluate_example, "shipped_dir", lambda: shipped)

    results = {}
    for spec in ("shipped:mini", str(tmp_path / "hf")):
        # tokenizer "": the export's recorded one; for the HF dir, which has no tokenizer files, "tasks"
        cfg = _eval_config(tmp_path / spec.replace("/", "_"), checkpoint=spec, tokenizer="", warmup=False,
                           **{"data.num": 3})
        results[spec] = evaluate_example.evaluate_checkpoint(cfg, write=lambda line: None)
    gens = [[json.loads(line)["response"] for line in Path(r["generations_path"]).read_text().splitlines()]
            for r in results.values()]
    assert len(gens[0]) == 3 and gens[0] == gens[1]


def test_evaluate_bad_input(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_example, "shipped_dir", lambda: tmp_path)
    (tmp_path / "other").mkdir()
    for spec, message in (("", "checkpoint is empty"),
                          ("random:huge", r"unknown preset 'huge'; presets: .*tiny"),
                          ("shipped:nope", r"no shipped checkpoint 'nope' in .*; shipped: \['other'\]"),
                          (str(tmp_path / "missing"), r"is not a directory"),
                          (str(tmp_path / "other"), r"neither an exported model")):
        with pytest.raises(ValueError, match=message):
            evaluate_example.load_checkpoint(spec)
    small = get_preset("tiny").replace(vocab_size=64)
    export_model(tmp_path / "small_vocab", split_model(init_model(small))[1], small, extra={})
    with pytest.raises(ValueError, match=r"has vocab_size 64, smaller than its tokenizer's 160"):
        evaluate_example.load_checkpoint(str(tmp_path / "small_vocab"))
    with pytest.raises(ValueError, match=r"config.sampler.gen_length=10 must be a multiple of sampler.block_size=4"):
        evaluate_example.evaluate_checkpoint(_eval_config(tmp_path, **{"sampler.gen_length": 10}))
    with pytest.raises(ValueError, match=r"config.prompt_buckets must be positive multiples .* got \[6\]"):
        evaluate_example.evaluate_checkpoint(_eval_config(tmp_path, prompt_buckets=(6, 8)))
    with pytest.raises(ValueError, match=r"config.batch_size must be an int >= 1, got 0"):
        evaluate_example.evaluate_checkpoint(_eval_config(tmp_path, batch_size=0))
    with pytest.raises(ValueError, match=r"unknown data variant 'mnist'"):
        evaluate_config("mnist")
    with pytest.raises(ValueError, match=r"unknown variant modifier 'greedy'"):
        evaluate_config("arithmetic,greedy")
    static = evaluate_config("math500,static")
    assert (static.sampler.strategy, static.sampler.top_k, static.sampler.gen_length) == \
        ("low_confidence_static", 1, 2000)


# ---------------------------------------------------------------------------
# sample.py
# ---------------------------------------------------------------------------


def test_sample_main_prints_completions_and_trajectories(capsys):
    _run_main(sample_example, "sample.py", f"--config={CONFIGS / 'sample.py'}:smoke", "--config.num_samples=2",
              "--config.prompts=('Compute 2+3.', 'Compute 7-4.', 'Compute 1+1.')")
    printed = capsys.readouterr().out
    heads = [line for line in printed.splitlines() if line.startswith("[")]
    assert [h.split("]")[0] + "]" for h in heads] == [f"[{i}.{s}]" for i in range(3) for s in (0, 1)]
    assert printed.count("  prompt:     Q: Compute 7-4.") == 2
    assert printed.count("completion: ") == 6
    assert printed.count("blk  0 | ") == 6  # one trajectory table per completion


def test_sample_task_problems_are_scored_and_drawn():
    cfg = sample_config("smoke")
    cfg.prompts = ()
    cfg.data.num = 2
    cfg.data.knobs = ml_collections.ConfigDict(dict(digits=1, operands=2, ops="+"))
    cfg.trajectory = "frames"
    lines = []
    out = sample_example.sample(cfg, write=lines.append)
    assert len(out) == 2
    for o in out:
        assert o["reward"] in (0.0, 1.0)
        assert len(o["tokens"]) == len(o["step_map"]) == o["length"] and 1 <= o["length"] <= 8
        assert max(o["step_map"]) <= o["num_steps"]
        # a frame per denoising step that committed a token (of the completion, or context after it)
        assert len(set(o["step_map"])) <= o["trajectory"].count("step ") <= o["num_steps"]
        assert o["prompt"].startswith("Q: ")
    assert any("reward" in line and "answer" in line for line in lines)


def test_sample_bad_config():
    for field, value, message in (("trajectory", "pictures", r"config.trajectory must be one of"),
                                  ("prompts", ("2+2", " "), r"config.prompts has empty prompts at \[1\]"),
                                  ("num_samples", 0, r"config.num_samples must be an int >= 1, got 0")):
        cfg = sample_config("smoke")
        cfg[field] = value
        with pytest.raises(ValueError, match=message):
            sample_example.sample(cfg)
    with pytest.raises(ValueError, match=r"unknown variant 'poems'"):
        sample_config("poems")
