#!/usr/bin/env bash
# Issue 17 item 4: RL on code. The built-in task codefn (a small integer function shown by three examples;
# the response boxes its return expression, rewarded by the library's sandbox on four hidden tests).
# Block-SFT warm start of the small model, stopped early (STOP_AT) to leave RL room, then TraceRL with
# configs/tracerl_codefn.py (40 steps x 16 prompts x 8 responses) for two seeds and the baselines at one.
# The sandbox's throughput inside the loop is in each run's metrics.jsonl: reward_responses_per_s and
# time_reward (its seconds per step) against time_step.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/results_codefn}
python examples/sft.py --config=configs/sft.py:codefn --config.model.preset=small --config.num_steps=1500 \
    --config.stop_at="${STOP_AT:-300}" --config.eval.every=50 --config.export_hf=True --workdir=runs/sft_codefn
INIT=runs/sft_codefn/export/hf
rl() { name=$1; shift; python examples/tracerl.py --config=configs/tracerl_codefn.py --config.model.init=$INIT \
         "$@" --config.workdir="$OUT/$name"; }
rl tracerl_s0 --config.seed=0
rl tracerl_s1 --config.seed=1
rl random_masking_s0 --config.seed=0 --config.rl.method=random_masking
rl coupled_s0 --config.seed=0 --config.rl.method=coupled
python experiments/summarize.py --out docs/results/codefn "$OUT"/tracerl_s{0,1} "$OUT"/random_masking_s0 "$OUT"/coupled_s0
