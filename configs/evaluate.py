"""Evaluate a checkpoint on held-out problems (examples/evaluate.py).

Usage::

    python examples/evaluate.py --config=configs/evaluate.py --config.checkpoint=runs/sft_arithmetic/export
    python examples/evaluate.py --config=configs/evaluate.py:math500 --config.checkpoint=/ckpt/TraDo-4B-Instruct \
        --config.dtype=bfloat16
    python examples/evaluate.py --config=configs/evaluate.py:math500,static --config.checkpoint=...
    python examples/evaluate.py --config=configs/evaluate.py:smoke          # random tiny model, seconds
    python examples/evaluate.py --config=configs/evaluate.py:math500,llada --config.checkpoint=/ckpt/LLaDA-8B-Instruct
    python examples/evaluate.py --config=configs/evaluate.py:smoke --config.checkpoint=random:tiny-dream

Variants after the colon: the data (``arithmetic`` (default), ``sudoku4``,
``countdown``, ``codefn``, ``codefn_linear`` (configs/tracerl_codefn.py:linear's
task), ``math500``, ``gsm8k``, ``smoke``), optionally followed by ``,static``
for the reference's second evaluation setting, or ``,llada`` /
``,dream`` for the full-attention reference evaluation (§11.3: temperature
0.1, one token per step, blocks of 32 with a 512 / 1600-token canvas on
MATH500/GSM8K; Dream adds top_p 0.95, top_k 40).

The model family comes from the checkpoint: LLaDA/MMaDA and Dream/DiffuCoder
checkpoints (or ``random:tiny-llada``, ...) use the full-attention sampler,
with the full-attention knobs of ``config.sampler`` (block models reject
them).

Sampler settings are the reference evaluation's (docs/algorithms.md §11.2,
``evaluation.*`` of ``configs/rl_trado.yaml``): block size 4, 4 denoising
steps per block, temperature 1.0, top_p 1.0, dynamic threshold 0.9, no think
template, 3 responses per problem, at most 2000 new tokens. The reference
runs two evaluations as paired lists ``top_k: [0, 1]`` with
``remasking_strategy: [low_confidence_dynamic, low_confidence_static]``:
the default here is the first pair, ``,static`` the second (top_k 1 makes
it greedy). Built-in tasks have short answers, so their canvas is 32-48
tokens instead of 2000.
"""

import ml_collections
from ml_collections import config_dict


def get_config(variant: str = "arithmetic") -> ml_collections.ConfigDict:
    data_name, *mods = variant.split(",")
    c = ml_collections.ConfigDict()
    c.seed = 0  # sampling PRNG: response k uses fold_in(key(seed), k), whatever the batch size

    # --- model -----------------------------------------------------------
    # An examples/sft.py export dir (model_config.json + params/), a Hugging Face
    # TraDo/SDAR dir (config.json + *.safetensors), "random:<preset>" (an untrained
    # preset; for smoke tests) or "shipped:<name>" (tracerl_jax/assets/checkpoints/<name>).
    c.checkpoint = "shipped:arith_sft"
    c.tokenizer = ""  # "" = what the export recorded / the HF dir's own tokenizer / else "tasks"
    c.dtype = "float32"  # parameter dtype when loading HF safetensors (bfloat16 on accelerators)
    c.compute_dtype = config_dict.placeholder(str)  # activation dtype (None: the checkpoint\'s / dtype)

    # --- data (tracerl_jax.tasks.load_examples) ------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.name = "arithmetic"  # arithmetic | sudoku4 | countdown | codefn | math500 | gsm8k | reference (needs path)
    c.data.knobs = ml_collections.ConfigDict(dict(digits=2, operands=2, ops="+-"))  # built-in task knobs
    c.data.num = 256  # problems (built-in tasks: generated from the test split); <= 0: the whole data set
    c.data.seed = 0  # built-in task generator seed (the SFT config's task.seed gives the same test split)
    c.data.split = "test"  # built-in tasks: held-out problems are in the test split
    c.data.path = ""  # a JSON/JSONL file for name=reference (or to replace the shipped math500/gsm8k file)

    # --- sampler (docs/algorithms.md §1; reference eval settings, §11.2) ------------
    c.sampler = ml_collections.ConfigDict()
    c.sampler.block_size = 4  # b (evaluation.block_size)
    c.sampler.steps_per_block = 4  # denoising steps per block (evaluation.denoising_steps_per_block)
    c.sampler.gen_length = 32  # response canvas, a multiple of block_size (evaluation.max_token is 2000)
    c.sampler.strategy = "low_confidence_dynamic"  # remasking: sequential | low_confidence_static | low_confidence_dynamic
    c.sampler.threshold = 0.9  # dynamic strategy: commit tokens with confidence > threshold (at least one per step)
    c.sampler.temperature = 1.0  # 0 = greedy (evaluation.temperature)
    c.sampler.top_k = 0  # 0 = off; the reference pairs top_k 1 with the static strategy
    c.sampler.top_p = 1.0  # 1.0 = off (evaluation.top_p)
    c.sampler.compat = "recommended"  # recommended | reference (bit-for-bit reference quirks, §13.1, §13.2)
    # full attention only (LLaDA / Dream, §2; block models reject other values); strategy
    # low_confidence_dynamic is the threshold rule (>=) there
    c.sampler.steps = config_dict.placeholder(int)  # total denoising steps (None: steps_per_block per block)
    c.sampler.target = "confidence"  # selection score: confidence | margin_confidence | neg_entropy | random
    c.sampler.alg_temp = 0.0  # > 0: static positions drawn from softmax(score / alg_temp) (Dream)
    c.sampler.pad_target_penalty = 1.0  # a PAD candidate's score is divided by this (Dream; 1.0 = off)
    c.sampler.early_stop = config_dict.placeholder(bool)  # stop a row after an all-PAD block (None: Dream yes)
    c.sampler.use_cache = False  # prefix KV cache (Fast-dLLM, §2.2)
    c.sampler.further_horizon = config_dict.placeholder(int)  # with use_cache: positions seen after the block
    c.think = False  # use the think prompt template (evaluation.start_with_think)
    c.num_samples = 3  # responses per problem (evaluation.num_response_per_task)

    # --- execution ---------------------------------------------------------
    c.batch_size = 64  # sampler rows per call (fixed shape; the last batch is padded)
    c.prompt_buckets = ()  # prompt lengths (multiples of block_size) to group prompts by; () = one length
    c.warmup = True  # compile every prompt shape first (one extra batch each), so tokens/s excludes compilation
    c.output_dir = "runs/evaluate"  # generations.jsonl and summary.json are written here
    c.progress = True  # tqdm bar over sampler batches

    if data_name == "arithmetic":
        pass
    elif data_name in ("sudoku4", "countdown", "codefn"):  # the task's default knobs, as its RL recipe trains
        from tracerl_jax import tasks  # pylint: disable=g-import-not-at-top
        c.data.name = data_name
        # Spelled out so each can be changed from the command line (--config.data.knobs.templates=linear).
        c.data.knobs = ml_collections.ConfigDict(tasks.get_task(data_name).knobs)
        c.sampler.gen_length = 16 if data_name == "codefn" else 48
    elif data_name == "codefn_linear":  # configs/tracerl_codefn.py:linear's task
        from configs.tracerl_codefn import CODEFN_LINEAR_KNOBS  # pylint: disable=g-import-not-at-top
        c.data.name = "codefn"
        c.data.knobs = ml_collections.ConfigDict(CODEFN_LINEAR_KNOBS)
        c.sampler.gen_length = 16
    elif data_name in ("math500", "gsm8k"):
        c.checkpoint = ""  # required: a TraDo/SDAR HF directory or an export
        c.data.name = data_name
        c.data.knobs = ml_collections.ConfigDict()
        c.data.num = 0
        c.sampler.gen_length = 2000  # evaluation.max_token
        c.batch_size = 16
        c.prompt_buckets = (128, 256, 512, 1024)  # MATH500 prompts vary a lot in length
    elif data_name == "smoke":
        c.checkpoint = "random:tiny"
        c.tokenizer = "tasks"
        c.data.knobs = ml_collections.ConfigDict(dict(digits=1, operands=2, ops="+"))
        c.data.num = 4
        c.num_samples = 1
        c.sampler.gen_length = 8
        c.batch_size = 4
        c.output_dir = "/tmp/tracerl_jax_evaluate_smoke"
        c.progress = False
    else:
        raise ValueError(f"unknown data variant {data_name!r}; expected arithmetic, sudoku4, countdown, codefn, "
                         "codefn_linear, math500, gsm8k or smoke")
    for mod in mods:
        if mod == "static":  # the reference's second evaluation pair
            c.sampler.strategy = "low_confidence_static"
            c.sampler.top_k = 1
        elif mod in ("llada", "dream"):  # full-attention reference evaluation (§11.3)
            c.sampler.strategy = "low_confidence_static"
            c.sampler.temperature = 0.1
            c.num_samples = 1
            if data_name in ("math500", "gsm8k"):
                c.sampler.block_size = 32
                c.sampler.gen_length = 512 if mod == "llada" else 1600
            c.sampler.steps_per_block = c.sampler.block_size  # steps = gen_length: one token per step
            if mod == "dream":
                c.sampler.top_p, c.sampler.top_k = 0.95, 40
        else:
            raise ValueError(f"unknown variant modifier {mod!r}; expected 'static', 'llada' or 'dream'")
    return c
