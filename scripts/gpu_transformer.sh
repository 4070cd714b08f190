#!/usr/bin/env bash
# The transformer section (paper_repro.md section C) on one GPU: pretrain a small Llama on the
# repository's synthetic language, fine-tune it on the shifted language with every method
# (FPFT, LoRA, COLA, AsymmLoRA, RAC-LoRA, both sides each; GaLore; Bernoulli-LoRA p = 0.2, 0.5, 0.8
# through peft and as an optimiser) x SEEDS seeds, then time every method's step in interleaved
# repetitions (ratio to LoRA), collect and write the markdown table.
# Run from the repository root (python3 with torch; transformers, peft and galore-torch either
# installed or carried as wheels in .whl/ (or $WHEELS), which this script installs into /tmp/site):
#     OUT=/some/dir bash scripts/gpu_transformer.sh
# Produces under $OUT (default results/transformer_gpu):
#   results.csv     one row per (method, p, seed): held-out loss / accuracy, trainable params,
#                   optimiser-state bytes, ms per step (under WORKERS processes), ...
#   bench.json      ms per step of every method alone on the device, 5 interleaved repetitions,
#                   per-repetition ratio to LoRA (lora_a)
#   pretrain.json   pretraining metrics, the pretrained model on the shifted task, the oracle
#   table.md        python -m experiments.real_model.lm.table (the paper_repro.md table)
#   log.txt, transformer_gpu.tar.gz (the whole store, every job's row.json, without weights)
# The store itself lives in $WORK (default results/transformer_gpu_work, ignored by git); running
# the script again computes only what is missing (a run cut short keeps every finished job; after
# FINETUNE_S seconds of fine-tuning no job starts, collect then fails and says to run it again).
# SEEDS (10), WORKERS (6 fine-tuning processes sharing the GPU), DEVICE (cuda), PY override; EXTRA
# (options appended to every call, e.g. a tiny model for a CPU check) changes the numbers.
set -euo pipefail
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
FINAL=${OUT:-results/transformer_gpu}
WORK=${WORK:-results/transformer_gpu_work}  # inside the checkout (ignored): kept between calls on a warm machine
FINETUNE_S=${FINETUNE_S:-420}  # no fine-tuning job starts after this many seconds (run again for the rest)
SEEDS=${SEEDS:-10}
WORKERS=${WORKERS:-6}
DEVICE=${DEVICE:-cuda}
WHEELS=${WHEELS:-.whl}  # carried wheels (peft, galore-torch, ...): installed into /tmp/site, first on the path
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
# every option that changes the numbers, given explicitly (the CLI's defaults may change)
LM=("$PY" -m experiments.real_model.lm --out "$WORK" --device "$DEVICE" --method all --p 0.2,0.5,0.8
    --seeds "$SEEDS" --seed 0
    --vocab 32 --successors 4 --sharpness 2 --shift 0.5 --seq-len 64 --data-seed 0
    --pretrain-sequences 16384 --finetune-sequences 4096 --test-sequences 1024
    --hidden 128 --layers 2 --heads 4 --intermediate 256 --init-seed 0
    --pretrain-steps 2000 --pretrain-batch-size 64 --pretrain-lr 3e-3 --pretrain-warmup 100
    --pretrain-weight-decay 0.01
    --steps 300 --batch-size 32 --lr 3e-3 --weight-decay 0 --rank 4 --alpha 4 --init-std 1 --every 50
    --opt-state reset --galore-scale 0.25 --bench-reps 5 --bench-steps 50 --threads 2)
read -ra EXTRA_ARGS <<< "${EXTRA:-}"
LM+=("${EXTRA_ARGS[@]}")
mkdir -p "$WORK" "$FINAL"
pack() {
  tar -C "$WORK" --exclude=weights.pt --exclude=_CLAIM -czf "$FINAL/transformer_gpu.tar.gz.tmp" . \
    && mv "$FINAL/transformer_gpu.tar.gz.tmp" "$FINAL/transformer_gpu.tar.gz"
}
stage() {  # stage NAME CMD...: timed; a failure stops everything
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@" || { echo "error: stage $name failed: $*" >&2; return 1; }
  echo "$name wall $((SECONDS - start)) s"
  pack
}
finetune() {  # WORKERS shards of the fine-tuning jobs, one process each, sharing the device
  local pids=() i rc=0
  for ((i = 0; i < WORKERS; i++)); do
    "${LM[@]}" --stage finetune --shard "$i/$WORKERS" --workers "$WORKERS" --stop-after "$FINETUNE_S" \
        > "$WORK/finetune_shard$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { rc=1; echo "error: shard $i failed (tail of its log):" >&2; tail -5 "$WORK/finetune_shard$i.log" >&2; }
  done
  grep -h "seed" "$WORK"/finetune_shard*.log | sort || true
  return $rc
}
stages() {
  set -euo pipefail
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$PY" -c "import sys, torch, transformers, peft, importlib.util as u; print('torch', torch.__version__, 'python',
sys.version.split()[0], 'transformers', transformers.__version__, 'peft', peft.__version__, 'galore_torch',
bool(u.find_spec('galore_torch')));
sys.exit('error: DEVICE=cuda but torch.cuda.is_available() is False' if sys.argv[1] == 'cuda' and not torch.cuda.is_available() else 0)" "$DEVICE"
  stage pretrain "${LM[@]}" --stage pretrain
  stage finetune finetune
  stage bench "${LM[@]}" --stage bench
  stage collect "${LM[@]}" --stage collect
  "$PY" -m experiments.real_model.lm.table "$WORK" --output "$FINAL/table.md"
  cp "$WORK/results.csv" "$FINAL/results.csv"
  cp "$WORK"/pretrain-*/pretrain.json "$FINAL/pretrain.json"
  cp "$(ls -t "$WORK"/bench-*/bench.json | head -1)" "$FINAL/bench.json"
  cat "$FINAL/table.md"
}
set +e
stages 2>&1 | tee "$FINAL/log.txt"
status=${PIPESTATUS[0]}
set -e
pack
[ "$status" -eq 0 ] || echo "gpu_transformer.sh: FAILED (exit $status); see $FINAL/log.txt" >&2
exit "$status"
