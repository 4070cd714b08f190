#!/usr/bin/env bash
# Create .venv and install the suite, printing one line per step with its time.
#
# torch is installed FIRST so that the resolver of the suite's own install never pulls
# a CUDA build: first from the PyTorch CPU wheel index (short timeout, no retries, so a
# machine that cannot reach it falls back within seconds), then from the default index.
# A torch already importable in .venv is kept: to use a GPU, create .venv yourself and
# install the CUDA wheel of torch into it before running this script.
#     PYTHON=python3.12 bash scripts/setup.sh      # the interpreter for a new .venv
#     EXTRAS=peft bash scripts/setup.sh            # extra optional dependencies
#     TORCH_SPEC='torch==2.13.0' TORCH_INDEX=URL   # what torch to install, and from where
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
T0=$SECONDS
step() { echo "[setup $((SECONDS - T0))s] $*"; }
timed() {  # timed LABEL CMD...: run CMD, then report its duration and status
  local label=$1 t=$SECONDS rc=0; shift
  step "$label ..."
  "$@" || rc=$?
  step "$label: $([ $rc = 0 ] && echo done || echo "failed (exit $rc)") in $((SECONDS - t)) s"
  return $rc
}
PIP=(.venv/bin/python -m pip)

if [ -x .venv/bin/python ]; then
  step "using the existing .venv ($(.venv/bin/python --version 2>&1))"
else
  timed "creating .venv with $PY" "$PY" -m venv .venv
fi
# a failed pip upgrade is harmless (the venv's own pip works), so it does not stop the setup
timed "upgrading pip" "${PIP[@]}" install --upgrade pip --timeout 10 --retries 0 || step "keeping the venv's pip"

if .venv/bin/python -c "import torch" 2>/dev/null; then
  step "keeping the installed torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
elif timed "installing $TORCH_SPEC from the PyTorch CPU index $TORCH_INDEX" \
      "${PIP[@]}" install "$TORCH_SPEC" --index-url "$TORCH_INDEX" --timeout 10 --retries 0; then
  :
else
  step "the CPU index did not serve $TORCH_SPEC; falling back to the default index" \
       "(on Linux x86_64 this is the CUDA build, several GB)"
  timed "installing $TORCH_SPEC from the default index" "${PIP[@]}" install "$TORCH_SPEC"
fi

timed "installing the suite (editable) with extras dev${EXTRAS:+,$EXTRAS}" \
  "${PIP[@]}" install -e ".[dev${EXTRAS:+,$EXTRAS}]"
step "ready: $(.venv/bin/python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
