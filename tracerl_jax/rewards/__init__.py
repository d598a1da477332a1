"""Verifiable rewards: math answers judged by math-verify, code run in a sandbox (§7).

Math::

    results = score_math(responses, gold_answers, extract="boxed",
                         max_tokens=max_tokens, response_lengths=lengths)
    x = [r.reward for r in results]            # 0/1 per response

Code::

    tasks = [CodeTask("function", tests=("assert f(1) == 2",))] * len(responses)
    results = score_code(responses, tasks)     # runs in a LocalSandbox
    x = [r.reward for r in results]            # pass counts (Q-R4)

Programs run through an `Executor`: `LocalSandbox` here, or `HTTPExecutor` against a service
started with `serve_sandbox`.
"""

from tracerl_jax.rewards.code_reward import (
    NO_CODE_SENTINEL,
    CodeResult,
    CodeTask,
    extract_code,
    make_job,
    score_code,
)
from tracerl_jax.rewards.executor import ExecJob, ExecResult, Executor, outputs_match
from tracerl_jax.rewards.math_reward import (
    NO_ANSWER_SENTINEL,
    Judgement,
    MathJudge,
    MathResult,
    extract_answer,
    extract_boxed,
    extract_gsm8k,
    score_math,
)
from tracerl_jax.rewards.remote import HTTPExecutor, SandboxServer, serve_sandbox
from tracerl_jax.rewards.sandbox import LocalSandbox, SandboxConfig

__all__ = [
    "NO_ANSWER_SENTINEL",
    "NO_CODE_SENTINEL",
    "CodeResult",
    "CodeTask",
    "ExecJob",
    "ExecResult",
    "Executor",
    "HTTPExecutor",
    "Judgement",
    "LocalSandbox",
    "MathJudge",
    "MathResult",
    "SandboxConfig",
    "SandboxServer",
    "extract_answer",
    "extract_boxed",
    "extract_code",
    "extract_gsm8k",
    "make_job",
    "outputs_match",
    "score_code",
    "score_math",
    "serve_sandbox",
]
