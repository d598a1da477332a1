"""tracerl_jax.models.transfer: a checkpoint of one family layout starting a model of another."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tracerl_jax.models import forward, get_preset, init_model, relayout_layers, split_model
from tracerl_jax.models.transfer import transfer_weights

REPO = Path(__file__).resolve().parents[1]


def _params(model):
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(pure)}


def _logits(model, tokens):
    graphdef, params = split_model(model)
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    full = jnp.ones((tokens.shape[0], 1, tokens.shape[1], tokens.shape[1]), bool)  # bidirectional
    return np.asarray(forward(graphdef, params, tokens, pos, None, dense_mask=full).logits)


@pytest.mark.parametrize("target", ["tiny-llada", "tiny-dream"])
def test_block_weights_start_a_full_attention_layout(target):
    source = init_model(get_preset("tiny"), seed=1)
    fresh = init_model(get_preset(target), seed=2)
    model, report = transfer_weights(source, fresh)
    src, out, init = _params(source), _params(model), _params(fresh)
    assert model.config == fresh.config  # the target's layout is kept
    assert set(report.dropped) == {p for p in src if "q_norm" in p or "k_norm" in p} and len(report.dropped) == 4
    assert set(report.kept_init) == ({p for p in init if "bias" in p} if target == "tiny-dream" else set())
    assert set(report.copied) == set(src) - set(report.dropped)
    for p in report.copied:
        np.testing.assert_array_equal(out[p], src[p], err_msg=p)
    for p in report.kept_init:
        np.testing.assert_array_equal(out[p], init[p], err_msg=p)
        np.testing.assert_array_equal(out[p], 0.0)  # Dream's biases start at zero: q/k/v are the source's maps
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 500, (2, 12)))
    if target == "tiny-dream":  # zero biases: the same function as the LLaDA layout of the same weights
        llada, _ = transfer_weights(source, init_model(get_preset("tiny-llada"), seed=3))
        np.testing.assert_allclose(_logits(model, tokens), _logits(llada, tokens), atol=1e-5, rtol=1e-5)


def test_same_layout_is_the_identity_across_scan_layouts():
    source = init_model(get_preset("tiny", scan_layers=True), seed=1)
    model, report = transfer_weights(source, init_model(get_preset("tiny"), seed=5))
    assert not report.dropped and not report.kept_init and not model.config.scan_layers
    tokens = jnp.asarray(np.random.default_rng(1).integers(5, 500, (2, 9)))
    np.testing.assert_allclose(_logits(model, tokens), _logits(relayout_layers(source, False), tokens),
                               atol=1e-6, rtol=1e-6)


def test_shape_mismatch_names_the_field():
    with pytest.raises(ValueError, match=r"hidden_size: 64 vs 32"):
        transfer_weights(init_model(get_preset("tiny")), init_model(get_preset("tiny-llada", hidden_size=32)))
    with pytest.raises(ValueError, match=r"vocab_size"):
        transfer_weights(init_model(get_preset("tiny")), init_model(get_preset("tiny", vocab_size=256)))
    with pytest.raises(ValueError, match=r"two Transformers"):
        transfer_weights(init_model(get_preset("tiny")), None)


def test_sft_model_init_carries_the_shipped_block_model(tmp_path):
    sys.path.insert(0, str(REPO / "examples"))
    import sft
    from configs.sft import get_config
    from tracerl_jax.models import load_hf_checkpoint, shipped_checkpoint
    from tracerl_jax.tokenizers import load_tokenizer

    import _common
    cfg = get_config("llada")
    cfg.model.init = "shipped:arith_sft"
    tok = load_tokenizer(cfg.tokenizer)
    said = []
    model = sft.initial_model(cfg, _common.model_config(cfg.model, tok), tok, said.append)
    assert model.config.family == "llada" and "12 dropped" in said[0]
    _, shipped = load_hf_checkpoint(shipped_checkpoint("arith_sft"))
    ref, got = _params(shipped), _params(model)
    assert set(got) == {p for p in ref if "q_norm" not in p and "k_norm" not in p}
    for p in got:
        np.testing.assert_array_equal(got[p], ref[p], err_msg=p)
    cfg.model.init = None
    fresh = sft.initial_model(cfg, _common.model_config(cfg.model, tok), tok, said.append)
    emb = "['embed_tokens']['embedding']"
    assert not np.array_equal(_params(fresh)[emb], ref[emb])  # no model.init: random init
