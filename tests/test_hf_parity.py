"""Logit parity with the transformers Qwen3 reference (fp32, tiny random model).

transformers 5.x passes a 4-D ``attention_mask`` through unchanged
(``masking_utils._preprocess_mask_arguments``); with
``attn_implementation="eager"`` it is *added* to the scores, so the custom
masks below are handed over as float additive masks (0 allowed,
``finfo.min`` elsewhere), exactly as the SDAR reference builds them (§3.4).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tracerl_jax.attention import causal_info, dense_mask, extended_info, generation_info  # noqa: E402
from tracerl_jax.models import forward, load_hf_checkpoint, save_hf_checkpoint, split_model  # noqa: E402

VOCAB, MASK_ID, PAD_ID = 128, 127, 0
TOL = 1e-4
torch.set_num_threads(1)  # tiny matmuls; extra threads only contend with XLA and xdist


def _hf_model(tie: bool):
    torch.manual_seed(1234 + tie)
    cfg = transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=256, rms_norm_eps=1e-6,
        tie_word_embeddings=tie, attn_implementation="eager")
    model = transformers.Qwen3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        # Unit norm weights would hide a wrong norm mapping.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def pair(request, tmp_path_factory):
    tie = request.param
    ref = _hf_model(tie)
    path = tmp_path_factory.mktemp(f"qwen3_tie{tie}")
    ref.save_pretrained(path, safe_serialization=True)
    # A plain Qwen3 config names no MASK id; any in-vocabulary id serves the parity checks.
    config, model = load_hf_checkpoint(path, mask_token_id=VOCAB - 1)
    assert config.tie_word_embeddings == tie and config.model_type == "qwen3"
    graphdef, params = split_model(model)
    return ref, graphdef, params, config, path


def _left_padded(B, L, pads, seed=0):
    rng = np.random.default_rng(seed)
    tok = rng.integers(1, VOCAB - 1, (B, L)).astype(np.int32)
    valid = np.ones((B, L), bool)
    for b, n in enumerate(pads):
        valid[b, :n] = False
        tok[b, :n] = PAD_ID
    return tok, valid


def _hf_logits(ref, tok, pos, attention_mask):
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(tok, dtype=torch.long), position_ids=torch.tensor(pos, dtype=torch.long),
                  attention_mask=torch.tensor(attention_mask))
    return out.logits.numpy()


def _float_mask(mask_bool):
    return np.where(np.asarray(mask_bool), 0.0, np.finfo(np.float32).min).astype(np.float32)


def test_causal_mask_parity_left_padded(pair):
    ref, graphdef, params, _, _ = pair
    tok, valid = _left_padded(3, 12, [0, 3, 5])
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    want = _hf_logits(ref, tok, pos, valid.astype(np.int64))  # HF builds causal + padding itself
    got = forward(graphdef, params, jnp.asarray(tok), jnp.asarray(pos), causal_info(jnp.asarray(valid))).logits
    # Padding query rows are garbage in HF (fully masked); compare real tokens.
    err = np.abs(np.asarray(got) - want)[valid].max()
    assert err <= TOL, err


def _extended_case():
    """TraceRL extended layout [prompt L0 | clean L1 | noised L1], positions as §3.5."""
    L0, L1, b = 6, 8, 4
    prompt, pvalid = _left_padded(3, L0, [0, 2, 5], seed=1)
    rng = np.random.default_rng(2)
    resp = rng.integers(1, VOCAB - 1, (3, L1)).astype(np.int32)
    noised = np.where(rng.random((3, L1)) < 0.5, MASK_ID, resp).astype(np.int32)
    tok = np.concatenate([prompt, resp, noised], axis=1)
    v = np.concatenate([pvalid, np.ones((3, L1), bool)], axis=1)
    pos = np.where(v, np.cumsum(v, 1) - 1, 1)
    pos = np.concatenate([pos, pos[:, L0:]], axis=1).astype(np.int32)
    return tok, pos, extended_info(jnp.asarray(pvalid), L1, b)


def _generation_case():
    """Sampler canvas: left-padded prompt then response blocks, grid right-aligned to the prompt end."""
    Lp, G, b = 8, 8, 4
    tok, valid = _left_padded(3, Lp + G, [0, 3, 6], seed=3)
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return tok, pos, generation_info(jnp.asarray(valid), b, grid_start=Lp)


def _causal4d_case():
    tok, valid = _left_padded(3, 10, [0, 1, 4], seed=4)
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return tok, pos, causal_info(jnp.asarray(valid))


@pytest.mark.parametrize("case", [_extended_case, _generation_case, _causal4d_case],
                         ids=["extended", "generation", "causal4d"])
def test_custom_4d_mask_parity(pair, case):
    ref, graphdef, params, _, _ = pair
    tok, pos, info = case()
    m = dense_mask(info, info)
    want = _hf_logits(ref, tok, pos, _float_mask(m))
    got = forward(graphdef, params, jnp.asarray(tok), jnp.asarray(pos), info).logits
    got_dense = forward(graphdef, params, jnp.asarray(tok), jnp.asarray(pos), info, dense_mask=m).logits
    # Dead-row repair matches process_pad, so every row (padding too) agrees.
    assert np.abs(np.asarray(got) - want).max() <= TOL
    np.testing.assert_array_equal(np.asarray(got), np.asarray(got_dense))


def test_custom_mask_really_differs_from_causal(pair):
    """Guards the test itself: the block mask must change HF's output."""
    ref, _, _, _, _ = pair
    tok, pos, info = _extended_case()
    causal = np.tril(np.ones((tok.shape[1],) * 2, bool))[None, None].repeat(3, 0)
    a = _hf_logits(ref, tok, pos, _float_mask(dense_mask(info, info)))
    c = _hf_logits(ref, tok, pos, _float_mask(causal))
    assert np.abs(a - c).max() > 1e-2


def test_transformers_loads_our_save(pair, tmp_path):
    ref, graphdef, params, config, src = pair
    save_hf_checkpoint(params, config, tmp_path)
    names = json.loads((tmp_path / "config.json").read_text())
    assert names["rope_theta"] == 10000.0 and names["model_type"] == "qwen3"
    back = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").float().eval()
    tok, pos, info = _generation_case()
    m = _float_mask(dense_mask(info, info))
    np.testing.assert_allclose(_hf_logits(back, tok, pos, m), _hf_logits(ref, tok, pos, m), atol=1e-6, rtol=0)


def test_loads_transformers_sharded_save(pair, tmp_path):
    ref, graphdef, params, _, _ = pair
    ref.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    _, model = load_hf_checkpoint(tmp_path, mask_token_id=VOCAB - 1)
    for a, b in zip(jax.tree.leaves(split_model(model)[1]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
