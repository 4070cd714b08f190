#!/usr/bin/env bash
# The real-model section's tables on one GPU (plain argparse CLI, no Hydra needed).
# Run from the repository root:
#     OUT=/some/dir MNIST_DIR=../shared/data/mnist bash scripts/gpu_real_model.sh
# Produces, each directory with results.parquet, summary.{md,csv}, accuracy_vs_p.{pdf,png},
# pretrain.csv:
#   $OUT/bench/bench.json      ms per step (fpft, lora_a, bernoulli_lora side by side) and AdamW state bytes
#   $OUT/mnist/                the full MNIST table: all methods, p sweep, 20 seeds, 50 epochs,
#                              merge/switch once per epoch (the authors' code)
#   $OUT/mnist_matched/        the same with the paper's optimisation budget: 211 steps per epoch
#                              (our estimate: ~27k training images of digits 5-9 in the paper / batch 128),
#                              cycling through our 6k-image split; merges and LR schedule still per epoch
#   $OUT/mnist_step/           the merging methods with the theory's per-step switching
#   $OUT/digits/               the same table on scikit-learn's digits (embedded data)
# all of it under $WORK (default /tmp/blora_real_model); $OUT receives log.txt and
# real_model_gpu.tar.gz, refreshed after every stage (a run cut short keeps what it finished).
# SEEDS, EPOCHS, PY override the defaults; set ONLY="bench mnist" etc. to run a subset.
set -uo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-results/real_model_gpu}
FINAL=$OUT
OUT=${WORK:-/tmp/blora_real_model}
MNIST_DIR=${MNIST_DIR:-../shared/data/mnist}
SEEDS=${SEEDS:-20}
EPOCHS=${EPOCHS:-50}
ONLY=${ONLY:-"bench mnist mnist_step digits mnist_matched"}  # run in this order
P=0,0.01,0.2,0.4,0.6,0.8,0.99,1
RM="$PY -m experiments.real_model"
COMMON="--rank 1 --seeds $SEEDS --seed 0 --epochs $EPOCHS --pretrain-epochs 50 --optimizer adamw --lr 2e-4 --device cuda"
mkdir -p "$OUT" "$FINAL"
want() { [[ " $ONLY " == *" $1 "* ]]; }
pack() { tar -C "$OUT" -czf "$FINAL/real_model_gpu.tar.gz.tmp" . && mv "$FINAL/real_model_gpu.tar.gz.tmp" "$FINAL/real_model_gpu.tar.gz"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"
  if want bench; then
    echo "== bench (MNIST shapes, $SEEDS seeds, per-epoch switching)"
    $RM --data mnist --mnist-dir "$MNIST_DIR" --bench --bench-steps 300 --seeds "$SEEDS" --device cuda --out "$OUT/bench"
    $RM --data mnist --mnist-dir "$MNIST_DIR" --bench --bench-steps 300 --seeds 1 --device cuda --out "$OUT/bench_1seed"
    pack
  fi
  if want mnist; then
    echo "== MNIST table (switch per epoch)"
    /usr/bin/time -f "mnist wall %e s" $RM --data mnist --mnist-dir "$MNIST_DIR" --method all --p "$P" \
        --switch epoch $COMMON --out "$OUT/mnist"
    pack
  fi
  if want mnist_step; then
    echo "== MNIST merging methods, switch every step (the theory)"
    /usr/bin/time -f "mnist_step wall %e s" $RM --data mnist --mnist-dir "$MNIST_DIR" \
        --method cola,rac_lora,bernoulli_lora --p "$P" --switch step $COMMON --out "$OUT/mnist_step"
    pack
  fi
  if want digits; then
    echo "== digits table (switch per epoch)"
    /usr/bin/time -f "digits wall %e s" $RM --data digits --method all --p "$P" --switch epoch $COMMON \
        --out "$OUT/digits"
    pack
  fi
  if want mnist_matched; then
    echo "== MNIST table, paper's step budget (211 steps per epoch)"
    /usr/bin/time -f "mnist_matched wall %e s" $RM --data mnist --mnist-dir "$MNIST_DIR" --method all --p "$P" \
        --switch epoch --steps-per-epoch 211 $COMMON --out "$OUT/mnist_matched"
    pack
  fi
  for d in mnist mnist_matched mnist_step digits; do
    [ -f "$OUT/$d/summary.md" ] && { echo "== $d"; cat "$OUT/$d/summary.md"; }
  done
} 2>&1 | tee "$FINAL/log.txt"
cp "$FINAL/log.txt" "$OUT/log.txt"; pack
