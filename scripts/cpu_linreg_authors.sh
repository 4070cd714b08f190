#!/usr/bin/env bash
# The paper's two linreg figures in the units of the authors' code (problem.variant=authors;
# docs/linreg_authors.md) at ci size on a CPU, through the Hydra app (a few minutes on 2 cores).
# Run from the repository root:  bash scripts/cpu_linreg_authors.sh [DEST]
# Works under $WORK (default: a new temporary folder; a WORK you name must be empty or
# absent: the script never deletes anything) and copies the small outputs to DEST
# (default paper_results/cpu/linreg_authors):
#   check.txt                 W0 and ||grad||^2 at W0 of both variants, SGD's recorded vs true ||grad f||^2
#   {gd,finite_sum}_summary.csv, {gd,finite_sum}_verdicts.txt
#   gd_grad_norm_sq_iteration.png, finite_sum_grad_norm_sq_epochs.png
set -euo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEST=${1:-paper_results/cpu/linreg_authors}
if [ -n "${WORK:-}" ]; then
  W=$WORK
  if [ -e "$W" ] && [ -n "$(ls -A "$W")" ]; then
    echo "error: WORK: $W is not empty (this script writes jobs there; name an empty or new folder)" >&2
    exit 2
  fi
else
  W=$(mktemp -d /tmp/blora_ci_authors.XXXXXX)
fi
mkdir -p "$W" "$DEST"
RUN="$PY -m experiments.run -m progress=false"
$RUN experiment=linreg_gd_authors results_root="$W/gd"
$RUN experiment=linreg_gd_fpft problem.variant=authors results_root="$W/gd"
$RUN experiment=linreg_finite_sum_authors results_root="$W/finite_sum"
$RUN experiment=linreg_finite_sum_page problem.variant=authors results_root="$W/finite_sum"
for s in gd finite_sum; do
  $PY -m experiments.collect "$W/$s" -o "$W/$s.parquet"
  $PY -m experiments.verify "$W/$s" --out "$W/${s}_verdicts.csv" > "$W/${s}_verdicts.txt" || true
  $PY -m experiments.summarize "$W/$s.parquet" -o "$W/${s}_summary.csv"
  $PY -m figures.make "$W/$s.parquet" --out "$W/figures_$s" > /dev/null
  cp "$W/${s}_summary.csv" "$W/${s}_verdicts.txt" "$DEST/"
done
cp "$W/figures_gd/convergence_linreg_grad_norm_sq_iteration.png" "$DEST/gd_grad_norm_sq_iteration.png"
cp "$W/figures_finite_sum/convergence_linreg_grad_norm_sq_epochs.png" "$DEST/finite_sum_grad_norm_sq_epochs.png"
$PY scripts/linreg_authors_check.py --size ci --device cpu | tee "$DEST/check.txt"
