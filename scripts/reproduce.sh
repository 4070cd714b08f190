#!/usr/bin/env bash
# Every experiment of paper_repro.md (the Hydra app's jobs), then one results table,
# the bound verdicts and every figure:
#     bash scripts/reproduce.sh                # SIZE=ci: the linreg figures at the small preset (minutes, CPU)
#     SIZE=paper DEVICE=cuda bash scripts/reproduce.sh   # the paper's sizes (the linreg GD sweep is
#                                              # faster through scripts/gpu_sweeps.sh on a GPU)
# OUT (default results/reproduce_$SIZE) receives the job folders, collected.parquet,
# verdicts.{txt,csv}, summary.csv, median_curves.csv and rates.csv (the raw files of
# paper_repro.md section C, see scripts/derive_numbers.py), figures/, logs/ (one log per
# experiment) and timing.txt. Rerunning skips finished jobs. One line per experiment with
# its time and the time since the start. On a loaded CPU, OPENBLAS_NUM_THREADS=1 makes the
# exact expectations (numpy) several times faster, but their last bits then differ from a
# run with numpy's default threads.
# Exit status: that of `experiments.verify` (1 if a bound is violated), after the summary
# and the figures have been made anyway; any other failure stops at once with its log (and
# ends the stages running beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
# PY: the interpreter (default .venv/bin/python, created by scripts/setup.sh when missing)
[ -n "${PY:-}" ] || [ -x .venv/bin/python ] || bash scripts/setup.sh
export MPLBACKEND=Agg
SIZE=${SIZE:-ci}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-results/reproduce_$SIZE}
PY=${PY:-.venv/bin/python}
T0=$SECONDS
N=0
stamp() { printf '[%4d s] %s\n' $((SECONDS - T0)) "$*" | tee -a "$OUT/timing.txt"; }
# The multiruns are queued by run() and executed by ONE process (experiments.multirun:
# the same jobs, folders and numbers as one `python -m experiments.run -m` each, without
# paying the import of torch, pandas and Hydra per experiment): a line per experiment
# with its time, its output in $OUT/logs/NN.log; a failing one prints its log and stops.
# RUNNER=sweep (the default) runs each line's jobs through experiments.sweep (the same
# jobs, config hashes and numbers, batched and without Hydra's per-job composition: the
# collected table is the one RUNNER=hydra gives, every column but time_s bitwise, see
# scripts/compare_collected.py); RUNNER=hydra runs each line as a Hydra multirun of the app.
# The figures are drawn FIG_JOBS at a time (default: the number of cores; the same files).
run() {  # queue one Hydra multirun (its overrides, tab-separated)
  N=$((N + 1)); (IFS=$'\t'; printf '%s\n' "$*") >> "$OUT/queue.txt"
}
drain() {  # run the queued multiruns
  $PY -m experiments.multirun "$OUT/queue.txt" --timing "$OUT/timing.txt" --logs "$OUT/logs" \
      --since $((SECONDS - T0)) --runner "${RUNNER:-sweep}" -- size=$SIZE device=$DEVICE results_root="$OUT" \
      hydra.sweep.dir="$OUT/sweeps/\${now:%Y-%m-%d_%H-%M-%S}_\${blora_unique:}" || exit 1
}
mkdir -p "$OUT/logs"
: > "$OUT/timing.txt"
: > "$OUT/queue.txt"
stamp "SIZE=$SIZE DEVICE=$DEVICE OUT=$OUT RUNNER=${RUNNER:-sweep}"
run experiment=counterexample method=lora,cola,asymm_lora stepsize.factor=1.0
run experiment=counterexample method=bernoulli_lora method.p=0,0.5,1 stepsize.factor=1.0
run problem=counterexample method=fpft stepsize.factor=1.0 steps=1500 seeds=10 eval_every=10
run experiment=rate_vs_p
run experiment=rate_vs_rank
run experiment=sketch_comparison
run experiment=logistic_finetune
run experiment=linreg_gd
run experiment=linreg_gd_fpft
run experiment=linreg_finite_sum
run experiment=linreg_finite_sum_page
# a checkable theorem for every variant of the paper (stepsizes inside the admissible
# ranges, sigma^2 known, exact expectations where the problem is quadratic)
for preset in pl_sgd pl_page pl_mvr pl_qgd pl_marina pl_ef21 nonisotropic_p nonisotropic_p_nonsmooth; do
  run experiment=$preset
done
# the exact expectation of every method/estimator pair of issue 11 (FPFT, RAC-LoRA on each
# side, Bernoulli-LoRA x GD, SGD, PAGE, MVR, QGD, MARINA, EF21), and the isotropic case where
# the PL bound is within a constant factor of the exact mean
run experiment=exact_pairs
run experiment=exact_isotropic
drain
# verify (it reads the job folders) runs beside collect, the summaries beside the figures (both
# read collected.parquet): each writes files of its own, so no core idles while a single-process
# stage runs, the files are those of one stage after the other, and timing.txt says when each
# is done
stamp "collecting the job tables; verifying the bounds (side by side)"
verify_pid= summaries_pid=
# a failure below stops the script: end the stages still running beside it first
trap 'rc=$?; set +e; { kids="$(pgrep -d " " -P "$verify_pid"; pgrep -d " " -P "$summaries_pid")"
                        kill $verify_pid $summaries_pid $kids; } 2>/dev/null; exit $rc' EXIT
( rc=0
  $PY -m experiments.verify "$OUT" --out "$OUT/verdicts.csv" > "$OUT/verdicts.txt" || rc=$?
  stamp "verify done"
  exit $rc ) &
verify_pid=$!
$PY -m experiments.collect "$OUT" -o "$OUT/collected.parquet"
stamp "summary table, median curves, rates; figures (side by side)"
( set -e
  $PY -m experiments.summarize "$OUT/collected.parquet" -o "$OUT/summary.csv" > /dev/null
  $PY scripts/derive_numbers.py curves "$OUT/collected.parquet" -o "$OUT/median_curves.csv" > /dev/null
  $PY scripts/derive_numbers.py rates "$OUT/collected.parquet" -o "$OUT/rates.csv" > /dev/null
  stamp "summary table, median curves, rates done" ) &
summaries_pid=$!
$PY -m figures.make "$OUT/collected.parquet" --out "$OUT/figures" --jobs "${FIG_JOBS:-$(nproc 2>/dev/null || echo 1)}" > /dev/null
stamp "figures done"
wait $summaries_pid
status=0
wait $verify_pid || status=$?
trap - EXIT
tail -1 "$OUT/verdicts.txt"
stamp "results in $OUT: collected.parquet, verdicts.txt, summary.csv, median_curves.csv, rates.csv, figures/, logs/"
stamp "total $((SECONDS - T0)) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo ?))"
if [ $status != 0 ]; then stamp "verify exited with status $status (see $OUT/verdicts.txt)"; fi
exit $status
