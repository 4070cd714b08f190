#!/usr/bin/env bash
# The paper's matrix-level sweeps on one GPU, Hydra-free (the GPU machine has no Hydra).
# Run from the repository root:  OUT=/some/dir bash scripts/gpu_sweeps.sh
# Writes $OUT/sweeps.tar.gz (verdicts, timings, summaries, figures, logs) and the
# collected tables when they are small enough to bring back.
set -uo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg
PY=${PY:-python3}
OUT=${OUT:-results/gpu}
SIZE=${SIZE:-paper}
DEVICE=${DEVICE:-cuda}
W=${WORK:-/tmp/blora_gpu}
mkdir -p "$OUT" "$W"
export BLORA_CACHE=$W/cache
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || $PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"; } > "$W/gpu.txt"
{
  echo "== core benchmark";    $PY -m benchmarks.bench_core --device $DEVICE --out "$W/bench_core_cuda.json"
  echo "== linreg build";      /usr/bin/time -v $PY -m experiments.problems.linreg --size $SIZE --device $DEVICE 2>&1 | tail -30
  echo "== gradient vs GEMM";  $PY -m benchmarks.bench_gradient --size $SIZE --device $DEVICE --runs 320 --out "$W/bench_gradient_cuda.json"
  for s in linreg_gd linreg_finite_sum; do
    echo "== sweep $s";        $PY -m experiments.sweep $s --size $SIZE --device $DEVICE --out "$W/$s"
    $PY -m experiments.collect "$W/$s" -o "$W/$s.parquet"
    $PY -m experiments.verify "$W/$s" --out "$W/${s}_verdicts.csv" > "$W/${s}_verdicts.txt"; echo "verify exit $?"
    tail -3 "$W/${s}_verdicts.txt"
    $PY -m figures.make "$W/$s.parquet" --out "$W/figures_$s"
    $PY -m experiments.summarize "$W/$s.parquet" -o "$W/${s}_summary.csv"
  done
} 2>&1 | tee "$W/log.txt"
cp "$W"/*.json "$W"/*_summary.csv "$W"/*_verdicts.* "$W/log.txt" "$W/gpu.txt" "$OUT"/ 2>/dev/null
tar -C "$W" -czf "$OUT/sweeps.tar.gz" --exclude=cache --exclude='linreg_gd' --exclude='linreg_finite_sum' \
    --exclude='*.parquet' .
for s in linreg_gd linreg_finite_sum; do
  f="$W/$s.parquet"; [ -f "$f" ] && [ "$(stat -c %s "$f")" -lt 15000000 ] && cp "$f" "$OUT/"
done
ls -la "$OUT"
