#!/usr/bin/env bash
# Issue 14 item 4: full-attention (LLaDA- and Dream-layout) small models that RL improves, by
# configuration only. Each layout: its warm start (the shipped block model's weights carried into the
# layout, then full-attention semi-AR SFT: configs/sft.py:llada, :dream_semiar), then
# configs/tracerl_full.py on it with TraceRL (shrink 4; seeds 0 and 1), random-masking RL, coupled RL and
# TraceRL + value model, all at the recipe's budget (30 steps x 16 prompts x 8 responses), and the same
# runs at the first, smaller budget (20 steps x 8 prompts, under $OUT/p8). Then the Dream start RL does
# not improve: configs/sft.py:dream (next-token rows first, 0.62), also stopped at update 400, with
# TraceRL at lr 1e-5, 3e-5 and 3e-5 after a 5-step warm-up (under $OUT/dream_two_stage). Runs resume
# from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/full_attention}
STARTS=${STARTS:-"llada dream_semiar"}
for start in $STARTS; do
  family=${start%%_*}
  python examples/sft.py --config=configs/sft.py:$start --workdir="$OUT/sft_$start"
  rl() { dir=$1; shift
    python examples/tracerl.py --config=configs/tracerl_full.py:$family --config.model.init="$OUT/sft_$start/export" \
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

# The two-stage Dream start (checkpoints every 100 updates so update 400 can be exported too).
two=$OUT/dream_two_stage
python examples/sft.py --config=configs/sft.py:dream --config.checkpoint_every=100 --config.max_to_keep=3 \
    --workdir="$two/sft"
mkdir -p "$two/sft400/checkpoints" && cp -r "$two/sft/checkpoints/400" "$two/sft400/checkpoints/"
python examples/sft.py --config=configs/sft.py:dream --config.stop_at=400 --workdir="$two/sft400"   # exports update 400
for seed in 0 1; do
  d() { python examples/tracerl.py --config=configs/tracerl_full.py:dream --config.seed=$seed "$@"; }
  d --config.model.init="$two/sft/export" --config.rl.learning_rate=1e-5 --config.workdir="$two/lr1e-5_s$seed"
  d --config.model.init="$two/sft/export" --config.workdir="$two/lr3e-5_s$seed"
  d --config.model.init="$two/sft/export" --config.rl.warmup=5 --config.workdir="$two/lr3e-5_warmup5_s$seed"
  d --config.model.init="$two/sft400/export" --config.workdir="$two/sft400_lr3e-5_s$seed"
done
python experiments/summarize.py --out docs/results/full_attention/dream_two_stage "$two"/*_s[0-9]
