"""TFDS builders for MATH500, GSM8K and the built-in tasks, prepared locally.

Nothing is downloaded: the builders read the shipped JSONL files and run the
seeded task generators. Each record has ``index``, ``question``, ``answer``,
``solution`` (text) and ``meta`` (JSON text), kept in generation order.

What works without TensorFlow (tensorflow-datasets 4.9.10, array-record
0.8.6, etils 1.15; checked in ``tests/test_datasets_tfds.py``):

* Preparing with ``file_format="array_record"``: TFDS serialises the features
  itself and writes through ``array_record``. The builders here default to
  that format, so TFDS's own ``tfds.data_source(name, download=True)``
  prepares them correctly too.
* Reading through the random-access path: ``tfds.data_source``,
  ``builder.as_data_source`` and ``tfds.builder_from_directory(...)
  .as_data_source`` return an ``ArrayRecordDataSource`` that decodes records
  with NumPy only (text comes back as ``bytes``; ``ExampleSource`` turns
  records back into ``Example``).

What does not work without TensorFlow, and is therefore not used:

* Preparing in TFDS's default TFRecord format fails when the split is
  finalised: ``ModuleNotFoundError: Failed to finalize writing of split
  "test": No module named 'tensorflow'``.
* ``tfds.load`` and ``builder.as_dataset`` (the ``tf.data`` path) fail at
  once, because building the default ``ReadConfig`` calls
  ``tf.data.Options()``: ``ModuleNotFoundError: No module named
  'tensorflow'``.
* Random access to TFRecord data is refused: ``NotImplementedError: Random
  access data source for file format FileFormat.TFRECORD is not supported.``

Two more traps, unrelated to TensorFlow, that the builders work around:

* For a builder defined inside a package, ``DatasetBuilder.code_path``
  imports the ``importlib_resources`` backport, which nothing installs here
  (tfds requires it only below Python 3.9; etils 1.15's ``epath`` extra no
  longer pulls it in): ``ModuleNotFoundError: No module named
  'importlib_resources'`` on ``download_and_prepare``. ``code_path`` is
  overridden below.
* ``dataset_info_from_configs`` reads metadata files (README, citations)
  from the builder's directory; ``_info`` builds ``tfds.core.DatasetInfo``
  directly instead.

So TFDS itself is the path (array_record plus data sources); no lighter
fallback was needed. Importing ``tensorflow_datasets`` costs about 0.25 s,
which is why ``tracerl_jax.tasks`` loads this module on first use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Sequence
from typing import Any, Iterable

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from tracerl_jax.tasks.example import Example
from tracerl_jax.tasks.readers import load_gsm8k, load_math500
from tracerl_jax.tasks.registry import get_task, task_names

FILE_FORMAT = "array_record"
_VERSION = tfds.core.Version("1.0.0")
# Default sizes of the built-in task data sets.
DEFAULT_NUM_TRAIN = 5000
DEFAULT_NUM_TEST = 500


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "question": tfds.features.Text(),
        "answer": tfds.features.Text(),
        "solution": tfds.features.Text(),
        "meta": tfds.features.Text(),
    })


class _ExamplesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared features and record layout for the builders below."""

    VERSION = _VERSION
    DESCRIPTION = ""

    def __init__(self, *, file_format: str = FILE_FORMAT, **kwargs: Any):
        # TFDS defaults to TFRecord, which needs TensorFlow to write; defaulting
        # here makes plain `tfds.data_source(name, download=True)` work too.
        super().__init__(file_format=file_format, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup imports the `importlib_resources` backport for a
        # builder inside a package, and nothing installs it (see the module
        # docstring). The path only locates checksum/metadata files beside
        # the code, and there are none.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        # Order is kept so data_source[i] is the i-th example of the reader or
        # generator (the generators' order is itself seeded and meaningful).
        return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                     features=_features(), disable_shuffling=True)

    def _generate_examples(self, examples: Iterable[Example]):
        for i, ex in enumerate(examples):
            yield i, {"index": i, "question": ex.question, "answer": ex.answer,
                      "solution": ex.solution,
                      "meta": json.dumps(dict(ex.meta), sort_keys=True,
                                         ensure_ascii=False)}


class TracerlMath500(_ExamplesBuilder):
    """MATH500 test set (500 problems), from the shipped JSONL (MIT licence)."""

    name = "tracerl_math500"
    DESCRIPTION = "MATH500 (Lightman et al. 2023 subset of MATH), test split."

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"test": self._generate_examples(load_math500())}


class TracerlGsm8k(_ExamplesBuilder):
    """GSM8K test set (1319 problems), from the shipped JSONL (MIT licence)."""

    name = "tracerl_gsm8k"
    DESCRIPTION = "GSM8K (Cobbe et al. 2021), test split."

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"test": self._generate_examples(load_gsm8k())}


@dataclasses.dataclass(eq=False)
class TaskConfig(tfds.core.BuilderConfig):
    """Which built-in task to generate, with which knobs and sizes.

    Attributes:
      task: a name from ``task_names()``.
      knobs: the task's knobs.
      num_train: train-split size.
      num_test: test-split size.
      seed: generator seed (used for both splits).
    """

    task: str = ""
    knobs: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_train: int = DEFAULT_NUM_TRAIN
    num_test: int = DEFAULT_NUM_TEST
    seed: int = 0


def task_config(task: str, *, num_train: int = DEFAULT_NUM_TRAIN,
                num_test: int = DEFAULT_NUM_TEST, seed: int = 0,
                **knobs: Any) -> TaskConfig:
    """Builds a config; its name encodes everything that changes the data.

    Args:
      task: a built-in task name.
      num_train: train-split size.
      num_test: test-split size.
      seed: generator seed.
      **knobs: task knobs.

    Returns:
      A config named ``task`` for the defaults, ``task_<hash>`` otherwise, so
      different data never share a directory.

    Raises:
      ValueError: for an unknown task or bad knobs.
    """
    full = get_task(task, **knobs).knobs  # validates, fills defaults
    default = get_task(task).knobs
    name = task
    if (full, num_train, num_test, seed) != (default, DEFAULT_NUM_TRAIN,
                                             DEFAULT_NUM_TEST, 0):
        spec = json.dumps([full, num_train, num_test, seed], sort_keys=True)
        name = f"{task}_{hashlib.sha256(spec.encode()).hexdigest()[:10]}"
    return TaskConfig(name=name, task=task, knobs=full, num_train=num_train,
                      num_test=num_test, seed=seed,
                      description=f"{task} with knobs {full}, seed {seed}")


class TracerlTask(_ExamplesBuilder):
    """Built-in generated tasks; one config per task (defaults) or custom."""

    name = "tracerl_task"
    DESCRIPTION = "Procedurally generated verifiable tasks of tracerl_jax."
    BUILDER_CONFIGS = [task_config(t) for t in task_names()]

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        task = get_task(cfg.task, **cfg.knobs)
        return {
            "train": self._generate_examples(
                task.generate("train", cfg.num_train, cfg.seed)),
            "test": self._generate_examples(
                task.generate("test", cfg.num_test, cfg.seed)),
        }


def make_builder(name: str, data_dir: str, **config: Any) -> tfds.core.DatasetBuilder:
    """Returns the (unprepared) builder for a named source.

    Args:
      name: ``"math500"``, ``"gsm8k"`` or a built-in task name.
      data_dir: where TFDS keeps the prepared files.
      **config: for tasks, ``num_train``, ``num_test``, ``seed`` and knobs (see
        ``task_config``); nothing for the shipped sets.

    Returns:
      A builder that writes ``array_record`` files.

    Raises:
      ValueError: for an unknown name, or config given to a shipped set.
    """
    if name in ("math500", "gsm8k"):
        if config:
            raise ValueError(f"{name!r} takes no config, got {sorted(config)}")
        cls = TracerlMath500 if name == "math500" else TracerlGsm8k
        return cls(data_dir=data_dir)
    if name in task_names():
        cfg = task_config(name, **config)
        # TFDS refuses a custom config that shares a predefined config's name,
        # so the defaults are selected by name.
        return TracerlTask(data_dir=data_dir,
                           config=cfg.name if cfg.name == name else cfg)
    raise ValueError(f"unknown TFDS source {name!r}; known: math500, gsm8k, "
                     f"{', '.join(task_names())}")


class ExampleSource(Sequence):
    """Random access to prepared examples, decoded to :class:`Example`."""

    def __init__(self, source):
        """Wraps a TFDS data source of records written by these builders.

        Args:
          source: e.g. ``builder.as_data_source(split)``.
        """
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        return _decode(self._source[i % len(self)])


def _decode(record: dict[str, Any]) -> Example:
    def text(v) -> str:
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    return Example(question=text(record["question"]),
                   answer=text(record["answer"]),
                   solution=text(record["solution"]),
                   meta=json.loads(text(record["meta"])))


def load_tfds(name: str, split: str, data_dir: str, *, prepare: bool = True,
              **config: Any) -> ExampleSource:
    """Prepares (once) and opens a split as random-access examples.

    Args:
      name: ``"math500"``, ``"gsm8k"`` or a built-in task name.
      split: ``"test"`` (shipped sets) or ``"train"``/``"test"`` (tasks).
      data_dir: TFDS data directory.
      prepare: run ``download_and_prepare`` first (a no-op when already
        prepared); with False the data must exist.
      **config: task config, as for ``make_builder``.

    Returns:
      A sequence of examples in generation order.

    Raises:
      ValueError: for an unknown name or split.
    """
    builder = make_builder(name, data_dir, **config)
    if prepare:
        builder.download_and_prepare()
    if split not in builder.info.splits:
        raise ValueError(f"{name!r} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)}")
    return ExampleSource(builder.as_data_source(split=split))
