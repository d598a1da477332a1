"""Static shapes: repeated calls with the same bucketed shapes never recompile."""

import jax
import pytest

from tracerl_jax.diagnostics import CompileCounter
from tracerl_jax.models import cache_init_fn, get_preset, init_model, sampler_forward_fn, split_model
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.tokenizers import load_tokenizer


def test_sampler_zero_recompiles_for_ragged_prompts_in_one_bucket():
    tok = load_tokenizer("tasks")
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size)
    graphdef, params = split_model(init_model(cfg, seed=0))
    scfg = BlockSamplerConfig(gen_length=16, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              strategy="low_confidence_dynamic")
    sample = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(cfg), scfg)
    questions = [["Compute 1+2.", "Compute 12+345*6.", "Q"], ["Compute 99-1.", "x", "Compute 1+1+1+1+1."],
                 ["a b c d e f", "Compute 7*7.", "Compute 3-2."]]
    batches = [tok.encode_batch([tok.chat_prompt(q) for q in qs], length=24) for qs in questions]
    out = sample(params, *batches[0], rng=jax.random.key(0))
    jax.block_until_ready(out)
    with CompileCounter() as cc:
        for i, (ids, valid) in enumerate(batches[1:] * 2):
            jax.block_until_ready(sample(params, ids, valid, rng=jax.random.key(i + 1)))
    assert cc.count == 0
    assert len({int(v.sum()) for _, vs in batches for v in vs}) > 3  # the prompts really are ragged


@pytest.mark.parametrize("pack_rounds", [None, 4], ids=["rows", "packed_rows"])
def test_rl_iterations_zero_recompiles_after_warmup(pack_rounds):
    """Whole TraceRL iterations (rollout, rewards, rows, packing, old log-probs, policy updates) with
    ragged prompts, ragged responses and a varying number of rows and updates compile nothing new
    once warmed up (the loop of ``benchmarks/recompiles.py`` on a tiny random model), with one row
    per round or packed rows."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recompiles

    run = recompiles.build("random:tiny", num_prompts=4, k=4, prompt_len=24, gen_length=16, block_size=4,
                           batch_rows=16 if pack_rounds is None else 4, grad_accum=2, lr=1e-4, seed=0,
                           eos_rate=0.1, pack_rounds=pack_rounds)
    recompiles.count_iterations(run, 1, 2)  # warm-up: compiles the sampler, row builder, steps
    steady = recompiles.count_iterations(run, 3, 3)
    assert [r["compiles"] for r in steady] == [0] * 3, [r["compiled"] for r in steady]
    # ... while the data really is ragged
    assert len({t for r in steady for t in r["prompt_tokens"]}) > 2
    assert min(r["response_lengths"][0] for r in steady) < max(r["response_lengths"][1] for r in steady)
    # (packed rows: one per kept response, so the trained tokens are what varies)
    assert len({(r["rows"], r.get("policy/num_tokens")) for r in steady}) > 1
    assert max(r["num_batches"] for r in steady) > 0
