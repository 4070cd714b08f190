#!/usr/bin/env bash
# Set up (.venv, torch CPU wheel first) and run the test suite.
#
#   scripts/test.sh            every test but the slow end-to-end ones (@pytest.mark.slow)
#   scripts/test.sh -m slow    only the slow end-to-end ones (Hydra multiruns, launchers, GPU scripts)
#   scripts/test.sh --all      every test
#
# Any other arguments go to pytest (e.g. scripts/test.sh tests/test_rng.py -x); a -m
# given here replaces the default selection.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-peft} bash scripts/setup.sh
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
select=(-m "not slow")
args=()
for a in "$@"; do
    case "$a" in
        --all) select=() ;;
        -m|-m*) select=(); args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done
exec .venv/bin/python -m pytest -q -p no:cacheprovider ${select[@]+"${select[@]}"} ${args[@]+"${args[@]}"}
