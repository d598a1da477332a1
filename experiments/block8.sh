#!/usr/bin/env bash
# Issue 17 item 1: block-size enlargement (block 4 -> 8) of the shipped block-4 model (arith_sft) on
# arithmetic. experiments/block8_decoding.sh showed why the first attempt (block 8, 4 steps per block,
# dynamic threshold: 0.180 -> 0.180) had no signal: the model commits two or more tokens per step and is
# confidently wrong four tokens ahead. These runs decode one token per step (8 static steps per block: 24
# forwards per response, as block 4 with 4 static steps) in rollouts, training rounds and evaluation:
#   tracerl_s{0,1}    TraceRL at block 8, the default budget (40 steps x 16 prompts x 8 responses)
#   tracerl_k16_s0    the same with 16 responses per prompt (more groups with a correct answer)
#   sft_block8        block-8 SFT from the same start, as many updates as one TraceRL run's CPU time
#                     (SFT_STEPS; measured from tracerl_s0's log) for the same-compute comparison
# Runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/block8}
B8=(--config.rollout.block_size=8 --config.rollout.steps_per_block=8 --config.rollout.strategy=low_confidence_static)
rl() { name=$1; shift; python examples/tracerl.py --config=configs/tracerl.py "${B8[@]}" "$@" --config.workdir="$OUT/$name"; }
rl tracerl_s0 --config.seed=0
rl tracerl_s1 --config.seed=1
rl tracerl_k16_s0 --config.seed=0 --config.rollout.k=16
python examples/sft.py --config=configs/sft.py --config.model.preset=small --config.model.init=shipped:arith_sft \
    --config.block_size=8 --config.eval.steps_per_block=8 --config.gen_length=24 --config.num_steps="${SFT_STEPS:-300}" \
    --config.optimizer.learning_rate=3e-4 --config.optimizer.warmup=20 --config.eval.every=50 --config.eval.num=256 \
    --workdir="$OUT/sft_block8"
# The RL runs' held-out problems (seed 0's: the test split at data seed 1), greedy, block 8, 8 steps.
python examples/evaluate.py --config=configs/evaluate.py --config.checkpoint="$OUT/sft_block8/export" \
    --config.sampler.block_size=8 --config.sampler.steps_per_block=8 --config.sampler.strategy=low_confidence_static \
    --config.sampler.temperature=0 --config.num_samples=1 --config.data.seed=1 --config.sampler.gen_length=24 | grep accuracy | tail -1
python experiments/summarize.py --out docs/results/block8 "$OUT"/tracerl_s{0,1} "$OUT"/tracerl_k16_s0
