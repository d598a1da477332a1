#!/usr/bin/env bash
# Issue 17 item 4: RL on code and on Countdown, the built-in tasks with no results yet.
#   codefn     a small integer function shown by three examples; the response boxes its return expression,
#              rewarded by the library's sandbox on four hidden tests (configs/tracerl_codefn.py, 40 steps)
#   countdown  three numbers <= 25 and + - * / to reach a target <= 100 (configs/tracerl_countdown.py, 30 steps)
# Each: the task's SFT variant (configs/sft.py:codefn, :countdown: the small model from the shipped block
# model's weights, its 1500-update cosine stopped at update 600 to leave RL room), then TraceRL, 16 prompts
# x 8 responses per step. The sandbox's throughput inside the loop is in each codefn run's metrics.jsonl
# (reward_responses_per_s, time_reward against time_step); summarize.py's second table has its share of
# the step. Runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
sft() { task=$1; dir=$2; shift 2; python examples/sft.py --config=configs/sft.py:$task "$@" --workdir="$dir"; }
rl() { recipe=$1; dir=$2; shift 2; python examples/tracerl.py --config=configs/tracerl_$recipe "$@" --config.workdir="$dir"; }

# codefn, the task's five templates (the recipe): TraceRL at two seeds and at lr 1e-4.
out=$OUT/results_codefn
sft codefn "$OUT/sft_codefn"
rl codefn.py "$out/tracerl_s0" --config.model.init="$OUT/sft_codefn/export" --config.seed=0
rl codefn.py "$out/tracerl_s1" --config.model.init="$OUT/sft_codefn/export" --config.seed=1
rl codefn.py "$out/tracerl_lr1e-4_s0" --config.model.init="$OUT/sft_codefn/export" --config.rl.learning_rate=1e-4
# The three templates the warm start half-solves (linear, mod, minmax: no pair, no quadratic), SFT and RL.
K=--config.task.knobs.templates=linear,mod,minmax
sft codefn "$OUT/sft_codefn_lmm" "$K"
for seed in 0 1; do
  rl codefn.py "$out/lmm_tracerl_s$seed" "$K" --config.model.init="$OUT/sft_codefn_lmm/export" --config.seed=$seed
done
# Seen against unseen functions: greedy accuracy of the start and of the RL model on 256 problems of the
# train split (functions RL trained on) and of the test split (the held-out functions).
for ckpt in "$OUT/sft_codefn_lmm/export" "$out/lmm_tracerl_s0/export"; do
  for split in train test; do
    echo "$ckpt $split: $(python examples/evaluate.py --config=configs/evaluate.py:codefn --config.checkpoint="$ckpt" \
        --config.data.knobs.templates=linear,mod,minmax --config.data.split=$split --config.data.seed=1 \
        --config.sampler.strategy=low_confidence_static --config.sampler.temperature=0 --config.num_samples=1 \
        --config.output_dir=/tmp/codefn_eval | grep '\] accuracy')"
  done
done
# Linear functions only, coefficients in [-3, 3] (configs/tracerl_codefn.py:linear): a held-out function's
# slope and constant each occur in training, only not together. Its own SFT start (configs/sft.py:codefn_linear,
# stopped at update 300 of 1500), then TraceRL, random masking and coupled RL for 80 steps, four seeds each.
sft codefn_linear "$OUT/sft_codefn_linear"
for seed in 0 1 2 3; do
  rl codefn.py:linear "$out/lin3_tracerl_s$seed" --config.model.init="$OUT/sft_codefn_linear/export" --config.seed=$seed
  for method in random_masking coupled; do
    rl codefn.py:linear "$out/lin3_${method}_s$seed" --config.model.init="$OUT/sft_codefn_linear/export" \
        --config.seed=$seed --config.rl.method=$method
  done
done
python experiments/summarize.py --out docs/results/codefn "$out"/tracerl_s{0,1} "$out"/tracerl_lr1e-4_s0 "$out"/lmm_tracerl_s{0,1} \
    "$out"/lin3_tracerl_s{0,1,2,3} "$out"/lin3_random_masking_s{0,1,2,3} "$out"/lin3_coupled_s{0,1,2,3}

# countdown
out=$OUT/results_countdown
sft countdown "$OUT/sft_countdown"
for seed in 0 1; do rl countdown.py "$out/tracerl_s$seed" --config.model.init="$OUT/sft_countdown/export" --config.seed=$seed; done
for method in random_masking coupled; do
  for seed in 0 1; do
    rl countdown.py "$out/${method}_s$seed" --config.model.init="$OUT/sft_countdown/export" --config.seed=$seed \
        --config.rl.method=$method
  done
done
python experiments/summarize.py --out docs/results/countdown "$out"/tracerl_s{0,1} "$out"/random_masking_s{0,1} \
    "$out"/coupled_s{0,1}
