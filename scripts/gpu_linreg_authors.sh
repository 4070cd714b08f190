#!/usr/bin/env bash
# The paper's two linreg sweeps in the units of the authors' code (problem.variant=authors:
# full gradient grad f - A^T b/N, W0 from the doubled-gradient pretraining at seed 42;
# docs/linreg_authors.md), on one GPU, Hydra-free (the GPU machine has no Hydra).
# The jobs are those of `python -m experiments.sweep linreg_gd|linreg_finite_sum` (run by
# scripts/gpu_sweeps.sh for the stated f) with problem.variant=authors: the same methods,
# p, ranks, stepsizes, steps and seeds as experiment=linreg_*_authors (whose eval_every
# differs, as it does between the stated presets and experiments.sweeps).
# Run from the repository root:  OUT=/some/dir bash scripts/gpu_linreg_authors.sh
# SWEEPS (default "linreg_gd linreg_finite_sum"), SIZE (paper), DEVICE (cuda), PY, WORK.
# $OUT receives at most 4 files (refreshed after every stage, so a run cut short keeps
# what it finished):
#   log.txt              everything printed: both variants' builds, scripts/linreg_authors_check.py, sweep timings, verdict tails
#   results.tar.gz       per-sweep timing/summary/verdicts and figures
#   NAME_authors.parquet each sweep's collected table when under 15 MB
set -uo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-results/gpu_authors}
SIZE=${SIZE:-paper}
DEVICE=${DEVICE:-cuda}
W=${WORK:-/tmp/blora_gpu_authors}
SWEEPS=${SWEEPS:-"linreg_gd linreg_finite_sum"}
mkdir -p "$OUT" "$W"
export BLORA_CACHE=$W/cache
pack() {  # small outputs -> $OUT/results.tar.gz (job folders, parquets and the cache stay behind)
  tar -C "$W" -czf "$OUT/results.tar.gz.tmp" --exclude=cache --exclude='*.parquet' \
      $(for s in $SWEEPS; do echo --exclude="${s}_authors/jobs"; done) . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || $PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  for v in stated authors; do
    echo "== linreg build, variant $v"; $PY -m experiments.problems.linreg --size $SIZE --device $DEVICE --variant $v
  done
  echo "== W0, ||grad||^2 at W0 and SGD's plateau: authors / stated"
  $PY scripts/linreg_authors_check.py --size $SIZE --device $DEVICE
  for s in $SWEEPS; do
    n=${s}_authors
    echo "== sweep $n"
    $PY - "$s" "$SIZE" "$DEVICE" "$W/$n" <<'EOF'
import json, os, sys, time
from experiments.sweep import run_sweep
from experiments.sweeps import SWEEPS
name, size, device, out = sys.argv[1:5]
cfgs = SWEEPS[name](size=size, device=device)
for cfg in cfgs:
    cfg["problem"]["variant"] = "authors"
t0 = time.perf_counter()
engine_s = run_sweep(cfgs, out)
summary = {"sweep": name, "variant": "authors", "size": size, "jobs": len(cfgs), "engine_s": engine_s,
           "wall_s": time.perf_counter() - t0}
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "sweep_timing.json"), "w") as fh:
    json.dump(summary, fh, indent=2)
print(json.dumps(summary))
EOF
    $PY -m experiments.collect "$W/$n" -o "$W/$n.parquet"
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
