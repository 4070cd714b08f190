"""The results store: the one interface between running and plotting.

A *job* (one configuration, all its seeds) writes one directory::

    results.parquet   the long table, one row per (run, evaluation point)
    config.yaml       the job's configuration (plain YAML, sorted keys)
    _COMPLETE         JSON {config_hash, rows, results_bytes, schema_version, and
                      overrides: the job's override list}, written last: a job
                      without it did not finish

Every file is written atomically (a temporary file in the same directory, then
``os.replace``), and a stale marker is removed before anything else is written,
so an interrupted writer never leaves a directory that looks complete. A job
whose ``config_hash`` already has a complete result anywhere under the sweep
root is skipped (:func:`find_complete`), hence a killed sweep resumes by running
the same command again.

``config_hash`` (:mod:`experiments.confighash`, re-exported here) covers
everything that changes the numbers and nothing that does not. Temporary files
and the ``results_root`` check live in :mod:`experiments.storage`, job claims in
:mod:`experiments.claims`.

Columns: :data:`COLUMNS` are required. A job's table also has one column per key
of its configuration, ``<group>_<key>`` (``problem_L``, ``estimator_batch``,
``compressor_k``, ``stepsize_rule``; ``name`` -> the group's name, ``method.p`` /
``method.rank`` -> ``p`` / ``rank``, top-level keys as named, e.g. ``steps``), by
:func:`experiments.conf.check.config_columns`, plus ``lambda_min_p``,
``lambda_max_p``, ``m``, ``n``, ``device``. Old tables are read with
current names (:data:`RENAMED`).

Consumers that must not import the solvers (``figures``) read the same files
with pandas and check the marker themselves; the file names and the marker's
JSON keys below are therefore part of the interface.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from experiments.confighash import NON_RESULT_KEYS, _plain, canonical_config, config_hash  # noqa: F401
from experiments.storage import atomic_write as _atomic_write
from experiments.storage import text_writer

SCHEMA_VERSION = 2
RESULTS_FILE = "results.parquet"
CONFIG_FILE = "config.yaml"
COMPLETE_MARKER = "_COMPLETE"
#: Every file :func:`write_job` writes into a job folder.
JOB_FILES = (RESULTS_FILE, CONFIG_FILE, COMPLETE_MARKER)

STRING, FLOAT, INT, BOOL = "string", "float64", "int64", "bool"

#: Required columns of a results table and their logical dtypes. Tables may carry
#: any further label columns (m, n, lambda_min_p, batch, stepsize_rule, device, ...).
COLUMNS: dict[str, str] = {
    # what ran
    "method": STRING,          # bernoulli_lora | fpft | lora | asymm_lora | cola
    "estimator": STRING,       # gd | sgd | page | mvr | qgd | marina | ef21 | subgradient
    "problem": STRING,
    "p": FLOAT,                # Bernoulli probability of the left sketch; NaN if not applicable
    "rank": INT,               # 0 for full-parameter methods
    "stepsize_factor": FLOAT,  # stepsize.factor: gamma = factor / L (smooth problems)
    "gamma": FLOAT,            # the constant rule's stepsize for this factor (Polyak rule: steps vary)
    "sketch": STRING,          # the config's sketch name (gaussian also for methods without a sketch)
    "compressor": STRING,      # the config's compressor name (identity: nothing is compressed)
    "seed": INT,
    # where on the trajectory
    "iteration": INT,
    "epochs": FLOAT,           # gradient evaluations in units of full passes
    "bits": FLOAT,             # communicated bits (distributed variants), 0 otherwise
    "time_s": FLOAT,
    # measurements
    "loss": FLOAT,
    "f_gap": FLOAT,            # f - f*, NaN if f* unknown
    "grad_norm_sq": FLOAT,
    "dist_sq": FLOAT,          # ||W - W*||_F^2, NaN if W* unknown
    "avg_grad_norm_sq": FLOAT,  # mean over iterates 0..t-1
    "min_grad_norm_sq": FLOAT,
    "avg_f_gap": FLOAT,
    "min_f_gap": FLOAT,
    # the theorem
    "bound": FLOAT,            # NaN if no bound applies
    "bound_metric": STRING,    # name of the column the bound bounds (in expectation), or "none"
    "bound_status": STRING,    # why / under which assumptions the bound applies
    # bookkeeping
    "config_hash": STRING,
    "diverged": BOOL,
}

#: Columns of tables written before schema version 2 -> their current names, and the
#: old placeholder values that the current writer spells differently (read by
#: :func:`coerce`, hence by every reader of this module).
RENAMED: dict[str, str] = {"stepsize": "stepsize_factor", "batch": "estimator_batch",
                           "transmit": "estimator_transmit"}
_RESPELLED: dict[str, dict] = {"compressor": {"none": "identity"}, "estimator_transmit": {"none": None}}


# --------------------------------------------------------------------------- schema

def _kind_ok(series: pd.Series, kind: str) -> bool:
    t = pd.api.types
    if kind == STRING:
        return t.is_string_dtype(series) or t.is_object_dtype(series)
    if kind == FLOAT:
        return t.is_numeric_dtype(series) and not t.is_bool_dtype(series)
    if kind == INT:
        return t.is_integer_dtype(series)
    if kind == BOOL:
        return t.is_bool_dtype(series)
    raise AssertionError(kind)


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check that ``df`` is a results table; return it unchanged.

    Raises
    ------
    ValueError
        One message naming the missing column(s), or the first column whose
        dtype does not match :data:`COLUMNS`.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"results table: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results table: missing column(s) {', '.join(map(repr, missing))}")
    for col, kind in COLUMNS.items():
        if not _kind_ok(df[col], kind):
            raise ValueError(f"results table: column {col!r} has dtype {df[col].dtype}, expected {kind}")
    return df


def rename_old_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the column names and placeholder values of a table written before
    schema version 2 (:data:`RENAMED`) made current; a current table unchanged."""
    if "stepsize" not in df.columns or "stepsize_factor" in df.columns:
        return df
    out = df.rename(columns={c: new for c, new in RENAMED.items() if c in df.columns})
    for col, spelled in _RESPELLED.items():
        if col in out.columns:
            out[col] = out[col].replace(spelled)
    return out


def coerce(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with the schema columns cast to their dtypes where the cast
    is lossless (e.g. float iterations 0.0, 10.0 -> int64), and the columns of an old
    table renamed (:data:`RENAMED`). Missing columns are left missing
    (:func:`validate` reports them)."""
    out = rename_old_columns(df.copy())
    for col, kind in COLUMNS.items():
        if col not in out.columns or _kind_ok(out[col], kind):
            continue
        s = out[col]
        try:
            if kind == INT:
                v = pd.to_numeric(s).to_numpy(dtype=float)
                if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
                    raise ValueError
                out[col] = v.astype(np.int64)
            elif kind == FLOAT:
                out[col] = pd.to_numeric(s).astype(np.float64)
            elif kind == BOOL:
                if s.isna().any():
                    raise ValueError
                out[col] = s.astype(bool)
        except (TypeError, ValueError):
            raise ValueError(f"results table: column {col!r} (dtype {s.dtype}) cannot be cast "
                             f"losslessly to {kind}") from None
    return out


# --------------------------------------------------------------------------- writing

def _write_parquet(df: pd.DataFrame, tmp: str) -> None:
    df.to_parquet(tmp, index=False)


def _dump_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False)


def write_job(directory: str | os.PathLike, df: pd.DataFrame, config: Mapping, *,
              overrides: list[str] | None = None) -> Path:
    """Write one job's table and configuration into ``directory``, atomically.

    Order: remove a stale ``_COMPLETE``; write ``results.parquet``; write
    ``config.yaml``; write ``_COMPLETE`` (JSON with ``config_hash``, ``rows``,
    ``results_bytes``). The table is coerced to the schema dtypes and validated
    first; its ``config_hash`` column is filled from ``config`` when absent and
    must agree with it when present. ``overrides``: the job's override list
    (Hydra's ``hydra.overrides.task``), kept in the marker as ``overrides``.

    Returns the path of ``results.parquet``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    h = config_hash(config)
    table = df.copy()
    if "config_hash" not in table.columns:
        table["config_hash"] = h
    table = validate(coerce(table))
    found = set(table["config_hash"].astype(str).unique())
    if found and found != {h}:
        raise ValueError(f"results table: config_hash column {sorted(found)} does not match "
                         f"the hash of the config ({h})")
    table = table.reset_index(drop=True)

    marker = d / COMPLETE_MARKER
    try:
        marker.unlink()
    except FileNotFoundError:
        pass
    results = d / RESULTS_FILE
    _atomic_write(results, lambda tmp: _write_parquet(table, tmp))
    _atomic_write(d / CONFIG_FILE, text_writer(_dump_yaml(_plain(config))))
    info = {"config_hash": h, "rows": int(len(table)), "results_bytes": results.stat().st_size,
            "schema_version": SCHEMA_VERSION}
    if overrides is not None:
        info["overrides"] = [str(o) for o in overrides]
    _atomic_write(marker, text_writer(json.dumps(info, sort_keys=True) + "\n"))
    return results


# --------------------------------------------------------------------------- reading

def _marker(directory: Path) -> dict | None:
    try:
        info = json.loads((directory / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_complete(directory: str | os.PathLike, config_hash: str | None = None) -> bool:
    """True iff ``directory`` holds a finished job (marker present and consistent
    with ``results.parquet``) and, when given, its hash is ``config_hash``."""
    d = Path(directory)
    info = _marker(d)
    if info is None:
        return False
    if config_hash is not None and info.get("config_hash") != config_hash:
        return False
    try:
        size = (d / RESULTS_FILE).stat().st_size
    except OSError:
        return False
    return size == info.get("results_bytes") and (d / CONFIG_FILE).is_file()


def _job_dirs(root: Path):
    """Folders under ``root`` holding a job's files. A folder whose marker names
    another ``kind`` (the real-model section's tables, :mod:`experiments.real_model.store`)
    belongs to that writer and is neither a job nor an incomplete one."""
    for here, dirs, files in os.walk(root):
        dirs.sort()
        if RESULTS_FILE in files or COMPLETE_MARKER in files:
            info = _marker(Path(here)) if COMPLETE_MARKER in files else None
            if info is not None and info.get("kind", "job") != "job":
                continue
            yield Path(here)


def complete_jobs(root: str | os.PathLike) -> list[Path]:
    """Directories under ``root`` (itself included) that hold a complete job, sorted."""
    return [d for d in _job_dirs(Path(root)) if is_complete(d)]


def incomplete_jobs(root: str | os.PathLike) -> list[Path]:
    """Directories under ``root`` with a results file or marker but no complete job."""
    return [d for d in _job_dirs(Path(root)) if not is_complete(d)]


def find_complete(root: str | os.PathLike, config_hash: str) -> Path | None:
    """The first directory under ``root`` holding a complete job with this hash, or None
    (also None when ``root`` does not exist yet)."""
    r = Path(root)
    if not r.is_dir():
        return None
    for d in _job_dirs(r):
        if is_complete(d, config_hash):
            return d
    return None


def complete_hashes(root: str | os.PathLike) -> dict[str, Path]:
    """{config_hash: job directory} for every complete job under ``root`` (one walk;
    use it instead of :func:`find_complete` per job when filtering a large sweep)."""
    r = Path(root)
    out: dict[str, Path] = {}
    if not r.is_dir():
        return out
    for d in _job_dirs(r):
        info = _marker(d)
        if info is not None and is_complete(d, info.get("config_hash")):
            out.setdefault(str(info["config_hash"]), d)
    return out


def read_config(directory: str | os.PathLike) -> dict:
    """The ``config.yaml`` of a job directory as plain data."""
    import yaml

    return yaml.safe_load((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8")) or {}


class UnreadableResults(UserWarning):
    """A results file that cannot be read or is not a results table (skipped)."""


def _read_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises OSError, ArrowInvalid, ... for a bad file
        raise ValueError(f"{path}: cannot read parquet ({type(err).__name__}: {err})") from None
    try:
        return validate(coerce(df))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="str" if k == STRING else k) for c, k in COLUMNS.items()})


def load_results(path: str | os.PathLike, *, on_error: str | Callable[[Path, str], None] = "raise") -> pd.DataFrame:
    """One results table from a parquet file, or from every complete job under a
    directory (searched recursively; incomplete jobs are ignored), concatenated in
    sorted path order. A directory without complete jobs gives an empty table with
    the schema columns.

    Parameters
    ----------
    path : a parquet file or a directory.
    on_error : what to do with a file that cannot be read (corrupt, truncated) or
        is not a results table: ``"raise"`` (ValueError naming the file),
        ``"warn"`` (skip it with an :class:`UnreadableResults` warning naming the
        file and the reason), or a callable ``on_error(file, message)`` called
        before the file is skipped.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        With ``on_error="raise"``: a file cannot be read or does not satisfy the
        schema (the message names the file).
    """
    if not (callable(on_error) or on_error in ("raise", "warn")):
        raise ValueError(f"on_error: expected 'raise', 'warn' or a callable, got {on_error!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {p}")
    files = [p] if p.is_file() else [d / RESULTS_FILE for d in complete_jobs(p)]
    tables = []
    for f in files:
        try:
            tables.append(_read_table(f))
        except ValueError as err:
            if on_error == "raise":
                raise
            if on_error == "warn":
                warnings.warn(f"skipped {err}", UnreadableResults, stacklevel=2)
            else:
                on_error(f, str(err))
    if not tables:
        return _empty_table()
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


#: The columns that identify one row: a configuration, a run, an evaluation point.
ROW_KEY: tuple[str, ...] = ("config_hash", "seed", "iteration")


def drop_duplicate_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the first row of each :data:`ROW_KEY` (two sweeps that ran the same
    job give two copies). Returns ``(table, number_of_rows_dropped)``."""
    dup = table.duplicated(list(ROW_KEY), keep="first")
    n = int(dup.sum())
    return (table[~dup].reset_index(drop=True) if n else table), n


def write_table(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """Atomically write a (collected) results table to ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table = validate(coerce(df)).reset_index(drop=True)
    _atomic_write(p, lambda tmp: _write_parquet(table, tmp))
    return p
