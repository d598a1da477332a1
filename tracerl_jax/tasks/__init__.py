"""Built-in verifiable tasks and readers for problem sets.

Generators (seeded, disjoint train/test splits, verifiers that never raise)::

    task = get_task("arithmetic", digits=3, operands=3)
    train = task.generate("train", 1000, seed=0)
    reward = task.verify(model_output, train[0])
    rewards = verify_batch(outputs, examples)   # one call per task (codefn: one sandbox call)

Built-in tasks: ``arithmetic``, ``sudoku4``, ``countdown`` and ``codefn`` (a small Python
function from its examples, its hidden tests run in the sandbox; ``tasks.codefn``).

Readers (shipped MATH500/GSM8K test sets, the reference's JSON format)::

    math500 = load_math500()          # 500 examples
    gsm8k = load_gsm8k()              # 1319 examples

TFDS (array_record, no TensorFlow needed; loaded on first use)::

    source = load_tfds("countdown", "train", data_dir)
"""
from tracerl_jax.tasks.answers import (boxed_answers, distinct_answers,
                                       extract_boxed, gsm8k_answers,
                                       is_disjunction, is_echo, parse_int)
from tracerl_jax.tasks.arithmetic import Arithmetic
from tracerl_jax.tasks.base import Task
from tracerl_jax.tasks.codefn import CodeFunction
from tracerl_jax.tasks.countdown import Countdown
from tracerl_jax.tasks.example import Example
from tracerl_jax.tasks.readers import (gsm8k_answer, load_gsm8k, load_math500,
                                       load_reference, read_jsonl,
                                       shipped_path)
from tracerl_jax.tasks.registry import (get_task, register_task, task_names,
                                        verify, verify_batch)
from tracerl_jax.tasks.sources import load_examples
from tracerl_jax.tasks.splits import SPLITS, split_of
from tracerl_jax.tasks.sudoku4 import Sudoku4

# Importing tensorflow_datasets costs about a quarter of a second, so the TFDS
# names are resolved on first access.
_TFDS_NAMES = ("load_tfds", "make_builder", "task_config", "ExampleSource",
               "TracerlMath500", "TracerlGsm8k", "TracerlTask", "TaskConfig")


def __getattr__(name):
    if name in _TFDS_NAMES:
        from tracerl_jax.tasks import tfds_builders  # pylint: disable=g-import-not-at-top
        return getattr(tfds_builders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Arithmetic", "CodeFunction", "Countdown", "Example", "SPLITS", "Sudoku4", "Task",
    "boxed_answers", "distinct_answers", "extract_boxed", "get_task",
    "gsm8k_answer", "gsm8k_answers", "is_disjunction", "is_echo", "load_examples",
    "load_gsm8k", "load_math500", "load_reference", "parse_int",
    "read_jsonl", "register_task", "shipped_path", "split_of", "task_names",
    "verify", "verify_batch", *_TFDS_NAMES,
]
