#!/usr/bin/env bash
# Set up and run the main job: a small default experiment (Bernoulli-LoRA-GD on a
# quadratic, 3 values of p, 10 seeds each), its bound verdicts and its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg
OUT=${OUT:-results/demo}
.venv/bin/python -m experiments.run -m method.p=0.1,0.5,0.9 hydra.sweep.dir="$OUT/sweep" results_root="$OUT"
.venv/bin/python -m experiments.collect "$OUT"
.venv/bin/python -m experiments.verify "$OUT"
.venv/bin/python -m figures.make "$OUT" --out "$OUT/figures"
echo "figures in $OUT/figures"
