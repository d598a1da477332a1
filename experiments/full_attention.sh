#!/usr/bin/env bash
# Issue 14 item 4: full-attention (LLaDA- and Dream-layout) small models that RL improves, by
# configuration only. Each family: the warm start (configs/sft.py:<family>: the shipped block model's
# weights carried into the layout, then full-attention semi-AR SFT; Dream learns its shift from next-token
# rows first), then configs/tracerl_full.py on it
# with TraceRL (shrink 4; seeds 0 and 1), random-masking RL, coupled RL and TraceRL + value model, all
# at the recipe's budget (30 steps x 16 prompts x 8 responses), and the same runs at the first, smaller
# budget (20 steps x 8 prompts, under $OUT/p8). Runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/full_attention}
FAMILIES=${FAMILIES:-"llada dream"}
for family in $FAMILIES; do
  python examples/sft.py --config=configs/sft.py:$family --workdir="$OUT/sft_$family"
  rl() { dir=$1; shift
    python examples/tracerl.py --config=configs/tracerl_full.py:$family --config.model.init="$OUT/sft_$family/export" \
        "$@" --config.workdir="$dir"; }
  for budget in "" p8; do
    extra=(); [ "$budget" = p8 ] && extra=(--config.rollout.num_prompts=8 --config.rl.total_steps=20)
    runs="$OUT/${budget:+$budget/}$family"
    rl "$runs/tracerl_s0" --config.seed=0 "${extra[@]}"
    rl "$runs/tracerl_s1" --config.seed=1 "${extra[@]}"
    rl "$runs/random_masking_s0" --config.rl.method=random_masking "${extra[@]}"
    rl "$runs/coupled_s0" --config.rl.method=coupled "${extra[@]}"
    rl "$runs/tracerl_value_s0" --config.value.enabled=True "${extra[@]}"
    python experiments/summarize.py --out "docs/results/full_attention/${budget:+$budget/}$family" "$runs"/*_s[0-9]
  done
done
