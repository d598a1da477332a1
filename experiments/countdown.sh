#!/usr/bin/env bash
# Issue 17 item 4 (second half): Countdown (three numbers <= 25, + - * /, targets <= 100). Block-SFT warm
# start of the small model stopped early (STOP_AT) to leave RL room, then configs/tracerl_countdown.py
# (30 steps x 16 prompts x 8 responses): TraceRL at two seeds, the baselines at one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/results_countdown}
python examples/sft.py --config=configs/sft.py:countdown --config.model.preset=small --config.num_steps=1500 \
    --config.stop_at="${STOP_AT:-300}" --config.eval.every=50 --config.export_hf=True --workdir=runs/sft_countdown
INIT=runs/sft_countdown/export/hf
rl() { name=$1; shift; python examples/tracerl.py --config=configs/tracerl_countdown.py --config.model.init=$INIT \
         "$@" --config.workdir="$OUT/$name"; }
rl tracerl_s0 --config.seed=0
rl tracerl_s1 --config.seed=1
rl random_masking_s0 --config.seed=0 --config.rl.method=random_masking
rl coupled_s0 --config.seed=0 --config.rl.method=coupled
python experiments/summarize.py --out docs/results/countdown "$OUT"/tracerl_s{0,1} "$OUT"/random_masking_s0 "$OUT"/coupled_s0
