"""TraDo-4B TraceRL with the reference hyper-parameters (docs/algorithms.md §11.2), for accelerators.

Set model.init to a local Hugging Face TraDo/SDAR directory and tokenizer to
the same directory (its tokenizer.json). MATH training data: a reference-format
JSONL (question, ground_truth_answer) via task.name = "jsonl:<path>".
"""

from configs import tracerl


def get_config():
    c = tracerl.get_config()
    c.workdir = "runs/trado_4b"
    c.model.init = "/path/to/TraDo-4B-Instruct"   # HF directory (config.json + safetensors)
    c.model.remat = True                          # gradient checkpointing on (reference)
    c.model.scan_layers = True                    # 36 layers scanned: compiles like one layer
    c.model.param_dtype = "float32"               # float32 master weights
    c.model.dtype = "bfloat16"                    # bf16 compute, as the reference trains (mixed_precision bf16)
    c.rl.opt_state_dtype = "float32"              # float32 AdamW moments
    # Memory plan (python benchmarks/memory_plan.py --preset trado-4b --mesh 1,8,1; GiB per device):
    # policy step 23.8 (float32 weights + AdamW moments: 5.6 of it); the sampler needs 203.3 for the step's
    # 64 x 16 = 1024 responses in one call (128 rows per device) but 53.6 in calls of 32 rows per device,
    # so the step is sampled in chunks: peak 53.6 GiB, fits 8 x H100 80 GB (set
    # XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 on GPUs: JAX's default 0.75 leaves 60 GiB of the 80).
    c.rollout.rows_per_device = 32
    c.mesh = (1, -1, 1)                           # FSDP over every device
    c.tokenizer = "/path/to/TraDo-4B-Instruct"    # tokenizer.json of the checkpoint
    c.prompt_len = 784                            # training.max_prompt_len (bucketed to a block multiple)
    c.rollout.num_prompts = 64                    # rollout.num_task_per_step
    c.rollout.k = 16                              # rollout.num_response_per_task
    c.rollout.block_size = 4
    c.rollout.steps_per_block = 4
    c.rollout.gen_length = 2000                   # rollout.max_token (multiple of block size)
    c.rollout.strategy = "low_confidence_dynamic"
    c.rollout.threshold = 0.9
    c.rollout.temperature = 1.0
    c.rollout.group_filter = "range"              # math: keep groups with 0.2..0.8 accuracy
    c.rollout.truncation_cap = 2000               # math length penalty (rollout.max_token)
    c.task.name = "jsonl:/path/to/MATH_train.json"  # reference format: question, ground_truth_answer
    c.task.num_eval = 500                         # MATH500 (shipped) for evaluation
    c.rl.total_steps = 80
    c.rl.batch_rows_per_device = 32               # batch_size_lm 1 x GA 32 per device: 256 rows on 8 devices
    c.rl.grad_accum = 32                          # so each micro-batch holds one row per device
    c.rl.learning_rate = 1e-6
    c.rl.beta = 0.01
    c.rl.eps = 0.2
    c.rl.schedule = "constant"                    # "cosine_per_rl_step" reproduces the reference saw-tooth (Q-O1)
    c.eval.every = 10
    c.checkpoint.every = 10
    return c
