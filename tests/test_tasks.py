"""Tests for tracerl_jax.tasks: generators, splits, verifiers, registry."""

import dataclasses
import fractions
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracerl_jax import tasks
from tracerl_jax.tasks import countdown as cd
from tracerl_jax.tasks import sudoku4 as sk

# A spread of knob settings per task, easy to hard.
SETTINGS = [
    ("arithmetic", {}),
    ("arithmetic", dict(digits=1, operands=3, ops="+-")),
    ("arithmetic", dict(digits=4, operands=5)),
    ("sudoku4", dict(blanks=1)),
    ("sudoku4", {}),
    ("sudoku4", dict(blanks=12)),
    ("countdown", {}),
    ("countdown", dict(count=2, ops="+-")),
    ("countdown", dict(count=5, max_number=50, max_target=500)),
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}" for n, kw in SETTINGS]


@pytest.mark.parametrize("name,knobs", SETTINGS, ids=IDS)
def test_same_seed_same_data_other_seed_other_data(name, knobs):
    task = tasks.get_task(name, **knobs)
    a = task.generate("train", 40, seed=3)
    assert a == tasks.get_task(name, **knobs).generate("train", 40, seed=3)
    assert a != task.generate("train", 40, seed=4)
    # A longer request extends the same stream.
    assert task.generate("train", 60, seed=3)[:40] == a


@pytest.mark.parametrize("name,knobs", SETTINGS, ids=IDS)
def test_splits_disjoint_and_labelled(name, knobs):
    task = tasks.get_task(name, **knobs)
    train = task.generate("train", 300, seed=0)
    test = task.generate("test", 60, seed=0)
    train_keys = {task.canonical(e) for e in train}
    test_keys = {task.canonical(e) for e in test}
    assert len(train_keys) == len(train) and len(test_keys) == len(test)  # no duplicates
    assert not train_keys & test_keys
    # Disjointness does not depend on the seeds: a test problem is never a
    # train problem, whichever stream it came from.
    other = task.generate("train", 300, seed=7)
    assert not {task.canonical(e) for e in other} & test_keys
    for e in train:
        assert tasks.split_of(name, task.canonical(e)) == "train"
        assert e.meta["split"] == "train" and e.meta["task"] == name
        assert e.meta["kind"] == "math" and e.meta["knobs"] == task.knobs
    json.dumps([dict(e.meta) for e in train + test])  # meta must be JSON-able


@pytest.mark.parametrize("name,knobs", SETTINGS, ids=IDS)
def test_verifier_accepts_own_solution(name, knobs):
    task = tasks.get_task(name, **knobs)
    for e in task.generate("test", 50, seed=1):
        assert e.solution.endswith(f"\\boxed{{{e.answer}}}")
        assert tasks.extract_boxed(e.solution) == e.answer
        assert task.verify(e.solution, e) == 1.0
        assert tasks.verify(e.solution, e) == 1.0  # registry dispatch
        assert task.verify("no answer here", e) == 0.0
        assert task.verify(e.solution.replace("\\boxed{", "\\boxed"), e) == 0.0


def test_example_shapes():
    e = tasks.get_task("arithmetic", digits=2, operands=3).generate("train", 1)[0]
    assert e.question.startswith("Compute ") and e.question.endswith(".")
    # e.g. "53*76=4028, 4028*56=225568. \boxed{225568}": two steps, short.
    assert e.solution.count("=") == 2 and len(e.solution) < 60
    s = tasks.get_task("sudoku4", blanks=5).generate("train", 1)[0]
    assert len(s.answer) == 16 and set(s.answer) <= set("1234")
    assert s.meta["puzzle"].count("0") == 5
    assert sk.count_solutions([int(c) for c in s.meta["puzzle"]]) == 1
    c = tasks.get_task("countdown", count=4).generate("train", 1)[0]
    assert len(c.meta["numbers"]) == 4 and 1 <= c.meta["target"] <= 100


def test_arithmetic_precedence_and_answer_forms():
    value, steps = tasks.arithmetic.evaluate_steps([12, 34, 2, 5, 3], ["+", "*", "-", "*"])
    assert value == 12 + 34 * 2 - 5 * 3
    assert steps == ["34*2=68", "5*3=15", "12+68=80", "80-15=65"]
    e = tasks.get_task("arithmetic").generate("train", 1)[0]
    task = tasks.get_task("arithmetic")
    n = int(e.answer)
    for good in [f"\\boxed{{{n}}}", f"so \\boxed{{ {n} }}", f"\\boxed{{{n}.0}}",
                 f"\\boxed{{{n}}} i.e. \\boxed{{{n}.0}}", f"\\boxed{{{n:,}}}"]:
        assert task.verify(good, e) == 1.0, good
    # Every box counts (§7.1): a corrected earlier answer is still a second, different answer.
    for bad in [f"\\boxed{{{n + 1}}}", f"\\boxed{{{n}}} then \\boxed{{{n + 1}}}",
                f"\\boxed{{1}} wait \\boxed{{{n}}}",
                f"\\boxed{{{n}.5}}", f"\\boxed{{{n}", "", f"{n}"]:
        assert task.verify(bad, e) == 0.0, bad


def test_sudoku_verifier_checks_rules_and_givens():
    task = tasks.get_task("sudoku4", blanks=6)
    e = task.generate("train", 1)[0]
    grid = e.answer
    spaced = " ".join(grid[i:i + 4] for i in range(0, 16, 4))
    assert task.verify(f"\\boxed{{{spaced}}}", e) == 1.0
    assert task.verify(f"\\boxed{{{'/'.join(grid[i:i + 4] for i in range(0, 16, 4))}}}", e) == 1.0
    # Swapping two cells of a row keeps the row valid but breaks columns/givens.
    swapped = grid[1] + grid[0] + grid[2:]
    assert task.verify(f"\\boxed{{{swapped}}}", e) == 0.0
    assert task.verify(f"\\boxed{{{grid[:15]}}}", e) == 0.0          # too short
    assert task.verify(f"\\boxed{{{grid}1}}", e) == 0.0              # too long
    assert task.verify(f"\\boxed{{{e.meta['puzzle']}}}", e) == 0.0  # blanks left
    # A valid grid that ignores the givens is rejected.
    other = next(g for g in sk._all_grids() if "".join(map(str, g)) != grid)
    assert sk.is_solution(list(other), "0" * 16)
    assert task.verify("\\boxed{" + "".join(map(str, other)) + "}", e) == 0.0


def test_countdown_verifier():
    task = tasks.get_task("countdown", count=3)
    e = dataclasses.replace(
        task.generate("train", 1)[0],
        meta={"numbers": [44, 19, 35], "target": 28, "ops": "+-*/", "task": "countdown"})
    for good in ["\\boxed{44+19-35}", "\\boxed{(44 + 19) - 35}", "\\boxed{44-35+19=28}",
                 "\\boxed{28 = 19+44-35}", "\\boxed{$44+19-35$}", "\\boxed{44 + 19 \u2212 35}"]:
        assert task.verify(good, e) == 1.0, good
    for bad in ["\\boxed{44+19-35+0}",    # extra number
                "\\boxed{44+19}",         # number missing
                "\\boxed{44+19-35=29}",   # wrong claimed value
                "\\boxed{44+19+35}",      # wrong value
                "\\boxed{44+19--35}",     # unary minus
                "\\boxed{(44+19)**1-35}",  # power
                "\\boxed{__import__('os').system('true')}",
                "\\boxed{44+19-35 if 1 else 0}",
                "\\boxed{0x2c+19-35}", "\\boxed{4_4+19-35}",
                "\\boxed{44/(19-19)+35}", "\\boxed{" + "(" * 500 + "44" + ")" * 500 + "}"]:
        assert task.verify(bad, e) == 0.0, bad
    # Only the allowed operators count.
    plus_minus = dataclasses.replace(e, meta=dict(e.meta, ops="+-"))
    assert task.verify("\\boxed{44+19-35}", plus_minus) == 1.0
    e2 = dataclasses.replace(e, meta={"numbers": [6, 4, 3], "target": 8, "ops": "+-"})
    assert task.verify("\\boxed{6*4/3}", e2) == 0.0
    times_div = dataclasses.replace(e2, meta=dict(e2.meta, ops="*/"))
    assert task.verify("\\boxed{6*4/3}", times_div) == 1.0


def test_countdown_evaluate_exact_fractions():
    value, nums = cd.evaluate("(1+2)*3/(4-2)")
    assert value == fractions.Fraction(9, 2) and nums == [1, 2, 3, 4, 2]
    for bad in ["1+", "-1+2", "1 2", "a+1", "1//2", "1/0", "2**3", "(1+2", ""]:
        with pytest.raises(ValueError):
            cd.evaluate(bad)


_TREES = st.recursive(
    st.integers(1, 30),
    lambda sub: st.tuples(st.sampled_from("+-*/"), sub, sub), max_leaves=6)


def _value(tree):
    """Exact value of a tree, None if it divides by zero."""
    if isinstance(tree, int):
        return fractions.Fraction(tree)
    op, a, b = tree
    a, b = _value(a), _value(b)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


@settings(max_examples=200, deadline=None)
@given(_TREES)
def test_countdown_printer_keeps_meaning(tree):
    # The minimal-parentheses printer must never change an expression's value.
    want = _value(tree)
    text = cd._to_text(tree)
    if want is None:
        with pytest.raises(ValueError):
            cd.evaluate(text)
    else:
        assert cd.evaluate(text)[0] == want


_EXAMPLES = {name: tasks.get_task(name, **kw).generate("test", 3, seed=2)
             for name, kw in SETTINGS}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(_EXAMPLES)), st.integers(0, 2),
       st.text(max_size=80) | st.builds(lambda s: "\\boxed{" + s + "}", st.text(max_size=60)))
def test_verifiers_never_raise_on_untrusted_text(name, i, text):
    example = _EXAMPLES[name][i]
    assert tasks.verify(text, example) in (0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(_EXAMPLES)), st.integers(0, 2), st.data())
def test_corrupted_answer_rejected(name, i, data):
    example = _EXAMPLES[name][i]
    answer = example.answer
    digit_positions = [k for k, c in enumerate(answer) if c.isdigit()]
    k = data.draw(st.sampled_from(digit_positions))
    new = data.draw(st.sampled_from([d for d in "0123456789" if d != answer[k]]))
    corrupted = answer[:k] + new + answer[k + 1:]
    # Arithmetic: another number. Sudoku: a unit gets a repeated digit.
    # Countdown: one literal changes, so the multiset of numbers used does.
    assert tasks.verify(f"\\boxed{{{corrupted}}}", example) == 0.0


def test_verify_handles_non_strings():
    e = tasks.get_task("arithmetic").generate("test", 1)[0]
    assert tasks.verify(None, e) == 0.0
    assert tasks.verify(b"\\boxed{1}", e) == 0.0


def test_extract_boxed():
    assert tasks.extract_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert tasks.extract_boxed("\\boxed{{x}") is None
    assert tasks.extract_boxed("nothing") is None
    assert tasks.extract_boxed("\\boxed{}") == ""


@pytest.mark.parametrize("name,knobs,match", [
    ("nope", {}, "unknown task 'nope'"),
    ("arithmetic", dict(digits=0), "digits must be in"),
    ("arithmetic", dict(digits=2.5), "digits must be an int"),
    ("arithmetic", dict(operands=1), "operands must be in"),
    ("arithmetic", dict(ops="+/"), "ops may only contain"),
    ("arithmetic", dict(ops=""), "ops must be a non-empty"),
    ("arithmetic", dict(ops="++"), "repeated"),
    ("arithmetic", dict(digitz=2), "digitz"),
    ("sudoku4", dict(blanks=0), "blanks must be in"),
    ("sudoku4", dict(blanks=13), "blanks must be in"),
    ("countdown", dict(count=1), "count must be in"),
    ("countdown", dict(max_number=True), "max_number must be an int"),
])
def test_bad_knobs_raise_value_error(name, knobs, match):
    with pytest.raises(ValueError, match=match):
        tasks.get_task(name, **knobs)


def test_bad_generate_arguments():
    task = tasks.get_task("arithmetic")
    with pytest.raises(ValueError, match="split must be one of"):
        task.generate("validation", 3)
    with pytest.raises(ValueError, match="num must be"):
        task.generate("train", -1)
    with pytest.raises(ValueError, match="seed must be an int"):
        task.generate("train", 1, seed="0")
    # 1-digit a+b has 100 problems; asking for more must fail, not hang.
    with pytest.raises(ValueError, match="ran out of distinct"):
        tasks.get_task("arithmetic", digits=1, operands=2, ops="+").generate("train", 101)
    with pytest.raises(ValueError, match="not a registered task"):
        tasks.verify("x", tasks.Example("q", "a", "s", {"task": "math500"}))


def test_registry_extension():
    class Echo(tasks.Arithmetic):
        name = "echo_test_task"

    tasks.register_task("echo_test_task", Echo)
    assert "echo_test_task" in tasks.task_names()
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task("echo_test_task", Echo)


def test_split_fraction_and_stability():
    keys = [f"k{i}" for i in range(4000)]
    frac = sum(tasks.split_of("t", k) == "test" for k in keys) / len(keys)
    assert 0.1 < frac < 0.15
    assert tasks.get_task("arithmetic").generate("test", 1, seed=0)[0].question == \
        PINNED_FIRST_TEST_QUESTION


# The first arithmetic test question for seed 0 and default knobs; if this
# changes, generated data sets (and their splits) have changed.
PINNED_FIRST_TEST_QUESTION = "Compute 83+58."


def test_example_json_round_trip():
    e = tasks.get_task("countdown").generate("train", 1)[0]
    assert tasks.Example.from_json(e.to_json()) == e
    with pytest.raises(ValueError, match="malformed JSON"):
        tasks.Example.from_json("{")
    with pytest.raises(ValueError, match="missing fields"):
        tasks.Example.from_json('{"question": "q"}')


def test_generation_is_process_independent():
    # random.Random(str) hashes with SHA-512, so PYTHONHASHSEED cannot leak in.
    code = ("from tracerl_jax import tasks; import json; print(json.dumps(["
            "e.question for e in tasks.get_task('countdown').generate('train', 5, seed=9)]))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)},
                           check=True).stdout for h in (1, 2)}
    assert len(outs) == 1
    assert json.loads(outs.pop()) == [
        e.question for e in tasks.get_task("countdown").generate("train", 5, seed=9)]


@pytest.mark.parametrize("recipe,variant", [("tracerl_sudoku4", ""), ("tracerl_countdown", ""), ("tracerl_codefn", ""),
                                            ("tracerl_codefn", "linear")])
def test_task_recipes_fit_their_task(recipe, variant):
    """The RL recipe, its SFT variant and the evaluation variant share one task, and their lengths hold every prompt and answer of it."""
    import importlib

    from configs import evaluate, sft
    from tracerl_jax.rl.config import check_config
    from tracerl_jax.tokenizers import load_tokenizer

    cfg = importlib.import_module(f"configs.{recipe}").get_config(*([variant] if variant else []))
    check_config(cfg)
    name = cfg.task.name + (f"_{variant}" if variant else "")  # the SFT and evaluation variants' name
    s = sft.get_config(name)
    assert cfg.model.init == f"{s.workdir}/export"  # the recipe starts from its SFT variant's export
    task = tasks.get_task(cfg.task.name, **cfg.task.knobs.to_dict())
    assert tasks.get_task(s.task.name, **s.task.knobs.to_dict()) == task
    e = evaluate.get_config(name)  # examples/evaluate.py's variant scores the same task
    assert tasks.get_task(e.data.name, **e.data.knobs.to_dict()) == task
    assert e.sampler.gen_length >= cfg.rollout.gen_length
    tok = load_tokenizer(cfg.tokenizer)
    exs = task.generate("train", 2000, seed=0) + task.generate("test", 500, seed=1)
    prompts = [tok.encode(tok.chat_prompt(e.question)) for e in exs]
    answers = [tok.encode(e.solution) + [tok.eos_id] for e in exs]
    assert max(map(len, prompts)) <= cfg.prompt_len
    assert max(map(len, answers)) <= min(cfg.rollout.gen_length, s.gen_length)
    assert cfg.rollout.gen_length % cfg.rollout.block_size == 0
    assert all(3 not in ids for ids in prompts + answers)  # 3 is <unk> in the shipped tokenizer


def test_codefn_linear_recipe_is_the_measured_command_line():
    """configs/*:codefn_linear and tracerl_codefn.py:linear are the knob overrides docs/results.md's runs used."""
    from configs import sft, tracerl_codefn

    knobs = {"templates": "linear", "max_coef": 3}
    base, lin = sft.get_config("codefn"), sft.get_config("codefn_linear")
    base.task.knobs.update(knobs)
    base.stop_at = 300
    base.workdir = lin.workdir
    assert lin == base
    rl_base, rl_lin = tracerl_codefn.get_config(), tracerl_codefn.get_config("linear")
    rl_base.task.knobs.update(knobs)
    rl_base.rl.total_steps = 80
    rl_base.model.init, rl_base.workdir = rl_lin.model.init, rl_lin.workdir
    assert rl_lin == rl_base
    task = tasks.get_task("codefn", **rl_lin.task.knobs.to_dict())
    # 114 functions (a in [-3, 3] without 0, b in [-9, 9]), 16 held out and never shown in training.
    train = {task.split_key(e) for e in task.generate("train", 3000, seed=0)}
    test = {task.split_key(e) for e in task.generate("test", 400, seed=1)}
    assert (len(train), len(test), len(train & test)) == (98, 16, 0)
    with pytest.raises(ValueError, match="unknown codefn variant"):
        tracerl_codefn.get_config("quadratic")
