"""TraDo-8B TraceRL with the reference hyper-parameters (docs/algorithms.md §11.2), for accelerators."""

from configs import trado_4b


def get_config():
    c = trado_4b.get_config()
    c.workdir = "runs/trado_8b"
    c.model.init = "/path/to/TraDo-8B-Instruct"
    c.tokenizer = "/path/to/TraDo-8B-Instruct"
    # Memory plan (benchmarks/memory_plan.py --preset trado-8b; GiB per device): mesh 1,8,1 (8 GPUs):
    # policy step 36.4 (float32 weights + AdamW: 11.5 of it), sampler 56.7 in calls of 32 rows per device
    # (trado_4b's rollout.rows_per_device), fits 8 x H100 80 GB. TPU v5p-64 (--mesh 1,64,1 --topology
    # v5p:4x4x4, the TPU compiler's own plan): policy step 10.4, sampler 13.7 (16 rows per device, one call).
    return c
