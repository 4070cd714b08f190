"""Reading results files: the results store's file layout (``results.parquet``
beside a ``_COMPLETE`` JSON marker whose ``results_bytes`` is the parquet's
size), read with pandas only; never imports the solvers or the experiments.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas as pd

RESULTS_FILE = "results.parquet"
COMPLETE_MARKER = "_COMPLETE"
COLLECTED_FILE = "collected.parquet"


class UnreadableResults(UserWarning):
    """A results file that could not be read was skipped."""


def _complete(d: Path) -> bool:
    try:
        info = json.loads((d / COMPLETE_MARKER).read_text(encoding="utf-8"))
        return int(info["results_bytes"]) == (d / RESULTS_FILE).stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _read(path: Path) -> pd.DataFrame | None:
    """The table in ``path``, or None (with an :class:`UnreadableResults` warning
    naming the file) when it cannot be read: a corrupt or truncated file must not
    cost the figures of every other job."""
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types (ArrowInvalid, OSError, ...)
        warnings.warn(f"skipping {path}: cannot read parquet ({type(err).__name__}: {err})",
                      UnreadableResults, stacklevel=3)
        return None


def load(path: str | os.PathLike) -> pd.DataFrame:
    """A results table from a parquet file, or from the complete jobs under a
    directory (recursively); a directory without any falls back to its
    ``collected.parquet``. Unreadable files are skipped with an
    :class:`UnreadableResults` warning. Returns an empty DataFrame when nothing
    is found."""
    p = Path(path)
    if p.is_file():
        df = _read(p)
        return pd.DataFrame() if df is None else df
    if not p.is_dir():
        return pd.DataFrame()
    tables, found = [], False
    for here, dirs, files in os.walk(p):
        dirs.sort()
        if RESULTS_FILE in files and _complete(Path(here)):
            found = True
            t = _read(Path(here) / RESULTS_FILE)
            if t is not None and len(t):
                tables.append(t)
    if tables:
        return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    if not found and (p / COLLECTED_FILE).is_file():
        df = _read(p / COLLECTED_FILE)
        return pd.DataFrame() if df is None else df
    return pd.DataFrame()
