"""Evaluate a checkpoint on held-out problems (examples/evaluate.py).

Usage::

    python examples/evaluate.py --config=configs/evaluate.py --config.checkpoint=runs/sft_arithmetic/export
    python examples/evaluate.py --config=configs/evaluate.py:math500 --config.checkpoint=/ckpt/TraDo-4B-Instruct \
        --config.dtype=bfloat16
    python examples/evaluate.py --config=configs/evaluate.py:math500,static --config.checkpoint=...
    python examples/evaluate.py --config=configs/evaluate.py:smoke          # random tiny model, seconds

Variants after the colon: the data (``arithmetic`` (default), ``sudoku4``,
``countdown``, ``math500``, ``gsm8k``, ``smoke``), optionally followed by
``,static`` for the reference's second evaluation setting.

Sampler settings are the reference evaluation's (ALGORITHMS.md §11.2,
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

    # --- data (tracerl_jax.tasks.load_examples) ------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.name = "arithmetic"  # arithmetic | sudoku4 | countdown | math500 | gsm8k | reference (needs path)
    c.data.knobs = ml_collections.ConfigDict(dict(digits=2, operands=2, ops="+-"))  # built-in task knobs
    c.data.num = 256  # problems (built-in tasks: generated from the test split); <= 0: the whole data set
    c.data.seed = 0  # built-in task generator seed (the SFT config's task.seed gives the same test split)
    c.data.split = "test"  # built-in tasks: held-out problems are in the test split
    c.data.path = ""  # a JSON/JSONL file for name=reference (or to replace the shipped math500/gsm8k file)

    # --- sampler (ALGORITHMS.md §1; reference eval settings, §11.2) ------------
    c.sampler = ml_collections.ConfigDict()
    c.sampler.block_size = 4  # b (evaluation.block_size)
    c.sampler.steps_per_block = 4  # denoising steps per block (evaluation.denoising_steps_per_block)
    c.sampler.gen_length = 32  # response canvas, a multiple of block_size (evaluation.max_token is 2000)
    c.sampler.strategy = "low_confidence_dynamic"  # remasking: sequential | low_confidence_static | low_confidence_dynamic
    c.sampler.threshold = 0.9  # dynamic strategy: commit tokens with confidence > threshold (at least one per step)
    c.sampler.temperature = 1.0  # 0 = greedy (evaluation.temperature)
    c.sampler.top_k = 0  # 0 = off; the reference pairs top_k 1 with the static strategy
    c.sampler.top_p = 1.0  # 1.0 = off (evaluation.top_p)
    c.sampler.compat = "recommended"  # recommended | reference (bit-for-bit reference quirks, §13.1)
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
    elif data_name in ("sudoku4", "countdown"):
        c.data.name = data_name
        c.data.knobs = ml_collections.ConfigDict()
        c.sampler.gen_length = 48
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
        raise ValueError(f"unknown data variant {data_name!r}; expected arithmetic, sudoku4, countdown, math500, "
                         "gsm8k or smoke")
    for mod in mods:
        if mod == "static":  # the reference's second evaluation pair
            c.sampler.strategy = "low_confidence_static"
            c.sampler.top_k = 1
        else:
            raise ValueError(f"unknown variant modifier {mod!r}; expected 'static'")
    return c
