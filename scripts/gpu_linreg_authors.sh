#!/usr/bin/env bash
# The paper's two linreg sweeps in the units of the authors' code (problem.variant=authors:
# full gradient grad f - A^T b/N, W0 from the doubled-gradient pretraining at seed 42;
# docs/linreg_authors.md), on one GPU, Hydra-free (the GPU machine has no Hydra).
# The jobs are those of the stated figures' presets with problem.variant=authors (for the SGD
# and Bernoulli-LoRA grids, exactly experiment=linreg_*_authors), run through
# scripts/gpu_sweeps.sh (SET=problem.variant=authors, TAG=_authors).
# Run from the repository root:  OUT=/some/dir bash scripts/gpu_linreg_authors.sh
# SWEEPS (default "linreg_gd linreg_finite_sum"), SIZE (paper), DEVICE (cuda), PY, WORK.
# $OUT receives at most 5 files (refreshed after every stage, so a run cut short keeps
# what it finished):
#   check.txt            both variants' builds and scripts/linreg_authors_check.py (W0, ||grad||^2 at W0, SGD's plateau)
#   log.txt              the sweeps (scripts/gpu_sweeps.sh): timings, verdict tails
#   results.tar.gz       per-sweep timing/summary/verdicts/median curves and figures
#   NAME_authors.parquet each sweep's collected table when under 15 MB
set -uo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-results/gpu_authors}
SIZE=${SIZE:-paper}
DEVICE=${DEVICE:-cuda}
W=${WORK:-/tmp/blora_gpu_authors}
mkdir -p "$OUT" "$W"
export BLORA_CACHE=$W/cache
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || $PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  for v in stated authors; do
    echo "== linreg build, variant $v"; $PY -m experiments.problems.linreg --size $SIZE --device $DEVICE --variant $v
  done
  echo "== W0, ||grad||^2 at W0 and SGD's plateau: authors / stated"
  $PY scripts/linreg_authors_check.py --size $SIZE --device $DEVICE
} 2>&1 | tee "$OUT/check.txt"
OUT=$OUT WORK=$W PY=$PY SIZE=$SIZE DEVICE=$DEVICE BENCH=0 PREP=0 SET=problem.variant=authors TAG=_authors \
  bash "$(dirname "$0")/gpu_sweeps.sh"
