"""LLaDA-8B TraceRL with the reference full-attention settings (docs/algorithms.md §11.3), for accelerators.

Set model.init and tokenizer to a local Hugging Face LLaDA-8B-Instruct
directory (config.json + safetensors + tokenizer.json). MATH training data:
a reference-format JSONL (question, ground_truth_answer) via task.name =
"jsonl:<path>". Every field is that of configs/tracerl.py; the family (from
the checkpoint) selects the full-attention sampler (§2) and the
single-sequence rows (§5).

Memory (benchmarks/memory_plan.py --preset llada-8b, compiled for 8 devices, GiB per device): on
mesh (1, 8, 1) (FSDP) the policy step needs 29.2 (float32 weights + AdamW: 11.2 of it) and the sampler
55.6 (the 256 responses of a step in one call, 32 rows per device): peak 55.6, fits 8 x H100 80 GB (set
XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 on GPUs); (1, 2, 4): peak 54.5.
"""

from configs import tracerl_full


def get_config():
    c = tracerl_full.get_config("llada")
    c.workdir = "runs/llada_8b"
    c.model.init = "/path/to/LLaDA-8B-Instruct"   # HF directory (config.json + safetensors)
    c.tokenizer = "/path/to/LLaDA-8B-Instruct"    # tokenizer.json of the checkpoint
    c.task.name = "jsonl:/path/to/MATH_train.json"  # reference format: question, ground_truth_answer
    c.task.num_eval = 500                         # MATH500 (shipped) for evaluation
    c.prompt_len = 512                            # training.max_prompt_len
    c.model.remat = True                          # gradient checkpointing
    c.model.scan_layers = True                    # 32 layers scanned: compiles like one layer
    c.model.param_dtype = "float32"               # float32 master weights
    c.model.dtype = "bfloat16"                    # bf16 compute (reference mixed_precision bf16)
    c.rl.opt_state_dtype = "float32"              # float32 AdamW moments
    c.mesh = (1, -1, 1)                           # FSDP over every device: peak 55.6 GiB on 8 (docstring)
    c.rollout.num_prompts = 32                    # num_task_per_step
    c.rollout.k = 8                               # num_response_per_task
    c.rollout.block_size = 32
    c.rollout.gen_length = 512                    # max_gen_length
    c.rollout.steps = 512                         # one token per step
    c.rollout.strategy = "low_confidence_static"  # remasking_strategy
    c.rollout.threshold = 0.95                    # dynamic_threshold (unused by the static rule)
    c.rollout.temperature = 0.8
    c.rollout.target = "confidence"
    c.rollout.use_cache = True                    # prefix KV cache (§2.2)
    c.rollout.further_horizon = 128
    c.rollout.group_filter = "range"              # math: keep groups with 0.2..0.8 accuracy
    c.rollout.truncation_cap = 512                # math length penalty (max_gen_length)
    c.rl.shrink = 8                               # training.shrink
    c.rl.num_draws = 35                           # baselines: mask_times_per_sample
    c.rl.batch_rows_per_device = 256              # batch_size_lm 2 x GA 128 per device
    c.rl.grad_accum = 128                         # so each micro-batch holds two rows per device
    c.rl.learning_rate = 1e-6
    c.rl.beta = 0.01
    c.rl.eps = 0.2
    c.rl.schedule = "constant"                    # "cosine_per_rl_step" reproduces the reference saw-tooth (Q-O1)
    c.rl.total_steps = 50
    c.eval.every = 10
    c.checkpoint.every = 10
    return c
