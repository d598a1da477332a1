"""The PyTorch peer of the benchmarks computes what the library computes (tiny preset, fp32).

``benchmarks/torch_peer.py`` times a stock ``transformers`` Qwen3 doing
block-diffusion sampling and the TraceRL policy update eagerly; its numbers
are only comparable with ours if it is the same computation. Checked here:
greedy decoding gives identical tokens, step maps, lengths and step counts
(ragged left-padded prompts; static, EOS-stopped static, and confident
dynamic decoding), and one policy update gives the same loss, gradient norm
and updated weights.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_peer as tp  # noqa: E402

import tracerl_jax as tj  # noqa: E402
from tracerl_jax.models import cache_init_fn, sampler_forward_fn  # noqa: E402
from tracerl_jax.trajectory import rows_from_rollout  # noqa: E402
from tracerl_jax.tokenizers import load_tokenizer  # noqa: E402
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from tracerl_jax.train.step import init_train_state, to_microbatches  # noqa: E402
from tracerl_jax.train.steps import PolicyLossConfig, batch_scalars, make_policy_step, old_logprobs  # noqa: E402

REL = 1e-4


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tasks")


@pytest.fixture(scope="module")
def pairs(tok, tmp_path_factory):
    """``tied -> (cfg, graphdef, params, peer model)``, built on first use."""
    tp.set_threads(1)  # tiny matmuls; more threads only contend with XLA
    cache = {}

    def get(tied: bool):
        if tied not in cache:
            cache[tied] = _pair(tok, tied, tmp_path_factory.mktemp("peer"))
        return cache[tied]

    return get


def _pair(tok, tied, path):
    cfg = tj.get_preset("tiny").replace(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                        pad_token_id=tok.pad_id, eos_token_id=tok.eos_id,
                                        tie_word_embeddings=tied)
    graphdef, params = tj.split_model(tj.init_model(cfg, seed=3))
    # Make EOS likely (a random model almost never emits it), so rows stop at ragged lengths.
    if tied:
        emb = params["embed_tokens"]["embedding"]
        emb[...] = emb[...].at[tok.eos_id].multiply(12.0)
    else:
        k = params["lm_head"]["kernel"]
        k[...] = k[...].at[:, tok.eos_id].multiply(12.0)
    return cfg, graphdef, params, tp.load_model(tp.export_weights(params, cfg, path))


def _prompts(tok, B=5, Lp=10, seed=0):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(5, tok.vocab_size, (B, Lp)).astype(np.int32)
    valid = np.ones((B, Lp), bool)
    for i, n in enumerate([0, 2, 3, 7, 9][:B]):
        valid[i, :n] = False
        prompts[i, :n] = tok.pad_id
    return prompts, valid


CASES = {
    "static_ignore_eos": dict(strategy="low_confidence_static", temperature=0.0, ignore_eos=True),
    "static_eos": dict(strategy="low_confidence_static", temperature=0.0),
    "dynamic_confident": dict(strategy="low_confidence_dynamic", temperature=1.0, top_k=1),
}


# Untied: every case; tied (the ``small`` preset's layout): the EOS case.
@pytest.mark.parametrize("tied,case", [(False, c) for c in CASES] + [(True, "static_eos")])
def test_peer_sampler_decodes_identical_tokens(pairs, tok, tied, case):
    cfg, graphdef, params, model = pairs(tied)
    scfg = tj.BlockSamplerConfig(gen_length=32, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                 block_size=4, steps_per_block=4, **CASES[case])
    sample = tj.make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(cfg), scfg)
    prompts, valid = _prompts(tok)
    ours = sample(params, prompts, valid, rng=jax.random.key(0))
    peer = tp.peer_sample(model, prompts, valid, scfg)
    for name in ("tokens", "step_map", "lengths", "num_steps"):
        np.testing.assert_array_equal(peer._asdict()[name], np.asarray(getattr(ours, name)), err_msg=name)
    np.testing.assert_allclose(peer.logprobs, np.asarray(ours.logprobs), atol=1e-4, rtol=0)
    np.testing.assert_allclose(peer.confidences, np.asarray(ours.confidences), atol=1e-5, rtol=1e-4)
    lengths = np.asarray(ours.lengths)
    if case == "static_eos":
        assert len(set(lengths.tolist())) > 1 and lengths.min() < 32  # EOS really stopped rows early
    if case == "dynamic_confident":
        assert int(np.asarray(ours.num_steps).max()) < 32  # several tokens per forward
    # The peer's batch-wide forward count: one prefill, the slowest row's steps per block, a write per block.
    assert peer.forwards["prefill"] == 1


def test_peer_policy_step_matches(pairs, tok):
    cfg, graphdef, params, model = pairs(True)   # tied: the LM head's gradient lands on the embedding
    scfg = tj.BlockSamplerConfig(gen_length=16, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                 strategy="low_confidence_static", temperature=0.0)
    sample = tj.make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(cfg), scfg)
    prompts, valid = _prompts(tok, B=4, Lp=8, seed=1)
    ro = sample(params, prompts, valid)
    rows = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), ro, block_size=4, mask_id=tok.mask_id,
                             pad_id=tok.pad_id).rows            # 16 rows, padded prompts, EOS-shortened
    R, L1, GA = rows.row_valid.shape[0], 16, 2
    assert 0 < int(np.asarray(rows.row_valid).sum()) < R
    rng = np.random.default_rng(0)
    # logp_old off the current policy, so ratios leave the clip range and the KL term is not flat
    logp_old = old_logprobs(graphdef, params, rows, R) + jnp.asarray(rng.normal(0, 0.3, (R, L1)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(R,)), jnp.float32)
    L1_ref = float(np.asarray(ro.lengths).max())
    lr = 1e-3

    opt = make_optimizer(OptimizerConfig(learning_rate=lr))
    step = make_policy_step(graphdef, opt, PolicyLossConfig())
    batch = to_microbatches(dict(rows=rows, logp_old=logp_old, advantages=adv,
                                 **batch_scalars(rows.row_valid, GA, L1_ref)), GA)
    state, m = step(init_train_state(params, opt), batch, lr)

    peer = tp.PeerPolicyStep(model, lr=lr)
    pm = peer(tp.rows_to_torch(rows, logp_old, adv, grad_accum=GA, L1_ref=L1_ref))
    assert pm["skipped"] == 0.0 and float(m["skipped"]) == 0.0
    assert abs(pm["loss"] - float(m["loss"])) <= REL * abs(float(m["loss"])), (pm["loss"], float(m["loss"]))
    assert abs(pm["grad_norm"] - float(m["grad_norm"])) <= REL * float(m["grad_norm"])
    assert float(m["grad_norm"]) > 1.0  # the clip is exercised too

    # Same update: AdamW after clipping moves every weight by ~lr; compare to a small fraction of it.
    sd = model.state_dict()
    ours = state.params
    np.testing.assert_allclose(sd["model.embed_tokens.weight"].numpy(),
                               np.asarray(ours["embed_tokens"]["embedding"].value), atol=lr * 1e-2, rtol=0)
    np.testing.assert_allclose(sd["model.layers.0.self_attn.q_proj.weight"].numpy(),
                               np.asarray(ours["layers"][0]["self_attn"]["q_proj"]["kernel"].value).T,
                               atol=lr * 1e-2, rtol=0)
    peer.reset()
    np.testing.assert_array_equal(model.state_dict()["model.norm.weight"].numpy(),
                                  np.asarray(params["norm"]["scale"].value))
