"""The results schema: the one place that says what a results table holds.

Two kinds of table live in the store (:mod:`resultstore.files` writes and reads both):

* ``job``: a Hydra job's trajectories, one row per (run, evaluation point),
  :data:`COLUMNS` required;
* ``real_model``: the real-model section (``experiments.real_model``), one row per
  (configuration, seed), :data:`REAL_MODEL_COLUMNS` required.

Every column has one *role*: it describes the configuration (the default for any
column not listed here: a job's ``<group>_<key>`` columns, ``data``, ``optimizer``,
...), or it is a *measurement* (:data:`MEASUREMENTS`: values and positions along
a trajectory, bounds, accuracies, exact expectations ``exact`` / ``exact_*``),
*bookkeeping* (:data:`BOOKKEEPING`: run identity, where and how it ran, wall times
``*_s``), or *derived* from the configuration (:data:`DERIVED`: ``gamma``,
``lambda_min_p``, trainable parameter counts). Grouping rows into configurations
uses ``config_hash``; the roles decide which columns label a configuration
(:func:`configuration_columns`) and which are compared (:func:`is_measured`).

Old tables are read with current names: :data:`RENAMED` and :func:`rename_old_columns`.
This module imports pandas and numpy only (``theory``, ``figures`` and
``experiments`` all read it).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

#: Version of the job table layout written into each job's ``_COMPLETE``.
SCHEMA_VERSION = 2
#: Version of the real-model row layout (bump when a column changes meaning).
REAL_MODEL_VERSION = 1

JOB, REAL_MODEL = "job", "real_model"
KINDS = (JOB, REAL_MODEL)

STRING, FLOAT, INT, BOOL = "string", "float64", "int64", "bool"

#: Required columns of a job table and their logical dtypes. Tables may carry any
#: further configuration columns (``<group>_<key>``, m, n, ``lambda_min_p``, ...).
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

#: Required columns of a real-model table (one row per configuration and seed).
REAL_MODEL_COLUMNS: dict[str, str] = {
    "method": STRING,          # experiments.real_model.methods.METHODS (rac_lora_b: B sampled, A trained)
    "p": FLOAT,                # Bernoulli-LoRA's p (probability of B sampled, A trained); NaN otherwise
    "rank": INT,
    "data": STRING,
    "seed": INT,
    "test_acc": FLOAT,
    "val_acc": FLOAT,
    "trainable_params": FLOAT,  # expected trainable parameters per step and seed
    "diverged": BOOL,
    "config_hash": STRING,
}

#: Required columns of each kind of table.
SCHEMAS: dict[str, dict[str, str]] = {JOB: COLUMNS, REAL_MODEL: REAL_MODEL_COLUMNS}

#: Measured values and the trajectory positions they are measured at.
MEASUREMENTS = frozenset({
    "iteration", "epochs", "bits", "time_s", "loss", "f_gap", "grad_norm_sq", "dist_sq",
    "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap", "bound", "diverged",
    "test_acc", "val_acc", "pretrain_test_acc", "opt_state_bytes", "exact",
})
#: Which run a row is, where and how it ran, and what the bound is about.
BOOKKEEPING = frozenset({
    "seed", "config_hash", "device", "kernels", "bound_status", "bound_metric", "wall_s", "batched_runs",
})
#: Functions of the configuration (shown beside it, never used to tell configurations apart).
DERIVED = frozenset({"gamma", "lambda_min_p", "lambda_max_p", "trainable_params", "trainable_params_max"})
#: Prefix of the exact-expectation columns (experiments.exact: exact_f_gap, exact_metric, ...).
EXACT_PREFIX = "exact_"
#: Suffix of timing columns (``time_s``, ``wall_s``, a sweep's ``group_wall_s``).
TIMING_SUFFIX = "_s"


def is_measured(col) -> bool:
    """True for a measurement or bookkeeping column (anything that may differ between
    the rows of one configuration); False for configuration and derived columns."""
    c = str(col)
    return c in MEASUREMENTS or c in BOOKKEEPING or c.startswith(EXACT_PREFIX) or c.endswith(TIMING_SUFFIX)


def is_configuration(col) -> bool:
    """True for a column that describes the configuration (neither measured,
    bookkeeping nor derived)."""
    return not is_measured(col) and str(col) not in DERIVED


def canonical_order(columns: Iterable, kind: str = JOB) -> list:
    """``columns`` in the order a collected table has them: the kind's required columns in
    schema order, then every other column by name (so the layout of a table read from many
    job folders depends on its columns only, never on where or in what order the jobs
    were written)."""
    columns = list(columns)
    required = [c for c in (COLUMNS if kind == JOB else REAL_MODEL_COLUMNS) if c in columns]
    return required + sorted((c for c in columns if c not in required), key=str)


def configuration_columns(columns: Iterable) -> list:
    """The columns among ``columns`` (in order) that describe the configuration."""
    return [c for c in columns if is_configuration(c)]


# --------------------------------------------------------------------------- old names

#: Columns of job tables written before schema version 2 -> their current names.
RENAMED: dict[str, str] = {"stepsize": "stepsize_factor", "batch": "estimator_batch",
                           "transmit": "estimator_transmit"}
#: Old placeholder values that the current writer spells differently.
_RESPELLED: dict[str, dict] = {"compressor": {"none": "identity"}, "estimator_transmit": {"none": None}}


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


# --------------------------------------------------------------------------- dtypes

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


def _schema(kind: str) -> dict[str, str]:
    if kind not in SCHEMAS:
        raise ValueError(f"kind: unknown table kind {kind!r} (choose {' or '.join(KINDS)})")
    return SCHEMAS[kind]


def validate(df: pd.DataFrame, kind: str = JOB) -> pd.DataFrame:
    """Check that ``df`` is a results table of ``kind``; return it unchanged.

    Raises
    ------
    ValueError
        One message naming the missing column(s), or the first column whose
        dtype does not match the kind's schema (:data:`SCHEMAS`).
    """
    columns = _schema(kind)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"results table: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"results table: missing column(s) {', '.join(map(repr, missing))}")
    for col, k in columns.items():
        if not _kind_ok(df[col], k):
            raise ValueError(f"results table: column {col!r} has dtype {df[col].dtype}, expected {k}")
    return df


def coerce(df: pd.DataFrame, kind: str = JOB) -> pd.DataFrame:
    """A copy of ``df`` with the schema columns cast to their dtypes where the cast
    is lossless (e.g. float iterations 0.0, 10.0 -> int64), and the columns of an old
    table renamed (:data:`RENAMED`). Missing columns are left missing
    (:func:`validate` reports them)."""
    columns = _schema(kind)
    out = rename_old_columns(df.copy())
    for col, k in columns.items():
        if col not in out.columns or _kind_ok(out[col], k):
            continue
        s = out[col]
        try:
            if k == INT:
                v = pd.to_numeric(s).to_numpy(dtype=float)
                if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
                    raise ValueError
                out[col] = v.astype(np.int64)
            elif k == FLOAT:
                out[col] = pd.to_numeric(s).astype(np.float64)
            elif k == BOOL:
                if s.isna().any():
                    raise ValueError
                out[col] = s.astype(bool)
        except (TypeError, ValueError):
            raise ValueError(f"results table: column {col!r} (dtype {s.dtype}) cannot be cast "
                             f"losslessly to {k}") from None
    return out


def empty_table(kind: str = JOB) -> pd.DataFrame:
    """A table with the kind's required columns and no rows."""
    return pd.DataFrame({c: pd.Series(dtype="str" if k == STRING else k) for c, k in _schema(kind).items()})
