"""SFT from scratch on a built-in task (examples/sft.py): block models, or LLaDA / Dream.

Usage::

    python examples/sft.py --config=configs/sft.py
    python examples/sft.py --config=configs/sft.py --config.num_steps=500 --config.model.preset=small
    python examples/sft.py --config=configs/sft.py:smoke       # seconds; for tests
    python examples/sft.py --config=configs/sft.py:llada       # full attention (configs/tracerl_full.py's warm start)

Variants after the colon: ``arithmetic`` (default), ``sudoku4``,
``countdown``, ``codefn`` / ``codefn_linear`` (configs/tracerl_codefn.py's and its ``:linear`` recipe's
warm starts), ``smoke`` (tiny model, a handful of steps), ``llada`` /
``dream`` (a ``small-llada`` / ``small-dream`` model on arithmetic started from the shipped block
model's weights, §10.2).
The model preset's family picks the SFT rows: ``model.preset=tiny-llada``
(or ``small-dream``, ...) is all it takes to train a full-attention model.
"""

import ml_collections
from ml_collections import config_dict


def _from_arith_sft(c: ml_collections.ConfigDict, eval_every: int) -> None:
    """The countdown / codefn warm starts: the small model from the shipped block model's weights.

    That model already writes "\\boxed{...}" and sums with this tokenizer. The 1500-update cosine stops at
    update 600, leaving RL room; checkpoints every 100 updates, so an earlier one can be exported too.
    """
    c.model.preset = "small"
    c.model.init = "shipped:arith_sft"
    c.stop_at = 600
    c.eval.every = eval_every
    c.checkpoint_every = 100
    c.max_to_keep = 10


def get_config(variant: str = "arithmetic") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # init, row masks and data order all derive from it
    c.workdir = "runs/sft_arithmetic"  # checkpoints/, metrics.jsonl, tensorboard/, export/
    c.tokenizer = "tasks"  # shipped 160-id SentencePiece model (or a path)

    # --- task ------------------------------------------------------------
    c.task = ml_collections.ConfigDict()
    c.task.name = "arithmetic"  # a built-in task: arithmetic | sudoku4 | countdown | codefn
    c.task.knobs = ml_collections.ConfigDict(dict(digits=2, operands=2, ops="+-"))  # task difficulty knobs
    c.task.num_train = 8000  # distinct training problems (train split)
    c.task.seed = 0  # problem-generator seed (train and held-out test splits are disjoint)

    # --- model -----------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    # tracerl_jax.models preset (tiny-llada, small-dream, ...: full attention); vocab/ids from the tokenizer
    c.model.preset = "tiny"
    # Start from a checkpoint instead of random init ("shipped:arith_sft", an export or HF dir); its family
    # may differ from the preset's (a block model's weights start a LLaDA/Dream-layout model of its shape).
    c.model.init = config_dict.placeholder(str)
    c.model.hidden_size = config_dict.placeholder(int)  # None keeps the preset's value (all below too)
    c.model.intermediate_size = config_dict.placeholder(int)  # SwiGLU width
    c.model.num_layers = config_dict.placeholder(int)  # decoder layers
    c.model.num_heads = config_dict.placeholder(int)  # query heads
    c.model.num_kv_heads = config_dict.placeholder(int)  # key/value heads (GQA)
    c.model.head_dim = config_dict.placeholder(int)  # per-head width
    c.model.max_position_embeddings = config_dict.placeholder(int)  # longest position
    c.model.tie_word_embeddings = config_dict.placeholder(bool)  # share embedding and LM head
    c.model.param_dtype = config_dict.placeholder(str)  # master weights: float32 (None) | bfloat16
    c.model.dtype = config_dict.placeholder(str)  # compute dtype: float32 | bfloat16
    c.model.remat = config_dict.placeholder(bool)  # rematerialise layers in the backward pass
    c.model.attention_impl = config_dict.placeholder(str)  # dense (None) | blockwise (skips masked tiles) | splash (TPU)

    # --- lengths -----------------------------------------------------------
    c.block_size = 4  # b: training mask blocks and sampler blocks (TraDo default)
    c.gen_length = 32  # sampler response canvas (a multiple of block_size)
    c.max_response_len = 0  # cut SFT responses to this many tokens (0: keep all)

    # --- SFT rows (docs/algorithms.md §10.1) -------------------------------------
    c.sft = ml_collections.ConfigDict()
    # block: semi-ar (random in-block masks) | trace (left-to-right rounds);
    # full attention (§10.2): semi-ar (groups of block_size) | random_masking | ar (Dream only)
    c.sft.method = "semi-ar"
    # semi-ar masking ratio: None = block [RECOMMENDED] (full attention: row) | token [REF] | row
    c.sft.ratio = config_dict.placeholder(str)
    c.sft.lower_p = 0.1  # masking threshold / ratio range
    c.sft.upper_p = 0.9
    c.sft.shrink = 1  # trace: merge this many steps of a block per row
    c.sft.num_draws = 1  # full-attention random_masking: masked copies per example (LLaDA 1, Dream 35 [REF])
    # Dream only: the first ar_steps updates train ar rows (next token under a causal mask, §10.2), then
    # sft.method's, with fresh Adam moments. A model carried over from unshifted weights learns Dream's
    # one-position shift from them.
    c.sft.ar_steps = 0
    c.sft.post_num = 0  # PAD tokens trained per response (0: only EOS marks the end); -1: all
    # loss normaliser: None = global_L1 [REF] (full attention: row_tokens [REF]) | batch_tokens
    c.sft.normalizer = config_dict.placeholder(str)

    # --- optimisation ------------------------------------------------------
    c.batch_size = 64  # examples per update (semi-ar: rows; trace: rows = examples * rounds)
    c.grad_accum = 1  # micro-batches per update (batch_size divisible by it)
    c.num_steps = 1500  # optimizer updates the learning-rate schedule spans
    c.stop_at = 0  # stop (evaluate, export) after this many updates; 0: num_steps
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-3  # peak AdamW learning rate
    c.optimizer.schedule = "cosine"  # constant | cosine
    c.optimizer.warmup = 100  # linear warm-up updates
    c.optimizer.min_lr_scale = 0.1  # final lr / peak lr (cosine)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.01
    c.optimizer.max_grad_norm = 1.0  # global-norm clip
    c.optimizer.state_dtype = config_dict.placeholder(str)  # Adam mu dtype (None: the params' dtype)

    # --- held-out evaluation (block sampler) -------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 250  # evaluate every this many steps (and at the end); 0: only at the end
    c.eval.num = 256  # held-out test problems
    c.eval.batch_size = 128  # sampler rows per call (fixed shape)
    c.eval.strategy = "low_confidence_static"  # remasking: low_confidence_static | low_confidence_dynamic | sequential
    c.eval.steps_per_block = 4  # denoising steps per block
    c.eval.threshold = 0.9  # dynamic strategy threshold
    c.eval.temperature = 0.0  # 0 = greedy
    c.eval.top_k = 0  # 0 = off
    c.eval.top_p = 1.0  # 1.0 = off
    # full attention only (LLaDA / Dream, §2; block models reject other values); strategy
    # low_confidence_dynamic is the threshold rule (>=) there
    c.eval.steps = config_dict.placeholder(int)  # total denoising steps (None: steps_per_block per block)
    c.eval.target = "confidence"  # selection score: confidence | margin_confidence | neg_entropy | random
    c.eval.alg_temp = 0.0  # > 0: static positions drawn from softmax(score / alg_temp)
    c.eval.pad_target_penalty = 1.0  # a PAD candidate's score is divided by this (1.0 = off)
    c.eval.early_stop = config_dict.placeholder(bool)  # stop a row after an all-PAD block (None: Dream yes)
    c.eval.use_cache = False  # prefix KV cache (§2.2)
    c.eval.further_horizon = config_dict.placeholder(int)  # with use_cache: positions seen after the block

    # --- bookkeeping -------------------------------------------------------
    c.log_every = 50  # training-metric cadence (JSONL + TensorBoard)
    c.checkpoint_every = 500  # Orbax checkpoint cadence (and at the end)
    c.max_to_keep = 2  # checkpoints kept
    c.export_hf = False  # also write HF safetensors to <workdir>/export/hf
    c.progress = True  # tqdm progress bars
    c.mesh = (1, 1, 1)  # (data, fsdp, tensor) device mesh; (1, 1, 1) = no mesh

    if variant == "arithmetic":
        pass
    elif variant == "sudoku4":
        c.workdir = "runs/sft_sudoku4"
        c.task.name = "sudoku4"
        c.task.knobs = ml_collections.ConfigDict()
        c.gen_length = 48
    elif variant == "countdown":
        c.workdir = "runs/sft_countdown"
        c.task.name = "countdown"
        c.task.knobs = ml_collections.ConfigDict()
        c.gen_length = 48
        # configs/tracerl_countdown.py's warm start, as measured in docs/results.md (held-out 0.22).
        _from_arith_sft(c, eval_every=100)
    elif variant in ("codefn", "codefn_linear"):
        # Small functions from three examples; the target is "\boxed{<return expression>}" (<= 12
        # tokens), the knobs those of configs/tracerl_codefn.py (its :linear recipe's for codefn_linear).
        from configs import tracerl_codefn  # pylint: disable=g-import-not-at-top
        c.workdir = "runs/sft_codefn"
        c.task.name = "codefn"
        c.task.knobs = ml_collections.ConfigDict(tracerl_codefn.CODEFN_KNOBS)
        c.gen_length = 16
        # configs/tracerl_codefn.py's warm start. The held-out pass rate is 0.02 at update 300 and about 0.1
        # from 400 (docs/results.md).
        _from_arith_sft(c, eval_every=50)
        if variant == "codefn_linear":
            c.workdir = "runs/sft_codefn_linear"
            c.task.knobs = ml_collections.ConfigDict(tracerl_codefn.CODEFN_LINEAR_KNOBS)
            # Held-out pass rate 0.086 at update 300 (0.012 at 100): a weak start with RL room.
            c.stop_at = 300
    elif variant in ("llada", "dream", "dream_semiar"):
        # configs/tracerl_full.py's warm start (its default model.init): the shipped block model's weights
        # carried into the LLaDA / Dream layout (models/transfer.py: the q/k norms dropped, Dream's biases at
        # zero), then full-attention semi-AR SFT so every forward is bidirectional over the whole
        # [prompt | 24-token response] canvas as the sampler sees it. Measured accuracies: docs/results.md
        # ("Full-attention models"). From scratch (--config.model.init= --config.sft.method=random_masking
        # --config.num_steps=1500 --config.stop_at=1000 --config.optimizer.schedule=cosine
        # --config.optimizer.learning_rate=1e-3 --config.batch_size=64) this model reached only 0.051 in
        # 1000 updates: random masking learns the answer format long before the sums.
        c.workdir = f"runs/sft_{variant}"
        c.model.preset = f"small-{variant.split('_')[0]}"
        c.model.init = "shipped:arith_sft"
        c.sft.method = "semi-ar"  # groups of block_size positions, left to right (§10.2)
        c.sft.post_num = -1  # train the PAD filler after EOS too: the sampler decodes the whole canvas
        c.gen_length = 24  # configs/tracerl_full.py's canvas
        c.batch_size = 16
        c.num_steps = 300
        c.optimizer.learning_rate = 3e-4
        c.optimizer.schedule = "constant"
        c.optimizer.warmup = 0
        c.eval.every = 50
        if variant == "dream":
            # Dream's logits at i score token i+1 (§2.4), so every prediction the block model learned sits
            # one position off. 200 updates of next-token (ar) rows teach the shift, then 300 semi-ar
            # updates the diffusion decoding, on a cosine schedule (semi-ar alone took 1000 updates).
            c.sft.ar_steps = 200
            c.num_steps = 500
            c.optimizer.schedule = "cosine"
            c.optimizer.warmup = 20
            c.eval.every = 100
        if variant == "dream_semiar":
            # The start TraceRL improves: semi-ar rows alone, 1000 constant-rate updates (about 30 CPU
            # minutes; 0.44 on the test problems). RL from the stronger two-stage start above (0.62) gained
            # 2 points at lr 1e-5 and lost points at 3e-5 in 30 steps (docs/results.md).
            c.num_steps = 1000
            c.eval.every = 250
        c.eval.num = 128
        c.log_every = 25
        c.export_hf = True
    elif variant == "smoke":
        c.workdir = "/tmp/tracerl_jax_sft_smoke"
        c.task.num_train = 64
        c.num_steps = 4
        c.batch_size = 8
        c.grad_accum = 2
        c.gen_length = 24
        c.eval.every = 0
        c.eval.num = 8
        c.eval.batch_size = 8
        c.log_every = 2
        c.checkpoint_every = 2
        c.optimizer.warmup = 1
        c.progress = False
    else:
        raise ValueError(f"unknown variant {variant!r}; expected arithmetic, sudoku4, countdown, codefn, codefn_linear, llada, dream, dream_semiar or smoke")
    return c
