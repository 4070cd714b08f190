"""The configuration hash that names a job's results.

``config_hash`` covers everything that changes the numbers and nothing that does
not: the keys in :data:`NON_RESULT_KEYS` (Hydra's own settings, output paths,
the device, logging) are left out. Results are device-independent up to float
rounding (the solvers' counter-based RNG draws the same numbers on CPU and GPU),
so a sweep finished on a GPU is not re-run on a CPU. Re-exported by
:mod:`experiments.results`.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Top-level configuration keys that do not change a job's numbers. ``graph`` (the fused
#: engine path, bitwise the engine's loop: tests/test_fused_estimators.py, tests/test_cuda.py)
#: and ``compile_rng`` (compiled draw kernels: integers identical, normals at most in the last
#: ulp, float rounding as between devices) are engine settings like ``device``.
NON_RESULT_KEYS: frozenset[str] = frozenset({
    "hydra", "launcher", "device", "results_root", "output_dir", "out_dir", "out",
    "progress", "verbose", "log_level", "resume", "dry_run", "graph", "compile_rng",
})


def _plain(x: Any) -> Any:
    """Plain, JSON/YAML-safe Python data (works for OmegaConf containers too)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (str, bytes)):
        return x.decode() if isinstance(x, bytes) else x
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if x is None:
        return None
    if isinstance(x, (Sequence, np.ndarray, set, frozenset)):
        seq = sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x
        return [_plain(v) for v in seq]
    return str(x)


def _canonical(x: Any) -> Any:
    # 1 and 1.0 hash alike (a Hydra override `stepsize.factor=1` is an int);
    # a key set to None hashes like an absent key (builders drop None values);
    # non-finite floats become strings so the JSON is strict.
    if isinstance(x, dict):
        return {k: _canonical(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_canonical(v) for v in x]
    if isinstance(x, float):
        if not math.isfinite(x):
            return repr(x)
        return int(x) if x.is_integer() and abs(x) < 2**53 else x
    return x


def canonical_config(cfg: Mapping, *, exclude: frozenset[str] | set[str] = NON_RESULT_KEYS) -> dict:
    """The part of ``cfg`` that determines the results, as canonical plain data."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"config: expected a mapping, got {type(cfg).__name__}")
    plain = _plain(cfg)
    return _canonical({k: v for k, v in plain.items() if k not in exclude})


def config_hash(cfg: Mapping, *, exclude: frozenset[str] | set[str] = NON_RESULT_KEYS) -> str:
    """sha256 (hex) of the canonical JSON (sorted keys) of ``cfg`` without the
    top-level keys in ``exclude``. Stable under key order, int/float spelling of
    integral numbers, and None-versus-absent."""
    text = json.dumps(canonical_config(cfg, exclude=exclude), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


