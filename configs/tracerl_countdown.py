"""TraceRL on built-in Countdown (three numbers, + - * /, targets up to 100) from a block-SFT warm start, on a CPU.

Each prompt asks for an expression that uses three given numbers once each to reach a target
(``Use 21, 1, 11 once each with + - * / to make 31.``); the response lists its steps and boxes the
expression (``21-1=20, 20+11=31. \\boxed{21-1+11}``), and the reward is 1 iff the boxed expression
parses (``ast``, integer literals and ``+ - * /`` only), uses exactly those numbers and equals the target
(tracerl_jax.tasks.countdown). The warm start is not shipped: make it first,

    python examples/sft.py --config=configs/sft.py:countdown

(the small model from the shipped block model's weights, stopped at update 600 of 1500 to leave
RL room), which exports to runs/sft_countdown/export. Then

    python examples/tracerl.py --config=configs/tracerl_countdown.py

Every other field is the CPU default's (configs/tracerl.py).
"""

import ml_collections

from configs import tracerl


def get_config() -> ml_collections.ConfigDict:
    c = tracerl.get_config()
    c.workdir = "runs/tracerl_countdown"
    c.task.name = "countdown"
    c.task.knobs = ml_collections.ConfigDict()  # the task's defaults: 3 numbers <= 25, target <= 100
    c.prompt_len = 32               # "Q: Use 21, 1, 11 once each with + - * / to make 31.\nA:" is <= 31 tokens
    c.model.init = "runs/sft_countdown/export"
    c.rollout.gen_length = 36       # "21-1=20, 20+11=31. \boxed{21-1+11}" is <= 33 tokens with EOS
    c.rl.total_steps = 30
    return c
