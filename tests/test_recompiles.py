"""Static shapes: repeated calls with the same bucketed shapes never recompile."""

import jax
import numpy as np

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
