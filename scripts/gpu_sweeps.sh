#!/usr/bin/env bash
# The paper's matrix-level sweeps on one GPU, Hydra-free (the GPU machine has no Hydra).
# Run from the repository root:  OUT=/some/dir bash scripts/gpu_sweeps.sh
# SWEEPS (default "linreg_gd linreg_finite_sum": the paper's two linreg figures, each the jobs of
# its presets in experiments/conf/experiment, see FIGURE below; any other name is one preset),
# BENCH=0 (skip the benchmarks), PREP=0 (skip the stated linreg build and its spectrum), SET
# (space-separated Hydra overrides KEY=VALUE given to every job), TAG (suffix of each sweep's
# folder and files), SIZE, DEVICE, PY, WORK.
# Each sweep is `python -m experiments.sweep PRESET... size=$SIZE device=$DEVICE $SET`: the very
# jobs (config hashes, tables) of `python -m experiments.run -m experiment=PRESET ...`.
# $OUT receives (refreshed after every stage, so a run cut short still leaves its results):
#   log.txt              everything printed (device, benchmarks, sweep timings, verdict tails)
#   results.tar.gz       benchmark JSONs, per-sweep timing/summary/verdicts, figures
#   NAME.parquet         each sweep's collected table when under 15 MB
# The results.tar.gz also holds the raw files behind paper_repro.md's derived numbers
# (copy them to paper_results/h200/sweeps/, then run scripts/derive_numbers.py):
#   linreg_spectrum.csv, NAME_median_curves.csv (median / quantiles over seeds per iteration)
set -uo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-results/gpu}
SIZE=${SIZE:-paper}
DEVICE=${DEVICE:-cuda}
W=${WORK:-/tmp/blora_gpu}
SWEEPS=${SWEEPS:-"linreg_gd linreg_finite_sum"}
BENCH=${BENCH:-1}
PREP=${PREP:-1}
SET=${SET:-}
TAG=${TAG:-}
declare -A FIGURE=([linreg_gd]="linreg_gd linreg_gd_fpft" [linreg_finite_sum]="linreg_finite_sum linreg_finite_sum_page")
mkdir -p "$OUT" "$W"
export BLORA_CACHE=$W/cache
pack() {  # small outputs -> $OUT/results.tar.gz (job folders, parquets and the cache stay behind)
  tar -C "$W" -czf "$OUT/results.tar.gz.tmp" --exclude=cache --exclude='*.parquet' \
      $(for s in $SWEEPS; do echo --exclude="$s$TAG/jobs"; done) . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || $PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  $PY -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], 'threads', torch.get_num_threads())"
  if [ "$BENCH" = 1 ]; then
    echo "== core benchmark";    $PY -m benchmarks.bench_core --device $DEVICE --out "$W/bench_core_$DEVICE.json"
  fi
  if [ "$PREP" = 1 ]; then
    echo "== linreg build";      /usr/bin/time -v $PY -m experiments.problems.linreg --size $SIZE --device $DEVICE 2>&1 | tail -30
    echo "== linreg spectrum";   $PY scripts/derive_numbers.py spectrum --size $SIZE --device $DEVICE -o "$W/linreg_spectrum.csv" \
                                   && cat "$W/linreg_spectrum.csv"
  fi
  if [ "$BENCH" = 1 ]; then
    echo "== gradient vs GEMM";  $PY -m benchmarks.bench_gradient --size $SIZE --device $DEVICE --runs 320 --out "$W/bench_gradient_$DEVICE.json"
    echo "== engine step";       $PY -m benchmarks.bench_engine --size $SIZE --device $DEVICE --runs 320 --rank 4 --steps 200 --out "$W/bench_engine_$DEVICE.json"
  fi
  pack
  for s in $SWEEPS; do
    n=$s$TAG
    echo "== sweep $n";        $PY -m experiments.sweep ${FIGURE[$s]:-$s} size=$SIZE device=$DEVICE $SET --out "$W/$n"
    $PY -m experiments.collect "$W/$n" -o "$W/$n.parquet"
    $PY scripts/derive_numbers.py curves "$W/$n.parquet" -o "$W/${n}_median_curves.csv"
    $PY -m experiments.verify "$W/$n" --out "$W/${n}_verdicts.csv" > "$W/${n}_verdicts.txt"; echo "verify exit $?"
    tail -3 "$W/${n}_verdicts.txt"
    $PY -m experiments.summarize "$W/$n.parquet" -o "$W/${n}_summary.csv"
    cp "$W/$n/sweep_timing.json" "$W/${n}_timing.json" 2>/dev/null
    f="$W/$n.parquet"; [ -f "$f" ] && [ "$(stat -c %s "$f")" -lt 15000000 ] && cp "$f" "$OUT/"
    pack
    $PY -m figures.make "$W/$n.parquet" --out "$W/figures_$n" > /dev/null
    pack
  done
} 2>&1 | tee "$OUT/log.txt"
ls -la "$OUT"
