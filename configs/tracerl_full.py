"""TraceRL of a full-attention diffusion LM (LLaDA or Dream layout) on built-in arithmetic, on a CPU.

Configuration only, two commands (the second reads the first's export):

    python examples/sft.py --config=configs/sft.py:llada          # warm start -> runs/sft_llada/export
    python examples/tracerl.py --config=configs/tracerl_full.py   # TraceRL from it
    # Dream layout (logit shift, q/k/v biases, forced first token, early stop):
    python examples/sft.py --config=configs/sft.py:dream_semiar   # -> runs/sft_dream_semiar/export
    python examples/tracerl.py --config=configs/tracerl_full.py:dream
    # baselines and the value model, as for block models:
    python examples/tracerl.py --config=configs/tracerl_full.py --config.rl.method=coupled
    python examples/tracerl.py --config=configs/tracerl_full.py --config.value.enabled=True

Measured (docs/results.md, "Full-attention models"; experiments/full_attention.sh): the warm starts
carry the shipped block model's weights into each layout; LLaDA's scores 0.457 / 0.492 on the seeds'
256 held-out problems after 300 SFT updates. At this recipe's budget (30 steps x 16 prompts x 8
responses, the block recipe's rollouts per step) TraceRL took LLaDA to 0.676 and 0.711 (seeds 0, 1:
+21.9 each; +18.0 and +19.1 from an earlier export of the same command), and
Dream from its semi-AR warm start (configs/sft.py:dream_semiar, about 30 CPU minutes) by +12.1 and
+12.9 (one export) and +11.3 and +9.8 (a re-run of it: 0.438 -> 0.551, 0.422 -> 0.520). The stronger
two-stage Dream start (configs/sft.py:dream: next-token rows first, 0.62 in 11 CPU minutes) is not
what this recipe improves: 30 steps at lr 1e-5 added 2.4 and 2.3 points and lr 3e-5 lost points in the
first 10 steps, with or without a warm-up. At 8 prompts and 20 steps LLaDA gained +16.0 in seed 0 and
lost 6.6 points in seed 1: 64 rollouts per step were too noisy for it.

Every field is that of configs/tracerl.py (documented there); the model's
family (read from ``model.init``) selects the full-attention sampler (§2) and
the single-sequence rows (§5, §9.2). The sizes are the CPU default's; the
reference LLaDA/Dream knobs (§11.3) are noted where they differ. A real
checkpoint needs only ``model.init`` and ``tokenizer`` set to its directory
(and the reference lengths: gen 512 / 1024, block 32, steps = gen, shrink 8,
``rl.num_draws`` 35, ``rollout.use_cache`` with horizon 128 / 32).
"""

from configs import tracerl

FAMILIES = ("llada", "dream")


def get_config(family: str = "llada"):
    if family not in FAMILIES:
        raise ValueError(f"unknown variant {family!r}; expected one of {FAMILIES}")
    c = tracerl.get_config()
    c.workdir = f"runs/tracerl_{family}"
    # examples/sft.py --config=configs/sft.py:llada | :dream_semiar (the Dream start this recipe improves)
    c.model.init = "runs/sft_llada/export" if family == "llada" else "runs/sft_dream_semiar/export"
    c.rollout.num_prompts = 16                   # num_task_per_step (reference 32); 8 was too noisy here
    c.rollout.k = 8                              # num_response_per_task (reference 8)
    c.rollout.block_size = 4                     # semi-AR block (reference 32)
    c.rollout.steps_per_block = 4                # = block_size: one token per step (reference steps = gen length)
    c.rollout.gen_length = 24                    # arithmetic solutions are <= 20 tokens (reference 512 / 1024)
    c.rollout.strategy = "low_confidence_static"  # reference remasking_strategy
    c.rollout.temperature = 1.0                  # reference 0.8
    c.rl.shrink = 4                              # whole-response step groups per row (reference 8 over 512 steps)
    c.rl.num_draws = 4                           # baselines: masked rows per response (reference 35)
    c.rl.learning_rate = 3e-5                    # the CPU default's; the reference uses 1e-6 at 8B
    c.rl.total_steps = 30
    c.eval.every = 10
    c.checkpoint.every = 10
    return c
