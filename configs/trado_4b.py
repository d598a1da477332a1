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
