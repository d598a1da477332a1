"""The RL recipe: every field an RL run reads, its default (the CPU recipe) and what it means.

The default is a small block-diffusion model (the shipped ``arith_sft`` warm
start) on built-in arithmetic, on a CPU. ``configs/tracerl.py`` is this
recipe; the other recipes in ``configs/`` change some of its fields.
:func:`tracerl_jax.rl.build_run` checks and runs any of them.

Run:  python examples/tracerl.py                       (this config)
      python examples/tracerl.py --config.rl.total_steps=5 --config.workdir=/tmp/run
Variants: configs/tracerl_value.py (value model), configs/random_masking.py,
configs/coupled.py (baselines), configs/trado_4b.py / trado_8b.py (accelerators),
configs/tracerl_full.py (LLaDA / Dream full-attention models on a CPU).

The model family decides the sampler and the training rows: a block model
(SDAR/TraDo) uses the block sampler and the extended layout (§1, §4); a
LLaDA/MMaDA or Dream/DiffuCoder model (``model.init`` = an HF directory of
one, or ``random:tiny-llada`` ...) uses the full-attention sampler and the
single-sequence rows (§2, §5, §9.2). Fields marked "full attention" are
rejected (ValueError naming them) when set for a block model.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The default RL recipe (a fresh ``ConfigDict``; change fields before ``build_run``)."""
    c = ml_collections.ConfigDict()
    c.seed = 0                      # PRNG seed: rollouts, baseline masks, data order
    c.workdir = "runs/tracerl"      # checkpoints, metrics.jsonl, TensorBoard events, curves.png

    # ---- task and data -------------------------------------------------------------------
    c.task = ml_collections.ConfigDict()
    c.task.name = "arithmetic"      # built-in task (arithmetic | sudoku4 | countdown | codefn), math500, gsm8k, jsonl:<path>
    c.task.knobs = ml_collections.ConfigDict(dict(digits=2, operands=2, ops="+-"))  # difficulty
    c.task.num_train = 4000         # training prompts generated (train split)
    c.task.num_eval = 256           # held-out prompts (test split) for evaluation
    c.tokenizer = "tasks"           # shipped SentencePiece tokenizer, or a path
    c.prompt_len = 16               # padded prompt length L0 (prompts must fit; multiple of block_size)

    # ---- model -----------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.init = "shipped:arith_sft"  # "shipped:<name>", an HF directory, an Orbax SFT dir, or "random:<preset>"
    c.model.remat = False           # rematerialise each layer in the backward pass
    c.model.attention_impl = "dense"  # training attention: dense | blockwise (skips masked tiles) | splash (TPU)
    c.model.param_dtype = "float32"  # master weights (checkpoints load straight into it): float32 | bfloat16
    c.model.dtype = "float32"       # compute dtype of training and rollouts (bfloat16 on accelerators)
    c.model.scan_layers = False     # stack the decoder layers and scan them (compile time flat in depth)

    # ---- devices (data, fsdp, tensor); -1 = the devices the other axes leave -------------------------
    c.mesh = (-1, 1, 1)             # data parallel by default; FSDP/TP shard policy, value and optimizer state
    # Compile the step's programs ahead of time on abstract shapes (tracerl_jax.memory_plan) and stop with a
    # ValueError naming the setting to change if one needs more than device_memory_gib per device (None:
    # what the device reports; CPU reports nothing), before any weight is loaded.
    c.memory_plan = False
    c.device_memory_gib = config_dict.placeholder(float)

    # ---- rollout (docs/algorithms.md §1, §11.2 rollout.*) ----------------------------------------
    c.rollout = ml_collections.ConfigDict()
    c.rollout.num_prompts = 16      # prompts per RL step (num_task_per_step)
    c.rollout.k = 8                 # responses per prompt (num_response_per_task)
    c.rollout.block_size = 4        # b at generation AND training (may differ from the SFT block size)
    c.rollout.steps_per_block = 4   # denoising steps per block
    c.rollout.gen_length = 24       # response canvas (max new tokens; arithmetic solutions are <= 20)
    c.rollout.strategy = "low_confidence_dynamic"  # sequential | low_confidence_static | low_confidence_dynamic
    c.rollout.threshold = 0.9       # dynamic threshold (strict >)
    c.rollout.temperature = 1.0     # sampling temperature
    c.rollout.dtype = config_dict.placeholder(str)  # rollout compute dtype (None: model.dtype), e.g. bfloat16
    # rows per data x fsdp device in one sampler call (None: the step's num_prompts x k responses at once);
    # the sampler's KV cache grows with its rows, so large models sample a step in chunks of this size
    c.rollout.rows_per_device = config_dict.placeholder(int)
    # who decodes a step's responses: block = the block sampler, one lockstep batch (a row waits for the slowest
    # row of its block and keeps its place after EOS) | slots = the slot engine (sampling.engine: rollout.slots
    # responses at a time, a finished one's slot takes the next prompt); the same trajectories. block on CPU:
    # at this recipe's short answers the engine is not faster (benchmarks/README.md, "Slot engine"). On a mesh the
    # engine runs under global_sampler like the block sampler (same rollouts, tested on 2 CPU devices; not measured)
    c.rollout.engine = "block"
    c.rollout.slots = config_dict.placeholder(int)  # engine slots (None: the rows of a sampler call, at most 32)
    c.rollout.top_k = 0             # 0 = off
    c.rollout.top_p = 1.0           # 1.0 = off
    c.rollout.group_filter = "constant"  # none | constant (drop all-equal groups) | range (keep 0.2..0.8 acc)
    c.rollout.truncation_cap = ml_collections.config_dict.placeholder(int)  # math: len >= cap-5 scores 0 (§7.4)
    # full attention (LLaDA / Dream, §2, §11.3); strategy low_confidence_dynamic = threshold (>=) there
    c.rollout.steps = config_dict.placeholder(int)  # total denoising steps (None: steps_per_block in every block)
    c.rollout.target = "confidence"  # selection score: confidence | margin_confidence | neg_entropy | random
    c.rollout.alg_temp = 0.0        # > 0: static positions drawn from softmax(score / alg_temp) (Dream)
    c.rollout.pad_target_penalty = 1.0  # a PAD candidate's score is divided by this (Dream; 1.0 = off)
    c.rollout.early_stop = config_dict.placeholder(bool)  # stop a row after an all-PAD block (None: Dream yes)
    c.rollout.use_cache = False     # prefix KV cache (Fast-dLLM, §2.2; reference default true)
    c.rollout.further_horizon = config_dict.placeholder(int)  # with use_cache: positions seen after the block
    c.rollout.compat = "recommended"  # recommended | reference (Q-F1, Q-F3-Q-F5 quirks, §5 rows); block: recommended

    # ---- training (§4, §6, §8, §9) ----------------------------------------------------------
    c.rl = ml_collections.ConfigDict()
    c.rl.method = "TraceRL"         # training rows: TraceRL | random_masking | coupled (rl.ROW_BUILDERS)
    c.rl.loss = "ppo_clip"          # policy loss (losses.POLICY_LOSSES): PPO clip on trajectory log-probs (§6)
    c.rl.advantage = config_dict.placeholder(str)  # ADVANTAGE_ESTIMATORS name; None: step_gae/value, group/none
    c.rl.total_steps = 40           # RL steps
    c.rl.shrink = 1                 # decoding steps merged per training round (§4.2; full attention §5: 8 [REF])
    c.rl.post_num = 0               # PAD tokens trained per sequence (None disables the rule)
    # TraceRL, block models: C rounds of a response share one packed row [prompt | clean | C noised copies]
    # (the prompt and clean response run once, not C times; same loss and gradients). rl.batch_rows then
    # counts packed rows. None: one row per round.
    c.rl.pack_rounds = config_dict.placeholder(int)
    c.rl.batch_rows = 64            # rows per optimizer update (GA * micro_batch)
    c.rl.grad_accum = 2             # micro-batches per update (lax.scan inside the step)
    c.rl.batch_rows_per_device = ml_collections.config_dict.placeholder(int)  # if set: batch_rows = this x devices
    c.rl.eps = 0.2                  # PPO clip
    c.rl.beta = 0.01                # KL coefficient (against the pre-update policy unless a reference is set)
    c.rl.kl_estimator = "k3"        # k1 | k2 | k3
    c.rl.reference = "rollout"      # KL reference: rollout (the pre-update policy, [REF]) | initial (frozen copy)
    c.rl.old_logprobs = "trainer"   # trainer: recomputed by the training forward (ratio 1 at the first update,
                                    # [REF] §6.1) | rollout: the sampler's own (its dtype path, exactly)
    # policy-loss normaliser: None = the family's [REF] (block global_L1; full attention row_tokens, with
    # no log-ratio clamp and a summed KL, §6.4) | global_L1 | row_tokens | batch_tokens
    c.rl.normalizer = config_dict.placeholder(str)
    c.rl.lower_p = 0.1              # baselines: masking-ratio range
    c.rl.upper_p = 0.9
    c.rl.mask_ratio = config_dict.placeholder(str)  # baselines, block models: block (None) | row | token [REF];
                                    # full attention draws one ratio per row (None or row)
    c.rl.num_draws = 1              # baselines, full attention: rows per response (§9.2 mask_times_per_sample: 35)
    c.rl.learning_rate = 3e-5       # policy LR (1e-4+ destabilises the 4.8M CPU model; the reference uses 1e-6 for 4B/8B)
    c.rl.schedule = "constant"      # constant | cosine (over the RL steps) | cosine_per_rl_step [REF saw-tooth]
    c.rl.warmup = 0                 # RL steps of linear warm-up (constant | cosine): step k < warmup runs at
                                    # lr * (k + 1) / (warmup + 1)
    c.rl.min_lr_scale = 0.1         # cosine: final lr / peak lr, reached at rl.total_steps
    c.rl.max_grad_norm = 1.0
    c.rl.opt_state_dtype = "float32"  # AdamW moments (float32 | bfloat16); float32 with bf16 params = mixed precision

    # ---- value model (§8); enabled by value.enabled -------------------------------------------
    c.value = ml_collections.ConfigDict()
    c.value.enabled = False         # TraceRL + value model (step-level GAE)
    c.value.learning_rate = 1e-4    # value LR
    c.value.clip = 0.2              # value clip (separate from eps, Q-V2)
    c.value.gamma = 1.0             # GAE gamma
    c.value.lam = 1.0               # GAE lambda
    c.value.train_every = 1         # value update cadence in RL steps

    # ---- evaluation ----------------------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 10               # RL steps between evaluations (also before the first step and at the end)
    c.eval.batch_size = 128         # prompts per sampler call
    c.eval.strategy = "low_confidence_static"  # deterministic held-out metric
    c.eval.temperature = 0.0        # greedy decoding for evaluation
    c.eval.threshold = 0.9

    # ---- checkpoints --------------------------------------------------------------------------
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 10         # RL steps between Orbax checkpoints (and at the end)
    c.checkpoint.keep = 2           # checkpoints kept
    return c
