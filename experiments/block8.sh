#!/usr/bin/env bash
# Issue 17 item 1: block-size enlargement (block 4 -> 8) of the shipped block-4 model (arith_sft) on
# arithmetic. experiments/block8_decoding.sh showed why the first attempt (block 8, 4 steps per block,
# dynamic threshold: 0.180 -> 0.180) had no signal: the model commits two or more tokens per step and is
# confidently wrong four tokens ahead. Every run here decodes one token per step (8 static steps per block:
# 24 forwards per response, as block 4 with 4 static steps) in rollouts, training rounds and evaluation:
#   tracerl_s{0,1}         TraceRL at block 8 straight from the block-4 model, the default budget
#                          (40 steps x 16 prompts x 8 responses)
#   sft_block8             block-8 SFT from the same model, 300 updates (about one TraceRL run's time),
#                          evaluated every 10 updates: the same-compute comparison
#   sft_block8_10          the first 10 updates of that SFT (the same schedule, stopped): a warm start
#                          nearer block 8
#   sft10_tracerl_s{0,1}   TraceRL at block 8 from sft_block8_10, the default budget
# Runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/block8}
B8=(--config.rollout.block_size=8 --config.rollout.steps_per_block=8 --config.rollout.strategy=low_confidence_static)
rl() { name=$1; shift; python examples/tracerl.py --config=configs/tracerl.py "${B8[@]}" "$@" --config.workdir="$OUT/$name"; }
sft() { name=$1; shift; python examples/sft.py --config=configs/sft.py --config.model.preset=small \
    --config.model.init=shipped:arith_sft --config.block_size=8 --config.eval.steps_per_block=8 --config.gen_length=24 \
    --config.num_steps=300 --config.optimizer.learning_rate=3e-4 --config.optimizer.warmup=20 --config.eval.every=10 \
    --config.eval.num=256 --config.checkpoint_every=50 --config.max_to_keep=10 "$@" --config.workdir="$OUT/$name"; }
rl tracerl_s0 --config.seed=0
rl tracerl_s1 --config.seed=1
sft sft_block8
sft sft_block8_10 --config.stop_at=10
for seed in 0 1; do rl sft10_tracerl_s$seed --config.seed=$seed --config.model.init="$OUT/sft_block8_10/export"; done
# The block-8 SFT model on each RL seed's held-out problems (the RL runs evaluate on the test split at data
# seed 1 for seed 0, 2 for seed 1), greedy, block 8, 8 steps.
for data_seed in 1 2; do
  python examples/evaluate.py --config=configs/evaluate.py --config.checkpoint="$OUT/sft_block8/export" \
      --config.sampler.block_size=8 --config.sampler.steps_per_block=8 --config.sampler.strategy=low_confidence_static \
      --config.sampler.temperature=0 --config.num_samples=1 --config.data.seed=$data_seed --config.sampler.gen_length=24 \
      | grep '\] accuracy'
done
python experiments/summarize.py --out docs/results/block8 "$OUT"/tracerl_s{0,1} "$OUT"/sft10_tracerl_s{0,1}
