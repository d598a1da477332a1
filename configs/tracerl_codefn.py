"""TraceRL on the built-in code task ``codefn`` from a block-SFT warm start, on a CPU.

Each prompt shows a small integer function by three examples (``Write f: f(1) = 3,
f(2) = 5, f(4) = 9.``); the response boxes its return expression (``\\boxed{2*x+1}``) and
the reward is 1 iff that runs through every hidden test in the library's sandbox
(tracerl_jax.tasks.codefn). The warm start is not shipped: make it first,

    python examples/sft.py --config=configs/sft.py:codefn

(the small model from the shipped block model's weights, stopped at update 600 of 1500 to leave
RL room), which exports to runs/sft_codefn/export. Then

    python examples/tracerl.py --config=configs/tracerl_codefn.py

A second recipe, ``configs/tracerl_codefn.py:linear``, trains on linear functions only with
coefficients in [-3, 3] (``CODEFN_LINEAR_KNOBS``), where a held-out function's slope and constant
each occur in training, only not together; TraceRL gains about +10 held-out points there in 80
steps where the five-template recipe gains nothing (docs/results.md, "Code"). Its warm start:

    python examples/sft.py --config=configs/sft.py:codefn_linear
    python examples/tracerl.py --config=configs/tracerl_codefn.py:linear

The step metrics time_reward (the sandbox's seconds in the step) and
reward_responses_per_s (responses scored per second; one program each, identical ones run
once) give the sandbox's throughput and, over time_step, its share of the RL step. Every
other field is the CPU default's (configs/tracerl.py).
"""

import ml_collections

from configs import tracerl

# The task's default family (linear, quadratic, mod, minmax, two-argument pair), three shown
# examples, four hidden tests; shared with the SFT variant so both train on one distribution.
CODEFN_KNOBS = dict(templates="linear,quadratic,mod,minmax,pair", max_coef=5, max_const=9, max_input=9,
                    shown=3, hidden=4)
# 114 linear functions a*x + b (|a| <= 3, |b| <= 9), 16 held out.
CODEFN_LINEAR_KNOBS = dict(CODEFN_KNOBS, templates="linear", max_coef=3)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = tracerl.get_config()
    c.workdir = "runs/tracerl_codefn"
    c.task.name = "codefn"
    c.task.knobs = ml_collections.ConfigDict(CODEFN_KNOBS)
    c.prompt_len = 52               # "Q: Write f: f(0, 6) = 11, f(1, 5) = 7, f(5, 3) = -5.\nA:" is <= 52 tokens
    c.model.init = "runs/sft_codefn/export"
    c.rollout.gen_length = 16       # "\boxed{-2*x+2*y-1}" is <= 12 tokens, 13 with EOS
    c.rl.total_steps = 40
    if variant == "linear":
        c.workdir = "runs/tracerl_codefn_linear"
        c.task.knobs = ml_collections.ConfigDict(CODEFN_LINEAR_KNOBS)
        c.model.init = "runs/sft_codefn_linear/export"
        # Held-out accuracy still rises between steps 40 and 80 (+8.5 -> +10.7 over four seeds).
        c.rl.total_steps = 80
    elif variant:
        raise ValueError(f"unknown codefn variant {variant!r}; expected '' (five templates) or 'linear'")
    return c
