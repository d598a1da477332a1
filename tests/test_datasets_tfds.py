"""Tests for the TFDS builders of tracerl_jax.tasks: prepare locally, read back, no TensorFlow."""

import importlib.util

import pytest

from tracerl_jax import tasks

tfds = pytest.importorskip("tensorflow_datasets")
HAS_TF = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name,reader", [("math500", tasks.load_math500),
                                         ("gsm8k", tasks.load_gsm8k)])
def test_shipped_sets_round_trip(data_dir, name, reader):
    source = tasks.load_tfds(name, "test", data_dir)
    want = reader()
    assert len(source) == len(want)
    # Order is kept (shuffling disabled), so item i is reader row i.
    assert list(source) == want
    assert source[-1] == want[-1] and source[2:4] == want[2:4]
    with pytest.raises(IndexError):
        source[len(want)]


def test_task_config_round_trip(data_dir):
    kw = dict(num_train=40, num_test=12, seed=5, digits=3, operands=3)
    train = tasks.load_tfds("arithmetic", "train", data_dir, **kw)
    test = tasks.load_tfds("arithmetic", "test", data_dir, **kw)
    task = tasks.get_task("arithmetic", digits=3, operands=3)
    assert list(train) == task.generate("train", 40, seed=5)
    assert list(test) == task.generate("test", 12, seed=5)
    # Prepared data is reused: opening without preparing gives the same rows.
    again = tasks.load_tfds("arithmetic", "test", data_dir, prepare=False, **kw)
    assert list(again) == list(test)
    # Verifiers work on what comes back.
    assert all(task.verify(e.solution, e) == 1.0 for e in train)


def test_task_configs_have_distinct_names():
    default = tasks.task_config("countdown")
    assert default.name == "countdown"
    custom = tasks.task_config("countdown", count=4)
    assert custom.name.startswith("countdown_") and custom.knobs["count"] == 4
    assert tasks.task_config("countdown", count=4).name == custom.name
    assert tasks.task_config("countdown", count=4, seed=1).name != custom.name
    with pytest.raises(ValueError, match="count must be in"):
        tasks.task_config("countdown", count=0)


def test_plain_tfds_api_without_tensorflow(data_dir):
    # The registered builders work through TFDS's own entry points, which
    # prepare in array_record by default here.
    kw = dict(num_train=20, num_test=8)
    tasks.load_tfds("sudoku4", "train", data_dir, **kw)  # prepares the custom config
    builder = tfds.builder("tracerl_task", data_dir=data_dir,
                           config=tasks.task_config("sudoku4", **kw))
    raw = builder.as_data_source(split="test")
    assert len(raw) == 8 and isinstance(raw[0]["question"], bytes)
    src = tfds.data_source("tracerl_math500", split="test", data_dir=data_dir, download=True)
    assert len(src) == 500
    from_dir = tfds.builder_from_directory(builder.data_dir).as_data_source(split="train")
    assert len(from_dir) == 20
    assert tasks.ExampleSource(from_dir)[0] == tasks.get_task("sudoku4").generate(
        "train", 1)[0]


@pytest.mark.skipif(HAS_TF, reason="documents behaviour without TensorFlow")
def test_tf_data_path_needs_tensorflow(data_dir):
    # Evidence for the module docstring of tracerl_jax.tasks.tfds_builders.
    builder = tasks.make_builder("math500", data_dir)
    builder.download_and_prepare()
    with pytest.raises(ModuleNotFoundError, match="tensorflow"):
        builder.as_dataset(split="test")


def test_bad_requests(data_dir):
    with pytest.raises(ValueError, match="unknown TFDS source 'mbpp'"):
        tasks.make_builder("mbpp", data_dir)
    with pytest.raises(ValueError, match="takes no config"):
        tasks.make_builder("gsm8k", data_dir, num_train=3)
    with pytest.raises(ValueError, match="has no split 'train'"):
        tasks.load_tfds("gsm8k", "train", data_dir)
