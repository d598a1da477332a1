#!/usr/bin/env bash
# The runs behind docs/results.md (arithmetic, 2-digit operands, +/-), in the
# order they were made. Each RL run starts from the shipped SFT checkpoint
# (tracerl_jax/assets/checkpoints/arith_sft, made by the first command) and
# spends the same rollout budget: 40 steps x 16 prompts x 8 responses.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/results}

# SFT warm start (about 20 minutes on 2 cores); the shipped checkpoint is its export/hf.
python examples/sft.py --config=configs/sft.py --config.model.preset=small --config.num_steps=1500 \
    --config.stop_at=700 --config.export_hf=True --workdir="$OUT/sft"

for seed in 0 1 2; do
  python examples/tracerl.py --config.seed=$seed --config.workdir="$OUT/tracerl_s$seed"
done
python examples/tracerl.py --config=configs/random_masking.py --config.workdir="$OUT/random_masking_s0"
python examples/tracerl.py --config=configs/coupled.py --config.workdir="$OUT/coupled_s0"
python examples/tracerl.py --config=configs/tracerl_value.py --config.workdir="$OUT/tracerl_value_s0"
# Block-size enlargement: SFT at block 4, rollouts, training and evaluation at block 8.
python examples/tracerl.py --config.rollout.block_size=8 --config.workdir="$OUT/tracerl_block8_s0"

python experiments/summarize.py --out docs/results "$OUT"/tracerl_s{0,1,2} "$OUT"/random_masking_s0 \
    "$OUT"/coupled_s0 "$OUT"/tracerl_value_s0 "$OUT"/tracerl_block8_s0
