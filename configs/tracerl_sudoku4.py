"""TraceRL on built-in 4x4 Sudoku (6 blanks) from an early-stopped block-SFT model, on a CPU.

The warm start is not shipped: make it first (about 15 minutes on 2 cores),

    python examples/sft.py --config=configs/sft.py:sudoku4 --config.model.preset=small \
        --config.num_steps=1500 --config.stop_at=115

which exports to runs/sft_sudoku4/export (the early stop leaves RL room:
greedy accuracy 0.062 at update 100, 0.453 at 115, 0.699 at 125, 0.812 at 150). Then

    python examples/tracerl.py --config=configs/tracerl_sudoku4.py
    python examples/tracerl.py --config=configs/tracerl_sudoku4.py --config.rl.method=coupled

Every other field is the CPU default's (configs/tracerl.py); the methods
differ only in rl.method / value.enabled, as on arithmetic.
"""

import ml_collections

from configs import tracerl


def get_config() -> ml_collections.ConfigDict:
    c = tracerl.get_config()
    c.workdir = "runs/tracerl_sudoku4"
    c.task.name = "sudoku4"
    c.task.knobs = ml_collections.ConfigDict(dict(blanks=6))  # empty cells; every puzzle has one solution
    c.prompt_len = 40               # "Solve the 4x4 sudoku (0 = blank): ..." is 37-40 tokens
    c.model.init = "runs/sft_sudoku4/export"
    c.rollout.gen_length = 40       # "Blanks: ... \boxed{16 digits}" is about 35 tokens with EOS
    c.rl.total_steps = 30
    return c
