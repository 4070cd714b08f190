#!/usr/bin/env bash
# Issue 14 on one GPU (Hydra-free, < 10 minutes: stage limits 320 + 75 + 190 s; the CUDA tests took
# 21 tests in 200 s + 38 in 91 s on an H200, paper_results/h200/perf): the fused path against the engine loop on
# CUDA, the paper's finite-sum sweep against its floor, and the compile tax of a fresh process.
# Run from the repository root:  OUT=/some/dir bash scripts/gpu_perf.sh
# $OUT receives:
#   log.txt                        everything printed (device, the three stages)
#   cuda_tests.txt                 (a) pytest tests/test_cuda.py, verbose, with the failures if any
#   bench_compile_tax_cuda.json    (c) 3 fresh processes: first minus second engine call
#   bench_finite_sum_cuda.json     (b) engine time per repetition, floor, ratio, spread, machine
# PY (default python3), WORK (default /tmp/blora_perf: the linreg build cache).
set -uo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-results/gpu_perf}
W=${WORK:-/tmp/blora_perf}
mkdir -p "$OUT" "$W"
export BLORA_CACHE=$W/cache
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || $PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  $PY -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], 'threads', torch.get_num_threads())"
  echo "== (a) pytest tests/test_cuda.py"
  timeout -k 5 320 $PY -m pytest -q -rfEs -p no:cacheprovider tests/test_cuda.py > "$OUT/cuda_tests.txt" 2>&1
  echo "pytest exit $?"; tail -25 "$OUT/cuda_tests.txt"
  echo "== (c) compile tax, fresh processes"
  timeout -k 5 75 $PY -m benchmarks.bench_compile_tax --device cuda --reps 3 --out "$OUT/bench_compile_tax_cuda.json"
  echo "compile tax exit $?"
  echo "== (b) finite-sum sweep (paper size) vs gather + minibatch GEMM floor"
  timeout -k 5 190 $PY -m benchmarks.bench_finite_sum --size paper --device cuda --reps 3 --budget-s 110 \
    --out "$OUT/bench_finite_sum_cuda.json"
  echo "finite-sum exit $?"
  date -u
} 2>&1 | tee "$OUT/log.txt"
ls -la "$OUT"
