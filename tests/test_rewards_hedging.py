"""A policy cannot collect the reward by hedging (§7.1, Q-R6).

Families of adversarial responses with the score the library gives them and the score the
reference's last-box rule gives them (``compat="reference"``); the shared extraction functions
of `tracerl_jax.tasks.answers`; the built-in tasks' verifiers; and the shipped MATH500/GSM8K
gold answers, which must stay readable and unflagged.
"""

import dataclasses
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracerl_jax import evaluation, tasks
from tracerl_jax.rewards import MathJudge, extract_gsm8k, score_math
from tracerl_jax.tasks import Example
from tracerl_jax.tasks.answers import (
    boxed_answers,
    distinct_answers,
    extract_boxed,
    gsm8k_answers,
    is_disjunction,
    is_echo,
)


@pytest.fixture(scope="module")
def judge():
    with MathJudge(num_workers=2) as j:
        yield j


# A few-shot prompt: the exemplar's boxed answer (20) differs from this problem's (18).
EXEMPLAR = "Tom has 3 apples and buys 17 more, so he has 3+17=20 apples. The answer is \\boxed{20}."
PROMPT = f"Example: {EXEMPLAR}\n\nNow solve: Ann has 9 pens and buys 9 more. How many pens?"
# An exemplar whose boxed value happens to equal this problem's answer.
EXEMPLAR_18 = ("Tom has 9 apples and buys 9 more, so he has 9+9=18 apples. "
               "The answer is \\boxed{18}.")
PROMPT_18 = f"Example: {EXEMPLAR_18}\n\nNow solve: Ann has 9 pens and buys 8 more. How many pens?"
GSM8K_EXEMPLAR = "Q: Tom has 2 apples and gets 2 more. How many? A: 2+2=4\n#### 4"

# (id, response, gold, prompt, extract, library score, hedged, reference score)
CASES = [
    # Different boxes, either order: the reference takes whichever comes last.
    ("wrong_then_right", r"\boxed{20} or \boxed{18}", "18", None, "boxed", 0, True, 1),
    ("right_then_wrong", r"\boxed{18} or \boxed{20}", "18", None, "boxed", 0, True, 0),
    ("three_boxes", r"\boxed{17}, \boxed{19}, then \boxed{18}", "18", None, "boxed", 0, True, 1),
    ("all_wrong_boxes", r"\boxed{17} or \boxed{19}", "18", None, "boxed", 0, False, 0),
    ("nested_box", r"\boxed{20 \boxed{18}}", "18", None, "boxed", 0, False, 1),
    ("unclosed_after_right", r"\boxed{18} or maybe \boxed{20", "18", None, "boxed", 0, False, 0),
    # The same answer boxed again, also written differently.
    ("same_twice", r"So \boxed{18}. Check: \boxed{18}.", "18", None, "boxed", 1, False, 1),
    ("same_spacing", r"\boxed{18} and \boxed{ 18 }", "18", None, "boxed", 1, False, 1),
    ("same_value_forms", r"\boxed{\frac12}, i.e. \boxed{0.5}", r"\frac{1}{2}", None, "boxed", 1,
     False, 1),
    ("same_with_units", r"\boxed{5} so \boxed{5\text{ cm}}", "5", None, "boxed", 1, False, 1),
    ("empty_box_is_no_answer", r"I will write \boxed{} then \boxed{18}", "18", None, "boxed", 1,
     False, 1),
    # Alternatives inside one box.
    ("lor", r"\boxed{17 \lor 18}", "18", None, "boxed", 0, True, 1),
    ("vee", r"\boxed{17 \vee 18}", "18", None, "boxed", 0, True, 1),
    ("unicode_vee", "\\boxed{17 \u2228 18}", "18", None, "boxed", 0, True, 1),
    ("x_eq_lor", r"\boxed{x=17 \lor x=18}", "18", None, "boxed", 0, True, 1),
    ("text_or", r"\boxed{17 \text{ or } 18}", "18", None, "boxed", 0, True, 0),
    ("mathrm_or", r"\boxed{17 \mathrm{or} 18}", "18", None, "boxed", 0, True, 0),
    ("plain_or", r"\boxed{17 or 18}", "18", None, "boxed", 0, True, 0),
    ("either", r"\boxed{\text{either } 17 \text{ or } 18}", "18", None, "boxed", 0, True, 0),
    # A disjunction is allowed when the gold answer is one.
    ("gold_is_disjunction", r"\boxed{x=1 \text{ or } x=2}", r"x=1 \text{ or } x=2", None, "boxed",
     1, False, 1),
    # Lists, roots and sets are one answer, not alternatives.
    ("list_answer", r"\boxed{-2, 1}", "1,-2", None, "boxed", 1, False, 1),
    ("pm_answer", r"\boxed{1 \pm \sqrt{19}}", r"1 \pm \sqrt{19}", None, "boxed", 1, False, 1),
    # Prompt echo: a copied exemplar is not the model's answer.
    ("echo_wrong_then_own_right", f"{EXEMPLAR}\n\nAnn has 9+9=18 pens. \\boxed{{18}}", "18", PROMPT,
     "boxed", 1, False, 1),
    ("echo_only", EXEMPLAR_18, "18", PROMPT_18, "boxed", 0, False, 1),
    ("echo_right_then_own_wrong", f"{EXEMPLAR_18}\n\nAnn has 9+8=17 pens. \\boxed{{17}}", "18",
     PROMPT_18, "boxed", 0, False, 0),
    ("own_answer_matches_exemplar_value", "Ann: 9+9=18 pens, so \\boxed{18}.", "18", PROMPT_18,
     "boxed", 1, False, 1),
    # GSM8K format.
    ("gsm8k_two_values", "#### 17\n#### 18", "18", None, "gsm8k", 0, True, 1),
    ("gsm8k_same_line", "#### 17 #### 18", "18", None, "gsm8k", 0, True, 1),
    ("gsm8k_same_twice", "#### 18\nso\n#### 18.", "18", None, "gsm8k", 1, False, 1),
    ("gsm8k_same_value_forms", "#### 7000\n#### 7,000", "7000", None, "gsm8k", 1, False, 1),
    ("gsm8k_or", "#### 17 or 18", "18", None, "gsm8k", 0, True, 0),
    ("gsm8k_echo", f"{GSM8K_EXEMPLAR}\nOwn: 9+9=18\n#### 18", "18",
     f"{GSM8K_EXEMPLAR}\n\nQ: Ann has 9 pens and gets 9 more. How many?", "gsm8k", 1, False, 1),
]
IDS = [c[0] for c in CASES]


def _score(cases, judge, **kw):
    out = []
    for extract in ("boxed", "gsm8k"):
        sel = [c for c in cases if c[4] == extract]
        res = score_math([c[1] for c in sel], [c[2] for c in sel], prompts=[c[3] for c in sel],
                         extract=extract, judge=judge, **kw)
        out += list(zip(sel, res))
    return {c[0]: r for c, r in out}


@pytest.fixture(scope="module")
def library(judge):
    return _score(CASES, judge)


@pytest.fixture(scope="module")
def reference(judge):
    return _score(CASES, judge, compat="reference")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_library_scores(case, library):
    name, _, _, _, _, want, hedged, _ = case
    res = library[name]
    assert (res.reward, res.hedged) == (want, hedged), res
    if hedged:
        assert res.error.startswith("hedged: ")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_compat_keeps_the_last_answer_rule(case, reference):
    name, response, _, _, extract, _, _, want = case
    res = reference[name]
    assert res.reward == want and not res.hedged
    last = extract_boxed(response) if extract == "boxed" else extract_gsm8k(response)
    assert res.extracted == last
    assert res.answers == (() if last is None else (last,))


def test_result_fields(library):
    res = library["same_value_forms"]
    assert res.answers == (r"\frac12", "0.5") and res.extracted == "0.5"
    res = library["right_then_wrong"]
    assert res.answers == ("18", "20") and res.error == "hedged: several different answers"
    assert library["lor"].error == "hedged: an answer offers alternatives"
    # The exemplar's box is not among the response's answers.
    assert library["echo_wrong_then_own_right"].answers == ("18",)
    assert library["echo_only"].extracted is None and library["echo_only"].answers == ()


def test_many_answers_are_a_hedge(judge):
    response = " ".join(f"\\boxed{{{k}}}" for k in range(40))
    (res,) = score_math([response], ["3"], judge=judge)
    assert not res.correct and res.hedged and "more than 16" in res.error
    # Forty boxes of one value are one answer.
    (res,) = score_math([" ".join(["\\boxed{3}"] * 40)], ["3"], judge=judge)
    assert res.correct and res.answers == ("3",)


def test_callable_extractor_checks_disjunctions(judge):
    res = score_math(["ANSWER: 17 or 18", "ANSWER: 18"], ["18", "18"],
                     extract=lambda s: s.split(": ")[1], judge=judge)
    assert [(r.correct, r.hedged) for r in res] == [(False, True), (True, False)]
    res = score_math(["ANSWER: 17 or 18"], ["18"], extract=lambda s: s.split(": ")[1],
                     compat="reference", judge=judge)
    assert not res[0].hedged


def test_truncation_still_wins(judge):
    (res,) = score_math([r"\boxed{18} \boxed{20}"], ["18"], max_tokens=10, response_lengths=[9],
                        judge=judge)
    assert res.truncated and not res.correct and not res.hedged and res.answers == ("18", "20")


def test_bad_arguments(judge):
    with pytest.raises(ValueError, match="compat"):
        score_math(["a"], ["1"], compat="recommended", judge=judge)
    with pytest.raises(ValueError, match="prompts must have length 1"):
        score_math(["a"], ["1"], prompts=["p", "q"], judge=judge)
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        score_math(["a"], ["1"], prompts=[3], judge=judge)


# -- extraction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, prompt, expected", [
    (r"\boxed{1} then \boxed{\frac{1}{2}}", None, ["1", r"\frac{1}{2}"]),
    (r"\boxed{\left\{1, 2\right\}} \boxed{}", None, [r"\left\{1, 2\right\}", ""]),
    (r"\boxed{a{b{c}}d} tail \boxed{a{b{c}}d}", None, ["a{b{c}}d", "a{b{c}}d"]),
    (r"\boxed{1} and \boxed{2", None, []),  # unreadable, as extract_boxed gives None
    (r"\boxed{ \boxed{5}", None, []),
    (r"\boxed{\boxed{5}}", None, ["5"]),
    (r"\boxed{ \boxed{\boxed{x+1}} } \boxed{a \boxed{b}}", None, ["x+1", "a {b}"]),
    (r"\boxed 5", None, []),
    ("no box", None, []),
    # Echo: the box with the text before it is in the prompt.
    ("Adding them, the answer is \\boxed{20}. Mine: \\boxed{18}",
     "Ex: Adding them, the answer is \\boxed{20}.", ["18"]),
    # The box alone is in the prompt, its context is not: the model's own answer.
    ("Adding them up I get \\boxed{20}", "The answer is \\boxed{20}.", ["20"]),
    # Too little context before it to call it a copy.
    ("\\boxed{20}", "The answer is \\boxed{20}.", ["20"]),
    ("is \\boxed{20}. Mine: \\boxed{18}", "The answer is \\boxed{20}.", ["20", "18"]),
    ("\\boxed{18}", "Put the final answer in \\boxed{}.", ["18"]),
])
def test_boxed_answers(text, prompt, expected):
    assert boxed_answers(text, prompt) == expected


@pytest.mark.parametrize("text, expected", [
    ("a\nb\n#### 18", ["18"]),
    ("#### 1\n#### 70,000 \n", ["1", "70,000"]),
    ("#### 1 #### -3", ["1", "-3"]),
    ("#### 42.", ["42"]),
    ("######  5", ["5"]),
    ("####\n#### 7", ["7"]),
    ("####", []),
    ("no marker", []),
])
def test_gsm8k_answers(text, expected):
    assert gsm8k_answers(text) == expected
    assert (expected[-1] if expected else None) == extract_gsm8k(text) or "####\n" in text


@pytest.mark.parametrize("answer", [
    r"17 \lor 18", r"17 \vee 18", r"\bigvee", "17 \u2228 18", r"x=17 \lor x=18",
    r"17 \text{ or } 18", r"17 \text{or} 18", r"17 \mathrm{or} 18", "17 or 18", "17or18",
    "either 17", r"\text{Either}", "17 OR 18", "17 \u6216 18",
])
def test_is_disjunction(answer):
    assert is_disjunction(answer)


@pytest.mark.parametrize("answer", [
    "18", "1,-2", r"1 \pm \sqrt{19}", r"(0,9) \cup (9,36)", r"x \in [-2,7]", r"\text{Navin}",
    r"\text{for all } x", r"\overline{OR}", r"\operatorname{ord}", r"\veebar", "order", r"\wedge",
    r"\{1\pm\sqrt{5},-2\}", None, 17, b"or",
])
def test_not_disjunction(answer):
    assert not is_disjunction(answer)


def test_distinct_answers_and_is_echo():
    assert distinct_answers(["18", " 18 ", "", "  ", "1 8", "0.5", None, "18"]) == ["18", "0.5"]
    assert distinct_answers(None) == [] and distinct_answers(3) == []
    text = "and so the final answer is \\boxed{20}"
    start = text.index("\\boxed")
    assert is_echo(text, start, len(text), "Q. And so the final answer is \\boxed{20}.")
    assert not is_echo(text, start, len(text), "so the final answer is \\boxed{20}")  # shorter
    assert not is_echo(text, start, len(text), "and so the answer is \\boxed{20}")  # differs
    assert is_echo(text, start, len(text), "answer is \\boxed{20}", context=10)
    assert not is_echo(text[18:], start - 18, len(text) - 18, text)  # too little before it
    assert not is_echo(text, start, len(text), None)
    assert not is_echo(text, start, len(text) + 5, text)  # out of range
    assert not is_echo(None, 0, 1, "x") and not is_echo(text, "0", 3, text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}#o r 12\n")), max_size=80)
       | st.text(max_size=80), st.none() | st.text(max_size=40))
def test_extraction_never_raises(text, prompt):
    for fn in (boxed_answers, gsm8k_answers):
        out = fn(text, prompt)
        assert isinstance(out, list) and all(isinstance(a, str) for a in out)
    assert is_disjunction(text) in (True, False)
    # Every answer lies in the text (nested boxes lose their command).
    assert all(a in text or "{" in a for a in boxed_answers(text))
    assert boxed_answers(text, text) == []  # every box of a text is found in that text


def test_extraction_is_linear_on_hostile_nesting():
    t0 = time.monotonic()
    assert boxed_answers("\\boxed{" * 50_000 + "x" * 2_000_000) == []
    (deep,) = boxed_answers("\\boxed{" * 50_000 + "x" * 2_000_000 + "}" * 50_000)
    assert deep == "{" * (50_000 - 5) + "x" * 2_000_000 + "}" * (50_000 - 5)
    assert len(boxed_answers("\\boxed{1}" * 100_000, "p" * 100_000)) == 100_000
    assert len(gsm8k_answers("#### 1\n" * 100_000 + "#" * 1_000_000)) == 100_000
    assert time.monotonic() - t0 < 10


def test_non_strings_have_no_answers():
    for bad in (None, 3, b"\\boxed{1}", ["\\boxed{1}"]):
        assert boxed_answers(bad) == [] and gsm8k_answers(bad) == []
        assert boxed_answers("\\boxed{1}", bad) == ["1"]


# -- built-in task verifiers --------------------------------------------------------------------

def _with_exemplar(example, exemplar):
    return dataclasses.replace(example, question=f"Example: {exemplar}\n\n{example.question}")


def test_arithmetic_verifier_hedging():
    task = tasks.get_task("arithmetic")
    e = task.generate("test", 1, seed=3)[0]
    n = int(e.answer)
    cases = {
        f"\\boxed{{{n}}}": 1.0,
        f"\\boxed{{{n}}} = \\boxed{{{n}.0}} = \\boxed{{{n:,}}}": 1.0,  # one value, three forms
        f"\\boxed{{\\boxed{{{n}}}}}": 1.0,
        f"\\boxed{{{n + 1}}} or \\boxed{{{n}}}": 0.0,
        f"\\boxed{{{n}}} or \\boxed{{{n + 1}}}": 0.0,
        f"\\boxed{{{n} \\lor {n + 1}}}": 0.0,
        f"\\boxed{{{n + 1} \\text{{ or }} {n}}}": 0.0,
        f"\\boxed{{x}} \\boxed{{{n}}}": 0.0,  # an unreadable box is a different answer
    }
    for response, want in cases.items():
        assert task.verify(response, e) == want, response
    # A copied exemplar with another answer is not the model's own answer.
    exemplar = f"Compute 1+{n + 6}. Adding, 1+{n + 6}={n + 7}. \\boxed{{{n + 7}}}"
    echoed = _with_exemplar(e, exemplar)
    assert task.verify(f"{exemplar}\n\nNow: \\boxed{{{n}}}", echoed) == 1.0
    assert task.verify(f"{exemplar}\n\nNow: \\boxed{{{n}}}", e) == 0.0
    assert task.verify(exemplar, echoed) == 0.0


def test_countdown_verifier_hedging():
    task = tasks.get_task("countdown", count=3)
    e = dataclasses.replace(
        task.generate("train", 1)[0],
        meta={"numbers": [44, 19, 35], "target": 28, "ops": "+-*/", "task": "countdown"})
    cases = {
        "\\boxed{44+19-35}": 1.0,
        "\\boxed{44+19-35} i.e. \\boxed{44 + 19 - 35 = 28}": 1.0,
        "\\boxed{44+19-35} or \\boxed{19+44-35}": 1.0,  # two valid expressions: no wrong one
        "\\boxed{44+19+35} or \\boxed{44+19-35}": 0.0,
        "\\boxed{44+19-35} or \\boxed{44+19+35}": 0.0,
        "\\boxed{44-19-35} then \\boxed{44+19-35}": 0.0,  # the first does not parse to 28
        "\\boxed{44+19-35 \\lor 44*19}": 0.0,
        "\\boxed{44+19-35 \\text{ or } 1}": 0.0,
    }
    for response, want in cases.items():
        assert task.verify(response, e) == want, response
    exemplar = "Use 1, 2 once each to make 3. Answer: \\boxed{1+2}."
    echoed = _with_exemplar(e, exemplar)
    assert task.verify(f"{exemplar} Mine: \\boxed{{44+19-35}}", echoed) == 1.0
    assert task.verify(f"{exemplar} Mine: \\boxed{{44+19-35}}", e) == 0.0


def test_sudoku_verifier_hedging():
    task = tasks.get_task("sudoku4", blanks=6)
    e = task.generate("train", 1, seed=4)[0]
    grid = e.answer
    rows = " ".join(grid[i:i + 4] for i in range(0, 16, 4))
    other = grid[1] + grid[0] + grid[2:]
    cases = {
        f"\\boxed{{{grid}}}": 1.0,
        f"\\boxed{{{grid}}} i.e. \\boxed{{{rows}}}": 1.0,  # one grid, two spellings
        f"\\boxed{{{other}}} or \\boxed{{{grid}}}": 0.0,
        f"\\boxed{{{grid}}} or \\boxed{{{other}}}": 0.0,
        f"\\boxed{{{grid} \\lor {other}}}": 0.0,
        f"\\boxed{{{grid} or {other}}}": 0.0,
    }
    for response, want in cases.items():
        assert task.verify(response, e) == want, response
    exemplar = f"A solved grid for another puzzle: \\boxed{{{other}}}."
    echoed = _with_exemplar(e, exemplar)
    assert task.verify(f"{exemplar}\n\\boxed{{{grid}}}", echoed) == 1.0
    assert task.verify(f"{exemplar}\n\\boxed{{{grid}}}", e) == 0.0


# -- default_verifier passes the questions ------------------------------------------------------

def test_default_verifier_ignores_echoed_exemplars(monkeypatch):
    import functools

    import tracerl_jax.rewards as rewards

    monkeypatch.setattr(rewards, "score_math",
                        functools.partial(rewards.score_math, timeout_s=60.0))
    ex = Example(PROMPT, "18", "", {"task": "my_math", "kind": "math"})
    score = evaluation.default_verifier([ex])
    responses = [f"{EXEMPLAR}\n\nAnn has 9+9=18 pens. \\boxed{{18}}",  # echo, then own answer
                 r"\boxed{20} or \boxed{18}",
                 r"\boxed{17 \lor 18}",
                 r"So \boxed{18}."]
    assert score(responses, [ex] * 4, [0] * 4) == [1.0, 0.0, 0.0, 1.0]


# -- shipped gold answers -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["math500", "gsm8k"])
def test_shipped_golds_read_back_whole_and_unflagged(name):
    # test_rewards_math judges every gold against itself; this checks the default rule reads a
    # response boxing the gold, with the question as prompt, as exactly that one answer.
    examples = tasks.load_examples(name)
    assert len(examples) == {"math500": 500, "gsm8k": 1319}[name]
    for e in examples:
        assert not is_disjunction(e.answer), e.answer
        response = f"We simplify step by step. The final answer is $\\boxed{{{e.answer}}}$."
        assert distinct_answers(boxed_answers(response, e.question)) == [e.answer]
        assert gsm8k_answers(f"Reasoning.\n#### {e.answer}", e.question) == [e.answer]


def test_shipped_golds_score_one_through_default_verifier(monkeypatch):
    import functools

    import tracerl_jax.rewards as rewards

    monkeypatch.setattr(rewards, "score_math",
                        functools.partial(rewards.score_math, timeout_s=60.0))
    exs = tasks.load_examples("math500") + tasks.load_examples("gsm8k")
    score = evaluation.default_verifier(exs)
    right = [f"So the answer is \\boxed{{{e.answer}}}." for e in exs]
    rewards_ = score(right, exs, [0] * len(exs))
    assert [e.answer for e, r in zip(exs, rewards_) if r != 1.0] == []
