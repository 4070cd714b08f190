"""Reading results files for the figures: the store's one reader
(:func:`resultstore.files.read_tables`) in its tolerant mode. It needs pandas and
:mod:`resultstore` only; it never imports the solvers or the experiments.
"""
from __future__ import annotations

import os

import pandas as pd

from resultstore.files import COLLECTED_FILE, COMPLETE_MARKER, RESULTS_FILE, UnreadableResults, read_tables  # noqa: F401


def load(path: str | os.PathLike) -> pd.DataFrame:
    """A results table from a parquet file, or from the complete jobs under a
    directory (recursively); a directory without any falls back to its
    ``collected.parquet``. Unreadable files are skipped with an
    :class:`UnreadableResults` warning (a corrupt file must not cost the figures of
    every other job). Returns an empty DataFrame when nothing is found."""
    try:
        return read_tables(path, check=False, on_error="warn", collected=True)
    except FileNotFoundError:
        return pd.DataFrame()
