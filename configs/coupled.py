"""Baseline: coupled RL (a random mask and its complement, §9.1) with the CPU default's budget."""

from configs import tracerl


def get_config():
    c = tracerl.get_config()
    c.workdir = "runs/coupled"
    c.rl.method = "coupled"
    return c
