#!/usr/bin/env bash
# Issue 17 item 3: three seeds of each baseline at TraceRL's budget, so the method table's differences
# can be set against the seed spread. Arithmetic: the runs of experiments/arithmetic.sh (seed 0) plus
# seeds 1 and 2 of random-masking and coupled RL and of TraceRL + value model. Sudoku: the runs of
# experiments/sudoku4.sh (seeds 0, 1; its warm start first) plus seed 2 of each baseline. Same OUT
# directories as those scripts, so summarize.py sees every seed; runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/results}
OUT_SUDOKU=${OUT_SUDOKU:-runs/results_sudoku}
for seed in 1 2; do
  python examples/tracerl.py --config=configs/random_masking.py --config.seed=$seed --config.workdir="$OUT/random_masking_s$seed"
  python examples/tracerl.py --config=configs/coupled.py --config.seed=$seed --config.workdir="$OUT/coupled_s$seed"
  python examples/tracerl.py --config=configs/tracerl_value.py --config.seed=$seed --config.workdir="$OUT/tracerl_value_s$seed"
done
python experiments/summarize.py --out docs/results "$OUT"/tracerl_s{0,1,2} "$OUT"/random_masking_s{0,1,2} \
    "$OUT"/coupled_s{0,1,2} "$OUT"/tracerl_value_s{0,1,2}

INIT=runs/sft_sudoku4/export/hf   # experiments/sudoku4.sh makes it
for method in random_masking coupled; do
  python examples/tracerl.py --config=configs/tracerl_sudoku4.py --config.model.init=$INIT --config.seed=2 \
      --config.rl.method=$method --config.workdir="$OUT_SUDOKU/${method}_s2"
done
python experiments/summarize.py --out docs/results/sudoku4 "$OUT_SUDOKU"/tracerl_s{0,1,2} "$OUT_SUDOKU"/tracerl_value_s0 \
    "$OUT_SUDOKU"/random_masking_s{0,1,2} "$OUT_SUDOKU"/coupled_s{0,1,2}
