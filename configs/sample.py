"""Sample completions from a checkpoint (examples/sample.py).

Usage::

    python examples/sample.py --config=configs/sample.py --config.checkpoint=runs/sft_arithmetic/export \
        --config.prompts="('Compute 12+7.', 'Compute 40-13.')" --config.trajectory=table
    python examples/sample.py --config=configs/sample.py:sudoku4 --config.checkpoint=... \
        --config.trajectory=frames           # no prompts given: the first data.num problems of the task
    python examples/sample.py --config=configs/sample.py:smoke             # random tiny model, seconds

Variants after the colon name the problems used when no prompts are given:
``arithmetic`` (default), ``sudoku4``, ``countdown``, ``math500``,
``gsm8k``; ``smoke`` is a random tiny model on two command-line-style
prompts. The sampler settings are the reference evaluation's
(docs/algorithms.md §11.2; see configs/evaluate.py), so what you see is what the
evaluation scores. LLaDA/Dream checkpoints (``random:tiny-llada``, an HF
LLaDA/Dream directory, ...) are sampled with the full-attention sampler and
its knobs below.
"""

import ml_collections
from ml_collections import config_dict


def get_config(variant: str = "arithmetic") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # sampling PRNG: completion k uses fold_in(key(seed), k)

    # --- model (same forms as configs/evaluate.py) ---------------------------
    c.checkpoint = "shipped:arith_sft"  # export dir | Hugging Face dir | random:<preset> | shipped:<name>
    c.tokenizer = ""  # "" = the checkpoint's own (export record / HF dir), else the shipped "tasks" one
    c.dtype = "float32"  # parameter dtype when loading HF safetensors
    c.compute_dtype = config_dict.placeholder(str)  # activation dtype (None: the checkpoint\'s / dtype)

    # --- prompts -------------------------------------------------------------
    c.prompts = ()  # questions, e.g. "('Compute 12+7.',)"; () = take data.num problems from `data`
    c.template = True  # wrap each question in the tokenizer's chat template of `kind` (False: feed it verbatim)
    c.kind = "math"  # prompt template for command-line questions: math | code_function | code_stdio
    c.think = False  # use the think template (reference start_with_think)
    c.data = ml_collections.ConfigDict()
    c.data.name = "arithmetic"  # used when prompts == (): a built-in task, math500, gsm8k or reference
    c.data.knobs = ml_collections.ConfigDict(dict(digits=2, operands=2, ops="+-"))  # built-in task knobs
    c.data.num = 4  # problems to sample
    c.data.seed = 0  # built-in task generator seed
    c.data.split = "test"  # built-in task split
    c.data.path = ""  # file for name=reference (or replacing a shipped data set)
    c.score = True  # print the verifier's reward for problems from `data`

    # --- sampler (reference evaluation settings, docs/algorithms.md §11.2) --------
    c.sampler = ml_collections.ConfigDict()
    c.sampler.block_size = 4  # b
    c.sampler.steps_per_block = 4  # denoising steps per block
    c.sampler.gen_length = 32  # response canvas, a multiple of block_size
    c.sampler.strategy = "low_confidence_dynamic"  # sequential | low_confidence_static | low_confidence_dynamic
    c.sampler.threshold = 0.9  # dynamic strategy: commit tokens with confidence > threshold
    c.sampler.temperature = 1.0  # 0 = greedy
    c.sampler.top_k = 0  # 0 = off
    c.sampler.top_p = 1.0  # 1.0 = off
    c.sampler.compat = "recommended"  # recommended | reference (§13.1, §13.2 quirks)
    # full attention only (LLaDA / Dream checkpoints, §2; block models reject other values);
    # strategy low_confidence_dynamic is the threshold rule (>=) there
    c.sampler.steps = config_dict.placeholder(int)  # total denoising steps (None: steps_per_block per block)
    c.sampler.target = "confidence"  # selection score: confidence | margin_confidence | neg_entropy | random
    c.sampler.alg_temp = 0.0  # > 0: static positions drawn from softmax(score / alg_temp) (Dream)
    c.sampler.pad_target_penalty = 1.0  # a PAD candidate's score is divided by this (Dream; 1.0 = off)
    c.sampler.early_stop = config_dict.placeholder(bool)  # stop a row after an all-PAD block (None: Dream yes)
    c.sampler.use_cache = False  # prefix KV cache (Fast-dLLM, §2.2)
    c.sampler.further_horizon = config_dict.placeholder(int)  # with use_cache: positions seen after the block
    c.num_samples = 1  # completions per prompt

    # --- output ------------------------------------------------------------
    c.trajectory = "none"  # none | table (each token with the step that committed it) | frames (canvas per step)

    if variant == "arithmetic":
        pass
    elif variant in ("sudoku4", "countdown"):
        c.data.name = variant
        c.data.knobs = ml_collections.ConfigDict()  # the task's default difficulty
        c.sampler.gen_length = 48
    elif variant in ("math500", "gsm8k"):
        c.checkpoint = ""  # required: a TraDo/SDAR HF directory or an export
        c.data.name = variant
        c.data.knobs = ml_collections.ConfigDict()
        c.sampler.gen_length = 2000  # evaluation.max_token
    elif variant == "smoke":
        c.checkpoint = "random:tiny"
        c.tokenizer = "tasks"
        c.prompts = ("Compute 2+3.", "Compute 40-13.")
        c.sampler.gen_length = 8
        c.trajectory = "table"
    else:
        raise ValueError(f"unknown variant {variant!r}; expected arithmetic, sudoku4, countdown, math500, gsm8k "
                         "or smoke")
    return c
