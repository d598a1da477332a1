"""One rows type, model families as strategies, and methods chosen by registered name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracerl_jax as tj
from tracerl_jax import advantages as adv_lib
from tracerl_jax import losses, rl
from tracerl_jax import rows as rows_lib
from tracerl_jax.families import FAMILIES, RowSettings, family_of, get_family
from tracerl_jax.registry import Registry, check_name
from tracerl_jax.rows import ExtendedLayout, SequenceLayout
from tracerl_jax.sampling import BlockSamplerConfig, FullSamplerConfig, Rollout

PAD, EOS, MASK = 0, 1, 2
SETTINGS = RowSettings(mask_id=MASK, pad_id=PAD, block_size=4)


# --------------------------------------------------------------------------- registry


def test_registry_register_get_and_errors():
    r = Registry("widget")
    r.register("a", 1)

    @r.register("b")
    def b():
        return 2

    assert r.get("a") == 1 and r.get("b") is b and r.names() == ("a", "b") and "a" in r
    with pytest.raises(ValueError, match=r"unknown widget 'c'; registered: \('a', 'b'\)"):
        r.get("c")
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", 3)
    r.register("a", 3, replace=True)
    assert r.get("a") == 3
    with pytest.raises(ValueError, match="non-empty string"):
        r.register("", 4)
    with pytest.raises(ValueError, match=r"rl.method must be one of \('a', 'b'\)"):
        check_name(r, "zzz", "rl.method")


def test_builtin_entries():
    assert set(rl.ROW_BUILDERS.names()) >= {"TraceRL", "random_masking", "coupled"}
    assert set(adv_lib.ADVANTAGE_ESTIMATORS.names()) >= {"group", "step_gae"}
    assert losses.POLICY_LOSSES.get("ppo_clip") is losses.policy_loss
    assert set(FAMILIES.names()) >= {"sdar", "llada", "dream"}
    from tracerl_jax.train.steps import PolicyLossConfig

    with pytest.raises(ValueError, match="unknown policy loss 'nope'"):
        PolicyLossConfig(name="nope")


# --------------------------------------------------------------------------- families


def test_families_pick_layout_sampler_and_loss():
    tok = tj.load_tokenizer("tasks")
    section = dict(strategy="low_confidence_dynamic", threshold=0.9, temperature=1.0)
    block, llada, dream = get_family("sdar"), get_family("llada"), get_family("dream")
    assert isinstance(block.layout(SETTINGS), ExtendedLayout)
    assert isinstance(llada.layout(SETTINGS), SequenceLayout) and dream.layout(SETTINGS).shift == 1
    assert isinstance(block.sampler_config(section, tok, block_size=4, gen_length=8), BlockSamplerConfig)
    scfg = dream.sampler_config(section, tok, block_size=4, gen_length=8)
    assert isinstance(scfg, FullSamplerConfig) and scfg.family == "dream" and scfg.remasking == "threshold"
    assert block.normalizer == "global_L1" and llada.normalizer == "row_tokens"
    assert llada.policy_loss_defaults["log_ratio_clip"] is None
    assert "ar" in dream.sft_methods and "ar" not in llada.sft_methods and "trace" in block.sft_methods
    assert family_of(tj.get_preset("tiny-dream")) is dream
    with pytest.raises(ValueError, match=r"rollout.use_cache=True applies to full-attention"):
        block.check_sampler_section(dict(use_cache=True), "rollout")
    with pytest.raises(ValueError, match=r"eval.strategy='sequential' has no full-attention rule"):
        llada.sampler_config(dict(strategy="sequential"), tok, block_size=4, gen_length=8, name="eval")
    with pytest.raises(ValueError, match="unknown model family"):
        get_family("gpt")
    # A family's sampler runs on its model; the wrong sampler config is refused.
    cfg = tj.get_preset("tiny-llada").replace(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                              pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
    graphdef, _ = tj.split_model(tj.init_model(cfg))
    with pytest.raises(ValueError, match="takes a FullSamplerConfig"):
        llada.make_sampler(graphdef, cfg, block.sampler_config(section, tok, block_size=4, gen_length=8))


# --------------------------------------------------------------------------- rows


def _batch(N=2, L0=3, G=8):
    prompts = np.array([[PAD, 5, 6], [7, 8, 9]], np.int32)[:N]
    tokens = np.array([[10, 11, 12, EOS, 13, 14, 15, 16], [17, 18, 19, 20, 21, 22, EOS, PAD]], np.int32)[:N]
    step_map = np.array([[2, 1, 2, 3, 5, 4, 6, 6], [1, 1, 2, 2, 3, 3, 4, 4]], np.int32)[:N]
    lengths = np.array([4, 7], np.int32)[:N]
    ro = Rollout(jnp.asarray(tokens), jnp.asarray(step_map), jnp.zeros((N, G)), jnp.zeros((N, G)),
                 jnp.asarray(lengths), jnp.asarray(step_map.max(1)))
    return rl.RolloutBatch(prompts, prompts != PAD, ro, [""] * N, np.array([[1.0, 0.0]], np.float32),
                           np.array([1.0, -1.0], np.float32), np.array([True, True]))


@pytest.mark.parametrize("family", ["sdar", "llada", "dream"])
@pytest.mark.parametrize("method", ["TraceRL", "random_masking", "coupled"])
def test_every_family_and_method_gives_the_one_rows_type(family, method):
    batch = _batch()
    fam = get_family(family)
    rows, completion = rl.build_policy_rows(method, batch, family=fam, settings=SETTINGS, key=jax.random.key(0))
    rows_lib.check_rows(rows)
    assert isinstance(rows, rows_lib.Rows)
    R = rows.row_valid.shape[0]
    assert rows.labels.shape == rows.p_mask.shape == rows.read_index.shape == (R, 8)
    L0 = 3
    want_read = {"sdar": L0 + 8, "llada": L0, "dream": L0 - 1}[family] + np.arange(8)
    np.testing.assert_array_equal(np.asarray(rows.read_index), np.broadcast_to(want_read, (R, 8)))
    # TraceRL keeps the sampler's canvas as context; the baselines train on the completion, PAD after it.
    response = np.asarray(batch.rollout.tokens) if method == "TraceRL" else np.where(completion, batch.rollout.tokens, PAD)
    np.testing.assert_array_equal(np.asarray(rows.labels), response[np.asarray(rows.response_index)])
    if method == "TraceRL":  # each completion token scored once, by one row of its response
        counts = np.zeros((2, 8), int)
        np.add.at(counts, np.asarray(rows.response_index), np.asarray(rows.scored).astype(int))
        np.testing.assert_array_equal(counts, completion.astype(int))
    # The group estimator writes each response's z-score where its rows score.
    inputs = rl.advantage_inputs(rows, batch, completion, family=fam, settings=SETTINGS)
    adv, ret = rl.compute_advantages("group", inputs)
    assert ret is None
    want = np.where(np.asarray(rows.scored), batch.advantages[np.asarray(rows.response_index)][:, None], 0.0)
    np.testing.assert_array_equal(adv, want)


def test_a_registered_row_builder_and_estimator_are_used_by_name():
    batch = _batch()

    @rl.ROW_BUILDERS.register("last_token_only", replace=True)
    def last_token_only(batch, *, family, settings, key):
        """Score only each completion's last token, everything masked (works in every layout)."""
        ro = batch.rollout
        N, G = ro.tokens.shape
        last = jnp.arange(G)[None] == (ro.lengths - 1)[:, None]
        return rows_lib.assemble(jnp.asarray(batch.prompts), jnp.asarray(batch.prompt_valid), ro.tokens,
                                 jnp.ones((N, G), bool), last, jnp.arange(N), jnp.zeros(N, jnp.int32),
                                 jnp.ones(N, bool), layout=family.layout(settings), mask_id=settings.mask_id)

    @adv_lib.ADVANTAGE_ESTIMATORS.register("sign", replace=True)
    def sign(inputs, *, gamma, lam):
        per_token = jnp.broadcast_to(jnp.sign(inputs.rewards)[:, None], inputs.step_ids.shape)
        return rows_lib.scatter(per_token, inputs.row_scored, inputs.sequence_ids), None

    for family in ("sdar", "dream"):
        fam = get_family(family)
        rows, completion = rl.build_policy_rows("last_token_only", batch, family=fam, settings=SETTINGS,
                                                key=jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(rows.scored).sum(1), [1, 1])
        adv, _ = rl.compute_advantages("sign", rl.advantage_inputs(rows, batch, completion, family=fam,
                                                                   settings=SETTINGS))
        np.testing.assert_array_equal(adv.sum(1), [1.0, -1.0])
    with pytest.raises(ValueError, match="unknown RL method 'nope'"):
        rl.build_policy_rows("nope", batch, family=get_family("sdar"), settings=SETTINGS, key=jax.random.key(0))


def test_a_registered_policy_loss_is_used_by_the_policy_step():
    from tracerl_jax.train.steps import PolicyLossConfig, policy_loss_fn

    @losses.POLICY_LOSSES.register("neg_logp_times_adv", replace=True)
    def reinforce(logp_new, logp_old, advantages, p_mask, **settings):
        loss = -jnp.sum(jnp.where(p_mask, logp_new * advantages, 0.0)) / jnp.maximum(jnp.sum(p_mask), 1)
        return loss, {"reinforce": loss}

    tok = tj.load_tokenizer("tasks")
    cfg = tj.get_preset("tiny").replace(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                        pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
    graphdef, params = tj.split_model(tj.init_model(cfg))
    batch = _batch()
    rows, _ = rl.build_policy_rows("TraceRL", batch, family=get_family("sdar"),
                                   settings=RowSettings(mask_id=tok.mask_id, pad_id=tok.pad_id, block_size=4),
                                   key=jax.random.key(0))
    R = rows.row_valid.shape[0]
    mb = {"rows": rows, "logp_old": jnp.zeros((R, 8)), "advantages": jnp.ones((R, 8)),
          "num_rows": jnp.ones((R,)), "L1_ref": jnp.full((R,), 8.0)}
    loss, metrics = policy_loss_fn(graphdef, PolicyLossConfig(name="neg_logp_times_adv"))(params, mb)
    logp = tj.trajectory_logprobs(graphdef, params, rows)
    scored = np.asarray(rows.scored)
    np.testing.assert_allclose(float(loss), -np.asarray(logp)[scored].mean(), rtol=1e-5)
    assert "reinforce" in metrics


def test_rows_helpers_and_bad_rows():
    batch = _batch()
    rows, _ = rl.build_policy_rows("TraceRL", batch, family=get_family("sdar"), settings=SETTINGS,
                                   key=jax.random.key(0))
    kept = rows_lib.select_rows(rows, jnp.arange(rows.row_valid.shape[0]) % 2 == 0)
    assert not np.asarray(kept.row_valid)[1::2].any() and not np.asarray(kept.p_mask)[1::2].any()
    only_first = rows_lib.restrict(rows, jnp.arange(8)[None].repeat(2, 0) == 0)
    assert np.asarray(only_first.scored).sum() == 2
    with pytest.raises(ValueError, match=r"rows.read_index must have shape"):
        rows_lib.check_rows(rows._replace(read_index=rows.read_index[:, :3]))
    with pytest.raises(ValueError, match="expected tracerl_jax.rows.Rows"):
        rows_lib.check_rows(tuple(rows))
    with pytest.raises(ValueError, match="prompt_ids must hold integers"):
        tj.build_rows(np.zeros((1, 3)), np.ones((1, 3), bool), np.ones((1, 4), int), np.ones((1, 4), int),
                      np.array([4]), block_size=4, mask_id=MASK, pad_id=PAD)
    with pytest.raises(ValueError, match="exactly one of layout"):
        tj.build_rows(np.ones((1, 3), int), np.ones((1, 3), bool), np.ones((1, 4), int), np.ones((1, 4), int),
                      np.array([4]), mask_id=MASK, pad_id=PAD)
