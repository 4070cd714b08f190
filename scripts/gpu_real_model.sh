#!/usr/bin/env bash
# The real-model section's tables on one GPU (plain argparse CLI, no Hydra needed).
# Run from the repository root:
#     OUT=/some/dir MNIST_DIR=../shared/data/mnist bash scripts/gpu_real_model.sh
# Produces, each directory with results.parquet, summary.{md,csv}, accuracy_vs_p.{pdf,png},
# pretrain.csv and _COMPLETE (written last):
#   $OUT/bench/bench.json      ms per step (fpft, lora_a, bernoulli_lora side by side) and AdamW state bytes
#   $OUT/mnist/                the full MNIST table: all methods, p sweep, 20 seeds, 50 epochs,
#                              merge/switch once per epoch (the authors' code)
#   $OUT/mnist_matched/        the same with the paper's optimisation budget: 211 steps per epoch
#                              (our estimate: ~27k training images of digits 5-9 in the paper / batch 128),
#                              cycling through our 6k-image split; merges and LR schedule still per epoch
#   $OUT/mnist_step/           the merging methods with the theory's per-step switching
#   $OUT/mnist_sgd/lr_<lr>/     every method with per-step switching and plain SGD (the theory's
#                              algorithm), one table per learning rate of SGD_LRS
#   $OUT/digits/               the same table (same protocol) on scikit-learn's digits (embedded data)
# all of it under $WORK (default /tmp/blora_real_model); $OUT receives log.txt and
# real_model_gpu.tar.gz, refreshed after every stage (a run cut short keeps what it finished;
# running the script again finishes only the missing configurations).
# Every stage passes the paper's protocol explicitly (COMMON below), so changing the CLI's
# defaults never changes these tables.
# SEEDS, EPOCHS, PY, DEVICE (default cuda) override the defaults; ONLY="bench mnist" etc. runs a subset.
# Exit status: 0 only if every stage succeeded; the first failing stage stops the script
# with a non-zero status (log.txt and the tarball still hold what finished before it).
set -euo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PY:-python3}
FINAL=${OUT:-results/real_model_gpu}
OUT=${WORK:-/tmp/blora_real_model}
MNIST_DIR=${MNIST_DIR:-../shared/data/mnist}
SEEDS=${SEEDS:-20}
EPOCHS=${EPOCHS:-50}
DEVICE=${DEVICE:-cuda}
ONLY=${ONLY:-"bench mnist mnist_step digits mnist_matched"}  # run in this order (mnist_sgd on request)
SGD_LRS=${SGD_LRS:-"0.01 0.03 0.1 0.3"}  # mnist_sgd: learning rates of plain SGD
SGD_P=0,0.2,0.5,0.8,1
P=0,0.01,0.2,0.4,0.6,0.8,0.99,1
RM=("$PY" -m experiments.real_model)
MNIST=(--data mnist --mnist-dir "$MNIST_DIR")
# the paper's protocol, every option that changes the numbers given explicitly
COMMON=(--rank 1 --alpha 1 --init-std 1 --seeds "$SEEDS" --seed 0 --epochs "$EPOCHS" --pretrain-epochs 50
        --pretrain-patience 10 --pretrain-lr 2e-4 --optimizer adamw --lr 2e-4 --batch-size 128
        --opt-state keep --switch-every 1 --dtype float32 --device "$DEVICE")
for stage in $ONLY; do
  case $stage in bench|mnist|mnist_step|digits|mnist_matched|mnist_sgd) ;;
    *) echo "error: ONLY: unknown stage '$stage' (choose from bench mnist mnist_step digits mnist_matched mnist_sgd)" >&2; exit 2;;
  esac
done
mkdir -p "$OUT" "$FINAL"
want() { [[ " $ONLY " == *" $1 "* ]]; }
pack() { tar -C "$OUT" --exclude=weights.pt -czf "$FINAL/real_model_gpu.tar.gz.tmp" . && mv "$FINAL/real_model_gpu.tar.gz.tmp" "$FINAL/real_model_gpu.tar.gz"; }
# stage NAME CMD...: run one stage, timed; a failure stops everything (non-zero exit)
stage() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  if ! "$@"; then
    echo "error: stage $name failed: $*" >&2
    return 1
  fi
  echo "$name wall $((SECONDS - start)) s"
  pack
}
stages() {
  set -euo pipefail
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  # versions; with DEVICE=cuda, fail at once (not after the first stage) when CUDA is missing
  "$PY" -c "import sys, torch; print('torch', torch.__version__, 'python', sys.version.split()[0]);
sys.exit('error: DEVICE=cuda but torch.cuda.is_available() is False'
         if sys.argv[1] == 'cuda' and not torch.cuda.is_available() else 0)" "$DEVICE"
  if want bench; then
    stage bench "${RM[@]}" "${MNIST[@]}" --bench --bench-steps 300 --seeds "$SEEDS" --device "$DEVICE" --out "$OUT/bench"
    stage bench_1seed "${RM[@]}" "${MNIST[@]}" --bench --bench-steps 300 --seeds 1 --device "$DEVICE" --out "$OUT/bench_1seed"
  fi
  if want mnist; then
    stage mnist "${RM[@]}" "${MNIST[@]}" --method all --p "$P" --switch epoch "${COMMON[@]}" --out "$OUT/mnist"
  fi
  if want mnist_step; then
    stage mnist_step "${RM[@]}" "${MNIST[@]}" --method cola,rac_lora,bernoulli_lora --p "$P" --switch step \
        "${COMMON[@]}" --out "$OUT/mnist_step"
  fi
  if want mnist_sgd; then  # the theory's algorithm: switch every step, plain SGD, its LR swept
    for lr in $SGD_LRS; do
      stage "mnist_sgd_lr_$lr" "${RM[@]}" "${MNIST[@]}" --method all --p "$SGD_P" --switch step \
          "${COMMON[@]}" --optimizer sgd --lr "$lr" --out "$OUT/mnist_sgd/lr_$lr"
    done
  fi
  if want digits; then
    stage digits "${RM[@]}" --data digits --method all --p "$P" --switch epoch "${COMMON[@]}" --out "$OUT/digits"
  fi
  if want mnist_matched; then
    stage mnist_matched "${RM[@]}" "${MNIST[@]}" --method all --p "$P" --switch epoch --steps-per-epoch 211 \
        "${COMMON[@]}" --out "$OUT/mnist_matched"
  fi
  for d in mnist mnist_matched mnist_step digits mnist_sgd/lr_*; do
    if [ -f "$OUT/$d/summary.md" ]; then echo "== $d"; cat "$OUT/$d/summary.md"; fi
  done
}
set +e  # collect the stages' status instead of exiting before the log is saved
stages 2>&1 | tee "$FINAL/log.txt"
status=${PIPESTATUS[0]}
set -e
cp "$FINAL/log.txt" "$OUT/log.txt"
pack
if [ "$status" -ne 0 ]; then
  echo "gpu_real_model.sh: FAILED (exit $status); see $FINAL/log.txt" >&2
fi
exit "$status"
