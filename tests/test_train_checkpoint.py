"""Orbax training checkpoints and exported models (tracerl_jax.train.checkpoint).

The cross-mesh test runs this file as a script in a subprocess with 8
simulated CPU devices (``python -m tests.test_train_checkpoint MODE DIR``):
the device count is fixed when JAX starts, so one process cannot hold both
layouts.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tracerl_jax.models import get_preset, init_model, split_model, value_model_from_policy
from tracerl_jax.train.checkpoint import (CheckpointManager, abstract_like, export_model, load_model,
                                          model_config_from_dict, model_config_to_dict, read_extra,
                                          read_model_config)
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import TrainState, init_train_state

ROOT = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny").replace(vocab_size=64, num_layers=1)


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_identical(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _filled(tree, seed: int):
    """``tree`` with every leaf replaced by seeded values of its shape and dtype.

    Fresh optimizer moments are all zeros, which any restore would "match";
    distinct values per leaf make a swapped or dropped leaf visible.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, x in enumerate(leaves):
        rng = np.random.default_rng([seed, i])
        if jnp.issubdtype(x.dtype, jnp.integer):
            out.append(jnp.asarray(rng.integers(0, 1000, np.shape(x)), x.dtype))
        else:
            out.append(jnp.asarray(rng.standard_normal(np.shape(x)), x.dtype))
    return jax.tree.unflatten(treedef, out)


def _train_state(seed: int = 1):
    """A tiny model's ``TrainState`` (AdamW moments included) with seeded values, and its optimizer."""
    _, params = split_model(init_model(TINY, seed=0))
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    return _filled(init_train_state(params, optimizer), seed), optimizer


# ---------------------------------------------------------------------------
# CheckpointManager
# ---------------------------------------------------------------------------


def test_round_trip_state_key_and_meta(tmp_path):
    state, _ = _train_state()
    rng = jax.random.key(7)
    rbg = jax.random.key(3, impl="rbg")  # a non-default key implementation must survive too
    meta = {"data": {"epoch": 2, "position": 17}, "config": {"lr": 1e-3, "name": "x", "mesh": [1, 1, 1]}}
    with CheckpointManager(tmp_path / "ckpt") as ckpt:
        assert ckpt.save(5, {"train": state, "rng": rng, "rbg": rbg}, meta=meta)
    with CheckpointManager(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() == 5
        assert ckpt.item_names(5) == {"train": "state", "rng": "state", "rbg": "state",
                                      "data": "meta", "config": "meta"}
        # The target is abstract (what a resumed run has before it loads anything).
        restored = ckpt.restore(target={"train": abstract_like(state), "rng": abstract_like(rng),
                                        "rbg": abstract_like(rbg)})
    assert restored.step == 5
    assert restored.meta == meta
    assert isinstance(restored.state["train"], TrainState)
    _assert_identical(restored.state["train"], state)
    for name, key in (("rng", rng), ("rbg", rbg)):
        got = restored.state[name]
        assert got.dtype == key.dtype, name
        np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(key))
        # The restored key draws the same numbers as the saved one.
        np.testing.assert_array_equal(jax.random.uniform(got, (4,)), jax.random.uniform(key, (4,)))


def _keys(seed: int):
    """Typed keys nested in a pytree: both implementations, a batch of keys, beside a plain array."""
    return {"fry": jax.random.split(jax.random.key(seed), 8),
            "nested": {"rbg": jax.random.split(jax.random.key(seed + 1, impl="rbg"), 8),
                       "one": jax.random.key(seed + 2, impl="rbg")},
            "w": jnp.arange(3.0) + seed}


def _assert_same_keys(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        if jnp.issubdtype(w.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))
            bits = jax.vmap(jax.random.bits)
            np.testing.assert_array_equal(bits(g.reshape(-1)), bits(w.reshape(-1)))   # draws the same numbers
        else:
            np.testing.assert_array_equal(g, w)


def test_keys_nested_in_pytrees_are_stored_by_orbax(tmp_path):
    keys = _keys(3)
    with CheckpointManager(tmp_path) as ckpt:
        ckpt.save(1, {"keys": keys})
        restored = ckpt.restore(target={"keys": abstract_like(keys)})
    _assert_same_keys(restored.state["keys"], keys)
    # Orbax itself records the key implementations: a target-free read gives typed keys back.
    raw = ocp.StandardCheckpointer().restore(tmp_path / "1" / "keys")["item"]
    _assert_same_keys(raw, keys)


def test_item_names_come_from_orbax_step_metadata(tmp_path):
    with CheckpointManager(tmp_path) as ckpt:
        ckpt.save(1, {"train": {"w": jnp.zeros(2)}, "rng": jax.random.key(0)}, meta={"data": {"epoch": 0}})
        assert ckpt.item_names(1) == {"train": "state", "rng": "state", "data": "meta"}   # before close: waits
    # no item of our own besides the saved ones (the former "manifest")
    assert sorted(p.name for p in (tmp_path / "1").iterdir() if p.is_dir()) == ["data", "rng", "train"]
    handlers = ocp.CheckpointManager(tmp_path).metadata(1).item_handlers
    assert set(handlers) == {"train", "rng", "data"}


def test_steps_written_with_a_manifest_still_restore(tmp_path):
    """The layout before item kinds came from Orbax's metadata: a ``manifest`` item, keys as key data."""
    state = {"w": jnp.arange(6.0).reshape(2, 3)}
    rng, rbg = jax.random.key(7), jax.random.key(3, impl="rbg")
    meta = {"data": {"epoch": 2}}
    items = {"train": ocp.args.StandardSave({"item": state}),
             "rng": ocp.args.StandardSave({"item": jax.random.key_data(rng)}),
             "rbg": ocp.args.StandardSave({"item": {"k": jax.random.key_data(rbg)}}),
             "data": ocp.args.JsonSave(meta["data"]),
             "manifest": ocp.args.JsonSave({"train": "state", "rng": "state", "rbg": "state", "data": "meta"})}
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(4, args=ocp.args.Composite(**items))
    with CheckpointManager(tmp_path) as ckpt:
        assert ckpt.item_names(4) == {"train": "state", "rng": "state", "rbg": "state", "data": "meta"}
        restored = ckpt.restore(target={"train": state, "rng": abstract_like(rng), "rbg": {"k": rbg}})
    assert restored.meta == meta
    _assert_identical(restored.state["train"], state)
    _assert_same_keys(restored.state["rng"], rng)
    _assert_same_keys(restored.state["rbg"], {"k": rbg})


def test_reached_preemption_is_false_in_a_single_process(tmp_path):
    with CheckpointManager(tmp_path) as ckpt:
        assert [ckpt.reached_preemption(step) for step in range(5)] == [False] * 5


def test_reached_preemption_after_a_preemption_notice(tmp_path):
    # jax.distributed with one process starts the preemption sync manager; SIGTERM is the notice.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.test_train_checkpoint", "preemption", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    noticed, reached = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reached is not None and reached > noticed
    with CheckpointManager(tmp_path) as ckpt:
        assert ckpt.all_steps() == [reached]


def _preemption_side(directory: Path) -> None:
    """One-process ``jax.distributed`` run that sends itself SIGTERM at step 3, then saves at the sync step."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=1, process_id=0)
    noticed, reached = 3, None
    with CheckpointManager(directory) as ckpt:
        for step in range(600):
            if ckpt.reached_preemption(step):
                ckpt.save(step, {"x": jnp.full(2, float(step))}, force=True)
                reached = step
                break
            if step == noticed:
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    jax.distributed.shutdown()
    print(json.dumps([noticed, reached]))


def test_restore_selected_items_and_meta(tmp_path):
    state, _ = _train_state()
    with CheckpointManager(tmp_path) as ckpt:
        ckpt.save(1, {"train": state, "rng": jax.random.key(0)}, meta={"data": {"epoch": 0}, "config": {"a": 1}})
        restored = ckpt.restore(target={"train": state}, meta=["data"])
    assert set(restored.state) == {"train"}
    assert restored.meta == {"data": {"epoch": 0}}


def test_restore_on_empty_directory_is_none(tmp_path):
    with CheckpointManager(tmp_path / "fresh") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.all_steps() == []
        assert ckpt.restore(target={"x": jnp.zeros(3)}) is None


def test_latest_step_and_max_to_keep(tmp_path):
    with CheckpointManager(tmp_path, max_to_keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, {"x": jnp.full((3,), float(step))}, meta={"data": {"step": step}})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]
        assert ckpt.latest_step() == 3
        older = ckpt.restore(2, target={"x": jnp.zeros(3)})
    np.testing.assert_array_equal(older.state["x"], np.full(3, 2.0))
    assert older.meta == {"data": {"step": 2}}


def test_save_interval_unless_forced(tmp_path):
    with CheckpointManager(tmp_path, save_interval_steps=10, max_to_keep=None) as ckpt:
        assert ckpt.save(3, {"x": jnp.zeros(2)})  # the first save of a fresh run is always written
        assert ckpt.save(10, {"x": jnp.zeros(2)})
        assert not ckpt.save(13, {"x": jnp.zeros(2)})
        assert ckpt.save(17, {"x": jnp.ones(2)}, force=True)
        assert not ckpt.save(17, {"x": jnp.ones(2)})  # never overwrites a step
        ckpt.wait()
        assert ckpt.all_steps() == [3, 10, 17]


def test_missing_step_names_available_steps(tmp_path):
    with CheckpointManager(tmp_path) as ckpt:
        ckpt.save(4, {"x": jnp.zeros(2)})
        with pytest.raises(FileNotFoundError, match=r"step 9 .*available steps: \[4\]"):
            ckpt.restore(9, target={"x": jnp.zeros(2)})


def test_missing_directory_without_create(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        CheckpointManager(tmp_path / "nope", create=False)


def _saved(tmp_path, state):
    with CheckpointManager(tmp_path) as ckpt:
        ckpt.save(1, {"train": state}, meta={"data": {"epoch": 0}})
        ckpt.save(2, {"train": state}, meta={"data": {"epoch": 1}})
    return tmp_path


def test_corrupt_array_files_give_a_clear_error(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3)}
    d = _saved(tmp_path, state)
    for f in (d / "2" / "train").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # the OCDBT data files
            f.write_bytes(b"garbage")
    with CheckpointManager(d) as ckpt:
        with pytest.raises(ValueError, match=r"cannot restore items \[.*'train'\] of checkpoint step 2 in "):
            ckpt.restore(target={"train": state})
        # the older step is intact
        np.testing.assert_array_equal(ckpt.restore(1, target={"train": state}).state["train"]["w"], state["w"])


def test_incomplete_step_gives_a_clear_error(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3)}
    d = _saved(tmp_path, state)
    (d / "7").mkdir()  # e.g. a half-copied run directory
    with CheckpointManager(d) as ckpt:
        assert ckpt.latest_step() == 7
        with pytest.raises(ValueError, match=r"step 7 .* is incomplete or corrupt.*another step \(\[1, 2\]\)"):
            ckpt.restore(target={"train": state})
    shutil.rmtree(d / "2" / "train")  # an item deleted from a complete step
    with CheckpointManager(d) as ckpt:
        with pytest.raises(ValueError, match=r"checkpoint step 2 in "):
            ckpt.restore(2, target={"train": state})


def test_target_mismatch_and_unknown_items(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3)}
    d = _saved(tmp_path, state)
    with CheckpointManager(d) as ckpt:
        with pytest.raises(ValueError, match=r"step 2 .*\(2, 3\)"):
            ckpt.restore(target={"train": {"w": jnp.zeros((3, 2))}})
        with pytest.raises(ValueError, match=r"no such items \['policy'\]"):
            ckpt.restore(target={"policy": state})
        with pytest.raises(ValueError, match=r"no such items \['config'\]"):
            ckpt.restore(target={"train": state}, meta=["config"])


def test_bad_save_arguments(tmp_path):
    with CheckpointManager(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="used twice or reserved"):
            ckpt.save(1, {"a": jnp.zeros(2)}, meta={"a": 1})
        with pytest.raises(ValueError, match="used twice or reserved"):
            ckpt.save(1, {"manifest": jnp.zeros(2)})
        with pytest.raises(ValueError, match="meta item 'data' is not JSON-serialisable"):
            ckpt.save(1, {"a": jnp.zeros(2)}, meta={"data": {"x": object()}})
        assert ckpt.all_steps() == []


# ---------------------------------------------------------------------------
# Exported models
# ---------------------------------------------------------------------------


def test_export_load_round_trip_is_bit_exact(tmp_path):
    model = init_model(TINY, seed=3)
    graphdef, params = split_model(model)
    extra = {"tokenizer": "tasks", "block_size": 4}
    out = export_model(tmp_path / "export", params, TINY, extra=extra)
    assert read_model_config(out) == (TINY, False)
    assert read_extra(out) == extra
    cfg, graphdef2, params2 = load_model(out)
    assert cfg == TINY
    assert graphdef2 == graphdef
    _assert_identical(params2, params)
    # overrides change the config, not the weights
    cfg3, _, params3 = load_model(out, remat=True)
    assert cfg3 == TINY.replace(remat=True)
    _assert_identical(params3, params)


def test_export_load_value_model(tmp_path):
    vgraphdef, vparams = split_model(value_model_from_policy(init_model(TINY, seed=4)))
    vparams = _filled(vparams, 5)  # a trained (non-zero) value head
    out = export_model(tmp_path / "value", vparams, TINY, value_model=True)
    assert read_extra(out) == {}
    cfg, graphdef, params = load_model(out)
    assert read_model_config(out) == (TINY, True)
    assert graphdef == vgraphdef
    _assert_identical(params, vparams)


def test_model_config_dict_round_trip_and_bad_exports(tmp_path):
    d = model_config_to_dict(TINY)
    assert model_config_from_dict(json.loads(json.dumps(d))) == TINY
    with pytest.raises(ValueError, match=r"unknown fields \['hiden_size'\]"):
        model_config_from_dict({**d, "hiden_size": 3})
    with pytest.raises(FileNotFoundError, match="model_config.json is missing"):
        load_model(tmp_path)
    (tmp_path / "model_config.json").write_text(json.dumps({"model_config": d}))
    with pytest.raises(FileNotFoundError, match="missing params/"):
        load_model(tmp_path)
    # params of one model under the config of another
    export_model(tmp_path / "mixed", split_model(init_model(TINY))[1], TINY.replace(vocab_size=32))
    with pytest.raises(ValueError, match=r"params/ does not hold the parameters that model_config.json describes"):
        load_model(tmp_path / "mixed")


# ---------------------------------------------------------------------------
# Restoring under another mesh (1 device <-> 8 simulated devices)
# ---------------------------------------------------------------------------


def _run_on_8_devices(mode: str, directory: Path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.test_train_checkpoint", mode, str(directory)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_checkpoint_restores_under_a_different_mesh(tmp_path):
    state, _ = _train_state(seed=1)
    rng = jax.random.key(11)
    with CheckpointManager(tmp_path / "one_device") as ckpt:
        ckpt.save(1, {"train": state, "rng": rng, "keys": _keys(21)}, meta={"data": {"epoch": 3}})
    # 1 device -> (2, 2, 2) mesh; then the subprocess saves from a (1, 4, 2) mesh ...
    _run_on_8_devices("restore_then_save", tmp_path)
    # ... and that restores onto one device here.
    expected, _ = _train_state(seed=2)
    with CheckpointManager(tmp_path / "eight_devices") as ckpt:
        restored = ckpt.restore(target={"train": abstract_like(expected), "rng": rng, "keys": _keys(0)})
    assert restored.meta == {"data": {"epoch": 4}}
    _assert_same_keys(restored.state["keys"], _keys(31))   # saved split over 4 devices, read onto one
    _assert_identical(restored.state["train"], expected)
    np.testing.assert_array_equal(jax.random.key_data(restored.state["rng"]),
                                  jax.random.key_data(jax.random.key(12)))
    device = jax.devices()[0]
    assert all(x.sharding.device_set == {device} for x in jax.tree.leaves(restored.state["train"]))


def _eight_device_side(directory: Path) -> None:
    """Runs under 8 devices: restores the 1-device checkpoint sharded, saves a sharded one."""
    from jax.sharding import NamedSharding, PartitionSpec

    from tracerl_jax.train.sharding import make_mesh
    from tracerl_jax.train.step import state_shardings

    assert jax.device_count() == 8, jax.devices()
    state, optimizer = _train_state(seed=1)
    mesh = make_mesh(2, 2, 2)
    shardings = state_shardings(state, optimizer, mesh)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    # the batches of 8 keys split over 4 devices, the rest replicated
    key_target = abstract_like(_keys(0), jax.tree.map(
        lambda x: rows if x.shape == (8,) else NamedSharding(mesh, PartitionSpec()), _keys(0)))
    target = {"train": abstract_like(state, shardings),
              "rng": jax.device_put(jax.random.key(0), NamedSharding(mesh, PartitionSpec())),
              "keys": key_target}
    with CheckpointManager(directory / "one_device") as ckpt:
        restored = ckpt.restore(target=target)
    assert restored.meta == {"data": {"epoch": 3}}
    _assert_identical(restored.state["train"], state)
    got = jax.tree.leaves(restored.state["train"])
    want = jax.tree.leaves(shardings)
    assert all(x.sharding == s for x, s in zip(got, want))
    # The layout is really distributed: some parameter is split into smaller shards.
    assert any(x.addressable_shards[0].data.shape != x.shape for x in got)
    assert restored.state["rng"].sharding.mesh.shape == mesh.shape
    np.testing.assert_array_equal(jax.random.key_data(restored.state["rng"]),
                                  jax.random.key_data(jax.random.key(11)))
    # Typed keys saved on one device come back split over (data, fsdp), each implementation intact.
    _assert_same_keys(restored.state["keys"], _keys(21))
    for got, want in zip(jax.tree.leaves(restored.state["keys"]), jax.tree.leaves(key_target)):
        assert got.sharding == want.sharding
    assert restored.state["keys"]["fry"].addressable_shards[0].data.shape == (2,)

    other = make_mesh(1, 4, 2)
    state2, _ = _train_state(seed=2)
    state2 = jax.device_put(state2, state_shardings(state2, optimizer, other))
    rng2 = jax.device_put(jax.random.key(12), NamedSharding(other, PartitionSpec()))
    with CheckpointManager(directory / "eight_devices") as ckpt:
        keys2 = jax.device_put(_keys(31), jax.tree.map(
            lambda x: NamedSharding(other, PartitionSpec("fsdp") if x.shape == (8,) else PartitionSpec()), _keys(31)))
        ckpt.save(1, {"train": state2, "rng": rng2, "keys": keys2}, meta={"data": {"epoch": 4}})


if __name__ == "__main__":
    mode, directory = sys.argv[1], Path(sys.argv[2])
    if mode == "restore_then_save":
        _eight_device_side(directory)
    elif mode == "preemption":
        _preemption_side(directory)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
