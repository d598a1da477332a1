"""The built-in code task ``codefn``: generation, splits, the sandboxed verifier, its configs."""

import ast
import json
import re

import numpy as np
import pytest

from tracerl_jax import evaluation, tasks
from tracerl_jax.tasks import codefn
from tracerl_jax.tokenizers import load_tokenizer

_CALL = re.compile(r"f\(([^)]*)\) = (-?\d+)")
_TEST = re.compile(r"assert f\(([^)]*)\) == (-?\d+)")


def _points(text, pattern):
    """``[(inputs tuple, output)]`` of the calls in a question or the hidden tests."""
    return [(tuple(int(v) for v in args.split(", ")), int(out)) for args, out in pattern.findall(text)]


def _py(expr, args, inputs):
    """The expression's value at ``inputs``, evaluated by this test on trusted generator output."""
    return eval(compile(ast.parse(expr, mode="eval"), "<expr>", "eval"), {"max": max, "min": min},
                dict(zip([a.strip() for a in args.split(",")], inputs)))


def test_registered_and_deterministic_per_seed():
    assert "codefn" in tasks.task_names()
    task = tasks.get_task("codefn")
    a = task.generate("train", 40, seed=3)
    assert a == tasks.get_task("codefn").generate("train", 40, seed=3)
    assert a != task.generate("train", 40, seed=4)
    assert task.generate("train", 60, seed=3)[:40] == a  # a longer request extends the stream


def test_splits_are_disjoint_by_function():
    task = tasks.get_task("codefn")
    train = task.generate("train", 400, seed=0)
    test = task.generate("test", 80, seed=0)
    other = task.generate("train", 400, seed=7)
    train_fns = {e.meta["expression"] for e in train + other}
    test_fns = {e.meta["expression"] for e in test}
    assert test_fns and not train_fns & test_fns  # no held-out function is ever trained on
    assert len({e.question for e in train}) == len(train)  # problems are distinct
    for e in train:
        assert tasks.split_of("codefn", e.meta["expression"]) == "train"
        assert e.meta["split"] == "train" and e.meta["task"] == "codefn" and e.meta["kind"] == "math"
    json.dumps([dict(e.meta) for e in train + test])


@pytest.mark.parametrize("knobs", [{}, dict(templates="pair", max_input=5, shown=2, hidden=3)])
def test_examples_are_consistent_and_hidden_inputs_not_shown(knobs):
    task = tasks.get_task("codefn", **knobs)
    exs = task.generate("train", 100, seed=1) + task.generate("test", 20, seed=1)
    for e in exs:
        shown = _points(e.question, _CALL)
        hidden = _points(" ".join(e.meta["tests"]), _TEST)
        assert len(shown) == task.shown and len(hidden) == task.hidden
        assert not {x for x, _ in shown} & {x for x, _ in hidden}
        assert e.solution == f"\\boxed{{{e.answer}}}" and e.answer == e.meta["expression"]
        for x, y in shown + hidden:  # the examples and the tests are the answer's values
            assert _py(e.answer, e.meta["args"], x) == y
    if not knobs:
        assert {e.meta["template"] for e in exs} == set(codefn.TEMPLATES)


def test_shown_examples_identify_the_function():
    # Whenever the shown points lie on a line with an allowed slope, the function is that line on
    # the hidden inputs too: "f(4) = -8, f(5) = -7, f(6) = -6" is never asked of x%4-8.
    task = tasks.get_task("codefn", templates="linear,mod,minmax")
    for e in task.generate("train", 300, seed=2):
        (x0, y0), (x1, y1), (x2, y2) = [(x[0], y) for x, y in _points(e.question, _CALL)]
        a, r = divmod(y1 - y0, x1 - x0)
        if r == 0 and a and abs(a) <= task.max_coef and y2 - y0 == a * (x2 - x0):
            assert all(y - y0 == a * (x[0] - x0) for x, y in _points(" ".join(e.meta["tests"]), _TEST)), e


def test_every_solution_passes_its_hidden_tests_in_the_sandbox():
    exs = tasks.get_task("codefn").generate("train", 50, seed=5)
    assert len({e.meta["template"] for e in exs}) == len(codefn.TEMPLATES)
    assert tasks.verify_batch([e.solution for e in exs], exs) == [1.0] * len(exs)
    # Another problem's solution fails (the same function twice is possible, hence "<").
    wrong = [exs[(i + 1) % len(exs)].solution for i in range(len(exs))]
    assert sum(tasks.verify_batch(wrong, exs)) < len(exs) / 2


def test_verifier_scores_bad_programs_zero():
    e = tasks.get_task("codefn", templates="linear").generate("test", 1, seed=0)[0]
    right = e.answer
    cases = {
        "box": (f"\\boxed{{{right}}}", 1.0),
        "repeated box": (f"\\boxed{{{right}}} so \\boxed{{ {right} }}", 1.0),
        "fenced program": (f"```python\ndef f(x):\n    return {right}\n```", 1.0),
        "wrong": (f"\\boxed{{{right}+1}}", 0.0),
        "hedged": (f"\\boxed{{{right}}} or \\boxed{{{right}+1}}", 0.0),
        "box and other program": (f"\\boxed{{{right}}}\n```python\ndef f(x):\n    return 0\n```", 0.0),
        "no answer": ("I do not know.", 0.0),
        "not an expression": ("\\boxed{import os}", 0.0),
        "statement injected": (f"\\boxed{{{right})\n    import os\n    return (0}}", 0.0),
        "unclosed box": (f"\\boxed{{{right}", 0.0),
        "no f": ("```python\ndef g(x):\n    return x\n```", 0.0),
        "prints junk": ("```python\ndef f(x):\n    print('junk')\n```", 0.0),
        "crashes": ("\\boxed{1//0}", 0.0),
        "never returns": ("```python\ndef f(x):\n    while True:\n        pass\n```", 0.0),
        "not text": (None, 0.0),
    }
    got = tasks.verify_batch([r for r, _ in cases.values()], [e] * len(cases))
    assert dict(zip(cases, got)) == {k: v for k, (_, v) in cases.items()}
    assert tasks.verify(f"\\boxed{{{right}}}", e) == 1.0


def test_candidates_are_built_without_running_anything():
    e = tasks.get_task("codefn", templates="pair").generate("train", 1, seed=0)[0]
    assert codefn.candidate_programs(f"\\boxed{{{e.answer}}}", e) == [
        f"def f(x, y):\n    return ({e.answer})\n"]
    many = " ".join(f"\\boxed{{x+{i}}}" for i in range(codefn.MAX_CANDIDATES + 1))
    assert codefn.candidate_programs(many, e) == []  # hedging: scored 0 unexecuted
    assert codefn.candidate_programs("\\boxed{" + "(" * 300 + "}", e) == []
    assert codefn.candidate_programs("\\boxed{x;y}", e) == []


def test_batches_mix_tasks_and_check_lengths():
    code = tasks.get_task("codefn").generate("test", 2, seed=0)
    arith = tasks.get_task("arithmetic").generate("test", 2, seed=0)
    exs = [code[0], arith[0], code[1], arith[1]]
    assert tasks.verify_batch([e.solution for e in exs], exs) == [1.0] * 4
    with pytest.raises(ValueError, match="equal length"):
        tasks.verify_batch(["x"], exs)
    with pytest.raises(ValueError, match="not a registered task"):
        tasks.verify_batch(["x"], [tasks.Example("q", "a", "s", {"task": "humaneval"})])


@pytest.mark.parametrize("knobs, match", [
    (dict(templates="linear,cubic"), "templates may only name"),
    (dict(templates=""), "templates must be a non-empty"),
    (dict(templates="linear,linear"), "templates has repeated"),
    (dict(max_coef=0), "max_coef must be in"),
    (dict(max_const=-1), "max_const must be in"),
    (dict(max_input=2), "max_input must be in"),
    (dict(shown=1), "shown must be in"),
    (dict(shown=2), "shown must be >= 3 with the quadratic"),
    (dict(hidden=0), "hidden must be in"),
    (dict(hidden=2.0), "hidden must be an int"),
    (dict(shown=5, hidden=6), "shown \\+ hidden"),
])
def test_bad_knobs_name_the_knob(knobs, match):
    with pytest.raises(ValueError, match=match):
        tasks.get_task("codefn", **knobs)


def test_rollout_reward_runs_the_sandbox_and_is_timed():
    import jax

    from tracerl_jax import rl
    from tracerl_jax.sampling.block_sampler import Rollout

    tok = load_tokenizer("tasks")
    exs = tasks.get_task("codefn").generate("train", 2, seed=0)
    k, G = 2, 16
    # A stand-in sampler whose responses are the worked solutions (one wrong per prompt).
    texts = [t for e in exs for t in (e.solution, "\\boxed{12345}")]

    def sample_fn(params, prompts, valid, rng=None, row_keys=None):
        tokens = np.full((len(texts), G), tok.pad_id, np.int32)
        lengths = np.zeros(len(texts), np.int32)
        for i, t in enumerate(texts):
            ids = tok.encode(t) + [tok.eos_id]
            tokens[i, :len(ids)], lengths[i] = ids, len(ids)
        z = np.zeros((len(texts), G), np.float32)
        return Rollout(tokens, (tokens != tok.pad_id).astype(np.int32), z, z, lengths, lengths)

    batch = rl.rollout_and_reward(sample_fn, None, tok, exs, k=k, prompt_len=52, rng=jax.random.key(0),
                                  score_fn=evaluation.default_verifier(exs), group_filter="none")
    np.testing.assert_array_equal(batch.scores, [[1.0, 0.0], [1.0, 0.0]])
    assert batch.score_seconds > 0.0


def test_sandbox_benchmark_checks_its_own_scores(tmp_path):
    """benchmarks/sandbox.py on a handful of programs: every solution passes in each sandbox, the
    step batch is scored as built, and the JSON has one row per variant with its program counts.
    Run as the script it is (its ``_common`` is the benchmarks' one, not examples')."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "sandbox.py"
    out = tmp_path / "sandbox.json"
    subprocess.run([sys.executable, str(script), "--programs", "4", "--prompts", "2", "--k", "3",
                    "--rounds", "2", "--out", str(out)], check=True, capture_output=True, text=True)
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"interpreter", "sandbox_w1", "verify_batch"} <= set(rows)
    assert rows["sandbox_w1"]["programs"] == 4
    assert 1 <= rows["verify_batch"]["programs"] <= 6  # distinct programs of 2 x 3 responses
    bad = subprocess.run([sys.executable, str(script), "--rounds", "1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "ValueError: " in bad.stderr and "--rounds >= 2" in bad.stderr
