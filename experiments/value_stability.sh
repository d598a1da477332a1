#!/usr/bin/env bash
# Issue 17 item 2: does the value model keep TraceRL stable where plain TraceRL collapses?
# Default arithmetic recipe at lr 2e-4 (plain TraceRL collapses there) for 50 RL steps, with and
# without the value model, three seeds each; the default lr's seeds 1-2 of the value model are
# experiments/baselines.sh's (same runs, under its OUT). Runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/stability}
OUT_DEFAULT=${OUT_DEFAULT:-runs/results}   # experiments/arithmetic.sh and baselines.sh
for seed in 0 1 2; do
  python examples/tracerl.py --config=configs/tracerl.py --config.seed=$seed --config.rl.learning_rate=2e-4 \
      --config.rl.total_steps=50 --config.workdir="$OUT/lr2e-4_tracerl_s$seed"
  python examples/tracerl.py --config=configs/tracerl_value.py --config.seed=$seed --config.rl.learning_rate=2e-4 \
      --config.rl.total_steps=50 --config.workdir="$OUT/lr2e-4_tracerl_value_s$seed"
done
for seed in 1 2; do
  python examples/tracerl.py --config=configs/tracerl_value.py --config.seed=$seed \
      --config.workdir="$OUT_DEFAULT/tracerl_value_s$seed"
done
python experiments/summarize.py --out docs/results/stability "$OUT"/lr2e-4_tracerl_s{0,1,2} "$OUT"/lr2e-4_tracerl_value_s{0,1,2}
