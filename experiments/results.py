"""The Hydra jobs' view of the results store (:mod:`resultstore`).

A *job* (one configuration, all its seeds) writes one directory::

    results.parquet   the long table, one row per (run, evaluation point)
    config.yaml       the job's configuration (plain YAML, sorted keys)
    _COMPLETE         JSON {config_hash, rows, results_bytes, schema_version, and
                      overrides: the job's override list}, written last: a job
                      without it did not finish

The schema (columns, dtypes, which columns are measurements and which describe the
configuration, old names) is :mod:`resultstore.schema`; the one atomic writer and
the one reader are :mod:`resultstore.files`. This module adds what needs the
configuration: the ``config_hash`` of a job's config (:mod:`experiments.confighash`,
re-exported here), :func:`write_job`, :func:`find_complete` and the collected
table's row key. A job whose ``config_hash`` already has a complete result anywhere
under the sweep root is skipped (:func:`find_complete`), hence a killed sweep
resumes by running the same command again. Temporary files and the
``results_root`` check live in :mod:`experiments.storage`, job claims in
:mod:`experiments.claims`.

Columns: :data:`COLUMNS` are required. A job's table also has one column per key
of its configuration, ``<group>_<key>`` (``problem_L``, ``estimator_batch``,
``compressor_k``, ``stepsize_rule``; ``name`` -> the group's name, ``method.p`` /
``method.rank`` -> ``p`` / ``rank``, top-level keys as named, e.g. ``steps``), by
:func:`experiments.conf.check.config_columns`, plus ``lambda_min_p``,
``lambda_max_p``, ``m``, ``n``, ``device``. Old tables are read with
current names (:data:`RENAMED`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import pandas as pd

from experiments.confighash import NON_RESULT_KEYS, _plain, canonical_config, config_hash  # noqa: F401
from resultstore import files as _files
from resultstore.files import (COMPLETE_MARKER, CONFIG_FILE, JOB_FILES, RESULTS_FILE,  # noqa: F401
                               UnreadableResults, complete_hashes, read_config, read_marker)
from resultstore.schema import (BOOL, COLUMNS, FLOAT, INT, JOB, RENAMED, SCHEMA_VERSION, STRING,  # noqa: F401
                                coerce, rename_old_columns, validate)


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
    extra = None if overrides is None else {"overrides": [str(o) for o in overrides]}
    return _files.write_table_dir(directory, df, _plain(config), config_hash=config_hash(config), kind=JOB,
                                  marker=extra)


def is_complete(directory: str | os.PathLike, config_hash: str | None = None) -> bool:
    """True iff ``directory`` holds a finished job (marker present and consistent
    with ``results.parquet``) and, when given, its hash is ``config_hash``."""
    return _files.is_complete(directory, config_hash, kind=JOB)


def complete_jobs(root: str | os.PathLike) -> list[Path]:
    """Directories under ``root`` (itself included) that hold a complete job, sorted."""
    return _files.complete_dirs(root, kind=JOB)


def incomplete_jobs(root: str | os.PathLike) -> list[Path]:
    """Directories under ``root`` with a results file or marker but no complete job."""
    return [d for d in _files.store_dirs(root, kind=JOB) if not is_complete(d)]


def find_complete(root: str | os.PathLike, config_hash: str) -> Path | None:
    """The first directory under ``root`` holding a complete job with this hash, or None
    (also None when ``root`` does not exist yet)."""
    r = Path(root)
    if not r.is_dir():
        return None
    return next((d for d in _files.store_dirs(r, kind=JOB) if is_complete(d, config_hash)), None)


def load_results(path: str | os.PathLike, *, on_error: str | Callable[[Path, str], None] = "raise") -> pd.DataFrame:
    """One results table from a parquet file, or from every complete job under a
    directory (:func:`resultstore.files.read_tables` with the job schema checked);
    a directory without complete jobs gives an empty table with the schema columns.
    ``on_error``: ``"raise"``, ``"warn"`` (:class:`UnreadableResults`) or a callable
    ``on_error(file, message)``."""
    return _files.read_tables(path, kind=JOB, check=True, on_error=on_error)


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
    return _files.write_table(path, df, kind=JOB)
