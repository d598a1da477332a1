"""Tests for the JSONL/JSON readers of tracerl_jax.tasks (MATH500, GSM8K, reference format)."""

import json

import pytest

from tracerl_jax import tasks
from tracerl_jax.tasks import readers


def test_math500_shipped():
    rows = tasks.load_math500()
    assert len(rows) == 500
    first = rows[0]
    assert first.question.startswith("Convert the point $(0,3)$")
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.meta["task"] == "math500" and first.meta["kind"] == "math"
    assert first.meta["index"] == 0 and first.meta["subject"] == "Precalculus"
    assert [r.meta["index"] for r in rows] == list(range(500))
    assert all(r.question and r.answer for r in rows)
    assert len({r.meta["unique_id"] for r in rows}) == 500


def test_gsm8k_shipped():
    rows = tasks.load_gsm8k()
    assert len(rows) == 1319
    first = rows[0]
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer == "18"
    # Calculator annotations gone, final answer boxed.
    assert "<<" not in first.solution and first.solution.endswith("\\boxed{18}")
    assert "16 - 3 - 4 = 9 duck eggs" in first.solution
    for r in rows:
        assert r.answer.lstrip("-").replace(".", "", 1).isdigit(), r.answer  # commas removed
        assert tasks.extract_boxed(r.solution) == r.answer


def test_gsm8k_answer():
    assert tasks.gsm8k_answer("a\nb\n#### 2,125") == "2125"
    assert tasks.gsm8k_answer("x #### 1 #### -3 ") == "-3"
    with pytest.raises(ValueError, match="####"):
        tasks.gsm8k_answer("no marker")


def test_shipped_files_found_through_package_resources():
    for name in ("math500", "gsm8k"):
        res = tasks.shipped_path(name)
        assert res.is_file()
        assert len(list(tasks.read_jsonl(res))) in (500, 1319)
    with pytest.raises(ValueError, match="no shipped data"):
        tasks.shipped_path("math500", "train")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_readers_take_explicit_paths(tmp_path):
    m = _write(tmp_path / "m.jsonl", [json.dumps({"problem": "1+1?", "answer": "2"}), "",
                                      json.dumps({"problem": "2+2?", "answer": "4",
                                                  "level": 1})])
    rows = tasks.load_math500(m)
    assert [(r.question, r.answer) for r in rows] == [("1+1?", "2"), ("2+2?", "4")]
    assert rows[1].meta["level"] == 1 and rows[0].solution == ""
    g = _write(tmp_path / "g.jsonl", [json.dumps({"question": "q", "answer": "#### 7"})])
    (row,) = tasks.load_gsm8k(str(g))
    assert row.answer == "7" and row.solution == "\\boxed{7}"


@pytest.mark.parametrize("loader", [tasks.load_math500, tasks.load_gsm8k, tasks.load_reference])
def test_missing_file(tmp_path, loader):
    with pytest.raises(ValueError, match="data file not found: .*nope.jsonl"):
        loader(tmp_path / "nope.jsonl")


def test_malformed_line_names_line_number(tmp_path):
    p = _write(tmp_path / "bad.jsonl", [json.dumps({"problem": "a", "answer": "1"}), "",
                                        '{"problem": "b", "answer": ', "{}"])
    with pytest.raises(ValueError, match=r"bad.jsonl:3: malformed JSON"):
        tasks.load_math500(p)
    p = _write(tmp_path / "list.jsonl", [json.dumps({"problem": "a", "answer": "1"}), "[1, 2]"])
    with pytest.raises(ValueError, match=r"list.jsonl:2: expected a JSON object, got list"):
        list(tasks.read_jsonl(p))


def test_missing_fields(tmp_path):
    p = _write(tmp_path / "m.jsonl", [json.dumps({"problem": "a"})])
    with pytest.raises(ValueError, match="record 0: missing string field 'answer'"):
        tasks.load_math500(p)
    p = _write(tmp_path / "g.jsonl", [json.dumps({"question": "a", "answer": "b"})])
    with pytest.raises(ValueError, match="record 0: GSM8K answer has no"):
        tasks.load_gsm8k(p)


REFERENCE_RECORDS = [
    {"question": "What is 1+1?", "ground_truth_answer": "2", "source": "toy"},
    {"question": "Write f(x) returning x+1.", "test_method": "function",
     "test_list": ["assert f(1) == 2", "assert f(0) == 1"], "prefix": "def f(x):\n"},
    {"question": "Read n, print n*2.", "test_method": "stdio",
     "test_input": ["3\n", "5\n"], "test_output": ["6\n", "10\n"]},
    {"question": "Default method", "test_list": ["assert True"]},
    {"question": "Numeric answer", "ground_truth_answer": 3},
]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_reference_format(tmp_path, fmt):
    p = tmp_path / f"toy.{fmt}"
    if fmt == "json":
        p.write_text(json.dumps(REFERENCE_RECORDS, indent=2), encoding="utf-8")
    else:
        _write(p, [json.dumps(r) for r in REFERENCE_RECORDS])
    math, func, stdio, default, numeric = tasks.load_reference(p)
    assert (math.question, math.answer, math.meta["kind"]) == ("What is 1+1?", "2", "math")
    assert math.meta["task"] == "toy" and math.meta["source"] == "toy"
    assert func.meta["kind"] == "code_function" and func.answer == ""
    assert func.meta["test_list"] == REFERENCE_RECORDS[1]["test_list"]
    assert func.meta["prefix"] == "def f(x):\n"
    assert stdio.meta["kind"] == "code_stdio" and stdio.meta["prefix"] == ""
    assert stdio.meta["test_input"] == ["3\n", "5\n"]
    assert stdio.meta["test_output"] == ["6\n", "10\n"]
    assert default.meta["test_method"] == "function"  # the reference's default
    assert numeric.answer == "3"
    assert [e.meta["index"] for e in (math, func, stdio, default, numeric)] == list(range(5))
    assert tasks.load_reference(p, name="custom")[0].meta["task"] == "custom"


def test_reference_format_errors(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps([{"ground_truth_answer": "1"}]))
    with pytest.raises(ValueError, match="record 0: missing string field 'question'"):
        tasks.load_reference(p)
    p.write_text(json.dumps([{"question": "q"}, {"question": "r"}]))
    with pytest.raises(ValueError, match="record 0: has neither 'ground_truth_answer'"):
        tasks.load_reference(p)
    p.write_text(json.dumps([{"question": "q", "test_list": [], "test_method": "repl"}]))
    with pytest.raises(ValueError, match="test_method must be"):
        tasks.load_reference(p)
    p.write_text('[{"question": "q",\n "ground_truth_answer": }]')
    with pytest.raises(ValueError, match=r"r.json:2: malformed JSON"):
        tasks.load_reference(p)
    p.write_text('[1]')
    with pytest.raises(ValueError, match="record 0 is not a JSON object"):
        tasks.load_reference(p)


def test_load_examples_dispatch(tmp_path):
    assert len(tasks.load_examples("math500")) == 500
    assert len(tasks.load_examples("gsm8k", num=10)) == 10
    gen = tasks.load_examples("sudoku4", "train", num=5, seed=1, blanks=3)
    assert gen == tasks.get_task("sudoku4", blanks=3).generate("train", 5, seed=1)
    p = _write(tmp_path / "r.jsonl", [json.dumps(REFERENCE_RECORDS[0])])
    assert tasks.load_examples("reference", path=p)[0].answer == "2"
    for kwargs, match in [
        (dict(name="gsm8k", split="train"), "ships only the 'test' split"),
        (dict(name="arithmetic"), "num is required"),
        (dict(name="math500", digits=2), "only apply to built-in tasks"),
        (dict(name="reference"), "path is required"),
        (dict(name="mbpp"), "unknown example source 'mbpp'"),
        (dict(name="math500", split="dev"), "split must be one of"),
        (dict(name="math500", num=-2), "num must be None or an int"),
    ]:
        with pytest.raises(ValueError, match=match):
            tasks.load_examples(**kwargs)


def test_readers_module_is_small_and_lazy():
    # Reading the shipped sets must not need TFDS (it is imported on demand).
    import subprocess
    import sys
    code = ("import sys; from tracerl_jax import tasks; tasks.load_gsm8k(); "
            "print('tensorflow_datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert readers.load_math500 is tasks.load_math500
