#!/usr/bin/env bash
# Issue 17 item 4: RL on code and on Countdown, the built-in tasks with no results yet.
#   codefn     a small integer function shown by three examples; the response boxes its return expression,
#              rewarded by the library's sandbox on four hidden tests (configs/tracerl_codefn.py, 40 steps)
#   countdown  three numbers <= 25 and + - * / to reach a target <= 100 (configs/tracerl_countdown.py, 30 steps)
# Each: a block-SFT warm start of the small model from the shipped block model's weights (arith_sft: it
# knows the tokenizer, the answer box and sums), 1500-update cosine schedule stopped at update STOP_AT (600)
# to leave RL room, then TraceRL at
# two seeds and the baselines at one, 16 prompts x 8 responses per step. The sandbox's throughput inside the
# loop is in each codefn run's metrics.jsonl: reward_responses_per_s and time_reward (its seconds per step)
# against time_step. TASKS="codefn" runs one of them; runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
for task in ${TASKS:-codefn countdown}; do
  out=${OUT:-runs}/results_$task
  python examples/sft.py --config=configs/sft.py:$task --config.model.preset=small --config.model.init=shipped:arith_sft \
      --config.num_steps=1500 --config.stop_at="${STOP_AT:-600}" --config.eval.every=50 --config.checkpoint_every=100 \
      --config.max_to_keep=10 --workdir=runs/sft_$task
  # the recipes' model.init is runs/sft_$task/export
  rl() { name=$1; shift; python examples/tracerl.py --config=configs/tracerl_$task.py "$@" --config.workdir="$out/$name"; }
  rl tracerl_s0 --config.seed=0
  rl tracerl_s1 --config.seed=1
  rl random_masking_s0 --config.seed=0 --config.rl.method=random_masking
  rl coupled_s0 --config.seed=0 --config.rl.method=coupled
  python experiments/summarize.py --out docs/results/$task "$out"/tracerl_s{0,1} "$out"/random_masking_s0 "$out"/coupled_s0
done
