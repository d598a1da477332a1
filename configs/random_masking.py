"""Baseline: random-masking RL (§9.1) with the CPU default's rollout budget."""

from configs import tracerl


def get_config():
    c = tracerl.get_config()
    c.workdir = "runs/random_masking"
    c.rl.method = "random_masking"
    return c
