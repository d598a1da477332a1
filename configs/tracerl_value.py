"""TraceRL + diffusion value model (step-level GAE, docs/algorithms.md §8) on the CPU default task."""

from configs import tracerl


def get_config():
    c = tracerl.get_config()
    c.workdir = "runs/tracerl_value"
    c.value.enabled = True   # value model initialised from the policy backbone, zero head
    return c
