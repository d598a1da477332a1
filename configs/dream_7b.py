"""Dream-7B TraceRL with the reference full-attention settings (docs/algorithms.md §11.3), for accelerators.

configs/llada_8b.py with Dream's sampler settings (generation 1024 in 1024
steps, prefix cache horizon 32, top-p 0.9, top-k 50). Set model.init and
tokenizer to a local Hugging Face Dream-v0-Instruct-7B (or DiffuCoder-7B)
directory.

Memory (benchmarks/memory_plan.py --preset dream-7b, compiled for 8 devices, GiB per device): on
mesh (1, 8, 1) the policy step needs 28.4 and the sampler 43.4 (256 responses in one call): peak 43.4,
fits 8 x H100 80 GB; (1, 2, 4): peak 45.3.
"""

from configs import llada_8b


def get_config():
    c = llada_8b.get_config()
    c.workdir = "runs/dream_7b"
    c.model.init = "/path/to/Dream-v0-Instruct-7B"
    c.tokenizer = "/path/to/Dream-v0-Instruct-7B"
    c.mesh = (1, -1, 1)                           # FSDP over every device: peak 43.4 GiB on 8 (docstring)
    c.rollout.gen_length = 1024                   # max_gen_length
    c.rollout.steps = 1024                        # one token per step
    c.rollout.further_horizon = 32
    c.rollout.top_p = 0.9
    c.rollout.top_k = 50
    c.rollout.truncation_cap = 1024
    c.rollout.early_stop = None                   # Dream's default: stop a row after an all-PAD block
    return c
