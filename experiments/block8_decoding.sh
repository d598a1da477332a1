#!/usr/bin/env bash
# Issue 17 item 1, first measurement: how far is the shipped block-4 model (arith_sft) from block 8
# before any training? Greedy evaluation (temperature 0, 3 responses per problem) on the
# RL runs' held-out problems (seed 1, 256 problems), 24-token canvas, at block 4 and block 8 with
# 4 or 8 denoising steps per block, static and dynamic (threshold 0.9) remasking.
set -euo pipefail
cd "$(dirname "$0")/.."
for spec in "4 4 low_confidence_static" "8 4 low_confidence_static" "8 8 low_confidence_static" \
            "8 8 low_confidence_dynamic" "4 4 low_confidence_dynamic"; do
  set -- $spec
  echo "== block $1, $2 steps per block, $3"
  python examples/evaluate.py --config=configs/evaluate.py --config.sampler.block_size=$1 \
      --config.sampler.steps_per_block=$2 --config.sampler.strategy=$3 --config.sampler.temperature=0 \
      --config.data.seed=1 --config.sampler.gen_length=24 2>&1 | grep "accuracy" | tail -1
done
