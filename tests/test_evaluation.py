"""Held-out evaluation: result structure, batch-size invariance, verifiers, JSONL, trajectory pictures."""

import functools
import json

import jax
import numpy as np
import pytest

from tracerl_jax import evaluation
from tracerl_jax.models import cache_init_fn, get_preset, init_model, sampler_forward_fn, split_model
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.tasks import Example, get_task, load_examples, task_names
from tracerl_jax.tokenizers import load_tokenizer, pad_ids

BLOCK, GEN = 4, 8


@pytest.fixture(scope="module")
def setup():
    """A tiny random policy and its sampler with the reference eval settings (§11.2), 8 new tokens."""
    tok = load_tokenizer("tasks")
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                     pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, num_layers=1)
    graphdef, params = split_model(init_model(cfg, seed=0))
    scfg = BlockSamplerConfig(gen_length=GEN, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              block_size=BLOCK, steps_per_block=4, strategy="low_confidence_dynamic",
                              threshold=0.9, temperature=1.0)
    sample_fn = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(cfg), scfg,
                                   vocab_size=cfg.vocab_size, max_positions=cfg.max_position_embeddings)
    examples = get_task("arithmetic", digits=1).generate("test", 5, seed=0)
    return tok, params, sample_fn, examples


def _evaluate(setup, **kwargs):
    tok, params, sample_fn, examples = setup
    kwargs = dict(batch_size=2, block_size=BLOCK, rng=jax.random.key(3)) | kwargs
    return evaluation.evaluate(sample_fn, params, tok, kwargs.pop("examples", examples), **kwargs)


def test_evaluate_is_well_formed(setup):
    tok, _, _, examples = setup
    result = _evaluate(setup, num_samples=2)
    assert result["num_examples"] == 5 and result["num_responses"] == 10
    assert result["num_batches"] == 5  # 10 rows in batches of 2
    gens = result["generations"]
    assert [(g["index"], g["sample"]) for g in gens] == [(i, s) for i in range(5) for s in range(2)]
    for g in gens:
        ex = examples[g["index"]]
        assert g["question"] == ex.question and g["answer"] == ex.answer
        assert g["prompt"] == evaluation.prompt_text(tok, ex)
        assert g["reward"] in (0.0, 1.0)
        assert 1 <= g["length"] <= GEN
        assert len(g["step_map"]) == g["length"]
        assert all(1 <= s <= g["num_steps"] for s in g["step_map"])
        assert g["num_steps"] <= (GEN // BLOCK) * 4  # at most steps_per_block per block
        json.dumps(g)  # JSON-ready
    lengths = [g["length"] for g in gens]
    assert result["accuracy"] == pytest.approx(np.mean([g["reward"] for g in gens]))
    assert result["mean_length"] == pytest.approx(np.mean(lengths))
    assert result["tokens_per_forward"] == pytest.approx(sum(lengths) / sum(g["num_steps"] for g in gens))
    assert result["tokens_per_forward"] >= 1.0  # never fewer than one token per pass
    # Later batches reuse the first batch's program, so throughput excludes compilation.
    assert result["steady_state"] and result["tokens_per_second"] > 0
    assert result["sample_seconds"] > 0


def test_results_do_not_depend_on_batch_size_and_recompile_nothing(setup):
    a = _evaluate(setup, num_samples=2)
    b = _evaluate(setup, num_samples=2, batch_size=3)
    c = _evaluate(setup, num_samples=2)
    drop = ("prompt",)
    assert [{k: v for k, v in g.items() if k not in drop} for g in a["generations"]] == \
        [{k: v for k, v in g.items() if k not in drop} for g in b["generations"]]
    assert c["num_compiles"] == 0 and c["generations"] == a["generations"]
    # another key samples something else
    d = _evaluate(setup, num_samples=2, rng=jax.random.key(4))
    assert [g["response"] for g in d["generations"]] != [g["response"] for g in a["generations"]]


def test_custom_verifiers_and_options(setup):
    seen = {}

    def batch_verify(texts, exs, lengths):
        seen.update(texts=list(texts), exs=list(exs), lengths=list(lengths))
        return [1.0] * len(texts)

    result = _evaluate(setup, batch_verify_fn=batch_verify, keep_step_maps=False)
    assert result["accuracy"] == 1.0
    assert seen["texts"] == [g["response"] for g in result["generations"]]
    assert seen["lengths"] == [g["length"] for g in result["generations"]]
    assert seen["exs"] == list(setup[3])
    assert all("step_map" not in g for g in result["generations"])
    half = _evaluate(setup, verify_fn=lambda text, ex: float(ex.answer == "never"))
    assert half["accuracy"] == 0.0


def test_prompt_buckets_and_forced_length(setup):
    tok, examples = setup[0], setup[3]
    short = examples[0]  # the length every other test compiles for (batch 2)
    long = Example("What is 12+7 plus 3?", "22", "\\boxed{22}", {"task": "x", "kind": "math"})
    exs = [long, short, long]
    lens = [len(tok.encode(evaluation.prompt_text(tok, e))) for e in (short, long)]
    buckets = (-(-lens[0] // 4) * 4, -(-lens[1] // 4) * 4)
    assert buckets[0] < buckets[1]
    result = _evaluate(setup, examples=exs, prompt_buckets=buckets, verify_fn=lambda t, e: 0.0)
    assert result["num_batches"] == 2  # one per bucket used: [short], [long, long]
    assert [g["index"] for g in result["generations"]] == [0, 1, 2]  # input order kept
    assert [g["prompt"] for g in result["generations"]] == [evaluation.prompt_text(tok, e) for e in exs]
    forced = _evaluate(setup, examples=exs, prompt_len=buckets[1], verify_fn=lambda t, e: 0.0)
    assert forced["num_batches"] == 2 and forced["num_compiles"] == 0  # [long, short], [long]


def test_evaluate_bad_input(setup):
    with pytest.raises(ValueError, match="examples is empty"):
        _evaluate(setup, examples=[])
    with pytest.raises(ValueError, match=r"batch_size and num_samples must be >= 1, got 0, 1"):
        _evaluate(setup, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size and num_samples must be >= 1, got 2, 0"):
        _evaluate(setup, num_samples=0)
    with pytest.raises(ValueError, match=r"prompt_len=6 must be a multiple of block_size=4"):
        _evaluate(setup, prompt_len=6)
    with pytest.raises(ValueError, match=r"exceeds the largest bucket 4"):
        _evaluate(setup, prompt_buckets=(4,))


def test_summary_keeps_the_scalars(setup):
    result = _evaluate(setup)
    s = evaluation.summary(result)
    assert "generations" not in s
    assert set(s) == {"accuracy", "mean_length", "tokens_per_forward", "tokens_per_second", "steady_state",
                      "num_examples", "num_responses", "num_batches", "num_compiles", "sample_seconds"}
    assert all(isinstance(v, float) for v in s.values())
    assert s["steady_state"] == 1.0 and s["accuracy"] == result["accuracy"]


def test_write_generations_jsonl(tmp_path):
    gens = [{"index": 0, "response": "x = \\boxed{5} — ok", "reward": 1.0, "step_map": [1, 2]},
            {"index": 1, "response": "", "reward": 0.0}]
    path = tmp_path / "out" / "nested" / "generations.jsonl"
    evaluation.write_generations_jsonl(path, gens)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == gens
    assert "—" in lines[0]  # UTF-8, not \u escapes
    assert [p.name for p in path.parent.iterdir()] == ["generations.jsonl"]  # no temporary left behind
    evaluation.write_generations_jsonl(path, gens[:1])  # rewrites, does not append
    assert len(path.read_text().splitlines()) == 1


# ---------------------------------------------------------------------------
# render_trajectory
# ---------------------------------------------------------------------------


class _DigitTokenizer:
    """Decodes id ``i`` to ``str(i)`` (enough for the picture)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(str(int(i)) for i in ids)


def test_render_trajectory_table_and_frames():
    tokens = [5, 3, 7, 8, 9, 1, 0, 0]
    step_map = [1, 2, 1, 3, 4, 4, 5, 0]  # the 2nd block: 9 and EOS at step 4, a context token at 5
    table = evaluation.render_trajectory(_DigitTokenizer(), tokens, step_map, length=6, block_size=4)
    assert table.splitlines() == ["blk  0 | 5·1  3·2  7·1  8·3",
                                  "blk  1 | 9·4  1·4  [0·5]  [0·0]"]
    frames = evaluation.render_trajectory(_DigitTokenizer(), tokens, step_map, length=6, block_size=4,
                                          frames=True)
    assert frames.splitlines() == ["step   1: 5_7_",
                                   "step   2: 537_",
                                   "step   3: 5378",  # the next block is not being decoded yet
                                   "step   4: 537891__",
                                   "step   5: 5378910_"]


def test_render_trajectory_of_a_cut_row():
    # a row cut inside a block (e.g. tokens[:length]) draws the partial block
    table = evaluation.render_trajectory(_DigitTokenizer(), [5, 3, 7, 8, 9, 1], [1, 2, 1, 3, 4, 4], length=6,
                                         block_size=4)
    assert table.splitlines() == ["blk  0 | 5·1  3·2  7·1  8·3", "blk  1 | 9·4  1·4"]


def test_render_trajectory_of_a_real_rollout(setup):
    tok, params, sample_fn, examples = setup
    seqs = [tok.encode(evaluation.prompt_text(tok, e)) for e in examples[:2]]
    ids, valid = pad_ids(seqs, tok.pad_id, side="left", multiple_of=BLOCK)  # the shape evaluate compiled
    ro = jax.tree.map(np.asarray, sample_fn(params, ids, valid, rng=jax.random.key(0)))
    n = int(ro.lengths[0])
    pic = evaluation.render_trajectory(tok, ro.tokens[0], ro.step_map[0], n, BLOCK)
    assert len(pic.splitlines()) == -(-n // BLOCK)
    frames = evaluation.render_trajectory(tok, ro.tokens[0], ro.step_map[0], n, BLOCK, frames=True)
    assert len(frames.splitlines()) == len(set(ro.step_map[0][ro.step_map[0] > 0].tolist()))


def test_render_trajectory_bad_input():
    tok = _DigitTokenizer()
    with pytest.raises(ValueError, match=r"block_size must be an int >= 1, got 0"):
        evaluation.render_trajectory(tok, [1, 2], [1, 1], 2, 0)
    with pytest.raises(ValueError, match=r"tokens \(2,\) and step_map \(3,\) must be 1-D of equal length"):
        evaluation.render_trajectory(tok, [1, 2], [1, 1, 1], 2, 2)
    with pytest.raises(ValueError, match=r"length must be in \[0, 2\], got 3"):
        evaluation.render_trajectory(tok, [1, 2], [1, 1], 3, 2)


# ---------------------------------------------------------------------------
# default_verifier
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, knobs", [(n, {}) for n in task_names()] + [
    # non-default knobs: the verifier must rebuild the task with the example's own knobs
    ("arithmetic", dict(digits=3, operands=3, ops="+-*")),
    ("countdown", dict(count=4, max_target=200)),
    ("sudoku4", dict(blanks=10)),
])
def test_default_verifier_accepts_the_tasks_own_solutions(name, knobs):
    task = get_task(name, **knobs)
    exs = task.generate("test", 8, seed=1)
    score = evaluation.default_verifier(exs)
    assert score([e.solution for e in exs], exs, [0] * len(exs)) == [1.0] * len(exs)
    # and rejects another problem's solution (countdown solutions can be valid for two problems)
    wrong = [exs[(i + 1) % len(exs)].solution for i in range(len(exs))]
    assert sum(score(wrong, exs, [0] * len(exs))) < len(exs)
    assert score(["no answer"] * len(exs), exs, [0] * len(exs)) == [0.0] * len(exs)


def test_default_verifier_math_data_sets(monkeypatch):
    import tracerl_jax.rewards as rewards

    # A judge timeout counts as wrong; on a loaded 2-core machine the 5 s default can pass.
    monkeypatch.setattr(rewards, "score_math", functools.partial(rewards.score_math, timeout_s=60.0))
    exs = load_examples("gsm8k", num=2) + load_examples("math500", num=2)
    score = evaluation.default_verifier(exs)
    right = [f"So the answer is \\boxed{{{e.answer}}}." for e in exs]
    assert score(right, exs, [0] * 4) == [1.0] * 4
    assert score(["\\boxed{-123456789}"] * 4, exs, [0] * 4) == [0.0] * 4


def test_default_verifier_rejects_code_examples():
    code = Example("def f():", "", "", {"task": "humaneval", "kind": "code_function"})
    with pytest.raises(ValueError, match=r"no default verifier for example kinds \['code_function'\]"):
        evaluation.default_verifier([code])
