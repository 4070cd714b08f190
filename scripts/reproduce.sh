#!/usr/bin/env bash
# Every experiment of paper_repro.md through the Hydra app, then one results table,
# the bound verdicts and every figure:
#     bash scripts/reproduce.sh                # SIZE=ci: the linreg figures at the small preset (minutes, CPU)
#     SIZE=paper DEVICE=cuda bash scripts/reproduce.sh   # the paper's sizes (the linreg GD sweep is
#                                              # faster through scripts/gpu_sweeps.sh on a GPU)
# OUT (default results/reproduce_$SIZE) receives the job folders, collected.parquet,
# verdicts.{txt,csv}, summary.csv and figures/. Rerunning skips finished jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
export MPLBACKEND=Agg
SIZE=${SIZE:-ci}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-results/reproduce_$SIZE}
PY=.venv/bin/python
run() { echo "== $*"; $PY -m experiments.run -m "$@" size=$SIZE device=$DEVICE results_root="$OUT" \
          hydra.sweep.dir="$OUT/sweeps/\${now:%Y-%m-%d_%H-%M-%S}_\${blora_unique:}" > "$OUT/last_run.log" 2>&1 \
          || { cat "$OUT/last_run.log"; exit 1; }; }
mkdir -p "$OUT"
run experiment=counterexample method=lora,cola,asymm_lora stepsize.factor=1.0
run experiment=counterexample method=bernoulli_lora method.p=0,0.5,1 stepsize.factor=1.0
run problem=counterexample method=fpft stepsize.factor=1.0 steps=1500 seeds=10 eval_every=10
run experiment=rate_vs_p
run experiment=rate_vs_rank
run experiment=sketch_comparison
run experiment=logistic_finetune
run experiment=linreg_gd
# FPFT has no p or rank: the linreg_gd preset's sweep does not apply, so its settings are spelled out
if [ "$SIZE" = paper ]; then GD="steps=4000 seeds=20 eval_every=20"; else GD="steps=200 seeds=3 eval_every=10"; fi
run problem=linreg method=fpft estimator=gd stepsize.factor=1.0,2.0 $GD
run experiment=linreg_finite_sum estimator=sgd stepsize.factor=0.0625
run experiment=linreg_finite_sum estimator=page stepsize.factor=1 method.p=0.1,0.5,0.9
$PY -m experiments.collect "$OUT" -o "$OUT/collected.parquet"
$PY -m experiments.verify "$OUT" --out "$OUT/verdicts.csv" > "$OUT/verdicts.txt" || true
tail -1 "$OUT/verdicts.txt"
$PY -m experiments.summarize "$OUT/collected.parquet" -o "$OUT/summary.csv" > /dev/null
$PY -m figures.make "$OUT/collected.parquet" --out "$OUT/figures" > /dev/null
echo "results in $OUT: collected.parquet, verdicts.txt, summary.csv, figures/"
