#!/usr/bin/env bash
# Create .venv and install the suite. torch is installed FIRST and pinned, so the
# resolver never pulls a multi-GB CUDA build (the CPU wheel is served locally here;
# elsewhere pip takes the CPU wheel from the PyTorch index below).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0" \
    || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[dev${EXTRAS:+,$EXTRAS}]"
