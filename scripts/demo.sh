#!/usr/bin/env bash
# Set up and run the main job: a small default experiment (Bernoulli-LoRA-GD on a
# quadratic, 3 values of p, 10 seeds each), its bound verdicts and its figures.
# Exit status: that of the verdicts (1 if a bound is violated).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg
OUT=${OUT:-results/demo}
.venv/bin/python -m experiments.run -m method.p=0.1,0.5,0.9 hydra.sweep.dir="$OUT/sweep" results_root="$OUT"
.venv/bin/python -m experiments.collect "$OUT"
status=0
.venv/bin/python -m experiments.verify "$OUT" || status=$?   # the figures are drawn even after a violation
.venv/bin/python -m figures.make "$OUT" --out "$OUT/figures"
echo "figures in $OUT/figures"
exit $status
