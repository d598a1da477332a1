"""Inputs that used to pass silently (or fail deep inside) are each a ValueError naming the argument."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import tracerl_jax as tj
from tracerl_jax.attention import full_info
from tracerl_jax.models import load_hf_checkpoint, save_hf_checkpoint

CFG = tj.get_preset("tiny").replace(vocab_size=64, mask_token_id=3, pad_token_id=0, eos_token_id=1,
                                    max_position_embeddings=32)


@pytest.fixture(scope="module")
def model():
    return tj.split_model(tj.init_model(CFG, seed=0))


def test_forward_positions_beyond_the_model_and_empty_batches(model):
    graphdef, params = model
    tokens = jnp.ones((1, 4), jnp.int32)
    info = full_info(jnp.ones((1, 4), bool))
    tj.forward(graphdef, params, tokens, jnp.arange(4)[None] + 28, info)   # the last position, 31: fine
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_position_embeddings=32\)"):
        tj.forward(graphdef, params, tokens, jnp.arange(4)[None] + 29, info)
    with pytest.raises(ValueError, match="tokens is empty"):
        tj.forward(graphdef, params, jnp.ones((0, 4), jnp.int32), jnp.ones((0, 4), jnp.int32),
                   full_info(jnp.ones((0, 4), bool)))


def test_checkpoint_without_a_mask_id(model, tmp_path):
    save_hf_checkpoint(model[1], CFG, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf.pop("mask_token_id", None)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match="config.json has no mask_token_id"):
        load_hf_checkpoint(tmp_path)
    cfg, _ = load_hf_checkpoint(tmp_path, mask_token_id=3)   # the tokenizer names it
    assert cfg.mask_token_id == 3


def test_step_map_with_a_non_positive_id_inside_the_response():
    prompt = np.array([[5, 6]])
    args = (prompt, prompt > 0, np.array([[7, 8, 9, 10]]), np.array([[1, 0, 2, 3]]), np.array([4]))
    with pytest.raises(ValueError, match="step_map of response 0 holds a non-positive step id inside its length 4"):
        tj.build_rows(*args, block_size=2, mask_id=3, pad_id=0)
    # The reference drops such a response (Q-T6): its rows are invalid.
    rows = tj.build_rows(*args, block_size=2, mask_id=3, pad_id=0, compat="reference")
    assert not np.asarray(rows.row_valid).any()
    # After the length there is no token, and 0 is the marker for that.
    tj.build_rows(prompt, prompt > 0, np.array([[7, 8, 0, 0]]), np.array([[1, 2, 0, 0]]), np.array([2]),
                  block_size=2, mask_id=3, pad_id=0)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_threshold_outside_zero_one(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        tj.BlockSamplerConfig(gen_length=8, mask_id=3, eos_id=1, pad_id=0, threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        tj.FullSamplerConfig(gen_length=8, mask_id=3, pad_id=0, block_size=4, threshold=threshold)
    tj.BlockSamplerConfig(gen_length=8, mask_id=3, eos_id=1, pad_id=0, threshold=1.0)   # never by confidence: ok
