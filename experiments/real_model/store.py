"""The real-model section in the results store (:mod:`resultstore`).

Every directory the real-model CLI writes (one configuration's table, the pretrained
models, the whole command's table and report) is written by the store's one writer,
:func:`resultstore.files.write_marked`, with the store's contract:

* every file is written atomically (a temporary file beside it, flushed, then
  ``os.replace``); a stale marker ``_COMPLETE`` is removed first and written last;
* the marker names the ``config_hash`` (:func:`experiments.results.config_hash`) of
  the directory's ``config.yaml``, is of kind ``real_model``
  (:data:`resultstore.schema.REAL_MODEL`) and records the size of every file it
  vouches for; tables are checked against the real-model schema
  (:data:`resultstore.schema.REAL_MODEL_COLUMNS`) before they are written.

A directory is finished (:func:`finished`) iff its marker is of this kind, names
the expected hash, and every file it lists has the recorded size. Readers of the
Hydra jobs ask for kind ``job`` and never take a real-model table for one of theirs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from experiments.results import config_hash
from resultstore import files
from resultstore.files import (RESULTS_FILE, Writer, atomic_write, read_marker, remove_marker,  # noqa: F401
                               text_writer)  # (re-exported for the real-model modules)
from resultstore.schema import REAL_MODEL, REAL_MODEL_VERSION, coerce, validate

KIND = REAL_MODEL
#: Version of the real-model row layout (:data:`resultstore.schema.REAL_MODEL_VERSION`).
TABLE_VERSION = REAL_MODEL_VERSION


def finished(directory, expected_hash: str | None = None) -> bool:
    """True iff ``directory`` holds a finished real-model write (of ``expected_hash``)."""
    return files.is_complete(directory, expected_hash, kind=KIND)


def finished_dirs(root) -> dict:
    """{config_hash: directory} of every finished real-model write under ``root``
    (:func:`resultstore.files.complete_hashes`): the store's skip rule, a configuration
    finished anywhere under the root is not run again."""
    return files.complete_hashes(root, kind=KIND)


def write_marked(directory, written: Mapping[str, Writer], config: Mapping, *, rows: int | None = None) -> str:
    """Write ``written`` (name -> writer) and ``config.yaml`` into ``directory``, marker
    last (:func:`resultstore.files.write_marked`). Returns the configuration's hash."""
    h = config_hash(config)
    files.write_marked(directory, written, config, config_hash=h, kind=KIND, rows=rows)
    return h


def write_table(directory, df: pd.DataFrame, config: Mapping, *, extra: Mapping[str, Writer] | None = None,
                hashes=None) -> str:
    """Write a real-model table (coerced to and checked against the real-model schema)
    and ``extra`` files, marker last. Its ``config_hash`` column must name ``config``
    (one configuration), or only ``hashes`` (a whole command's table, one hash per
    configuration). Returns the hash of ``config``."""
    h = config_hash(config)
    table = validate(coerce(df, KIND), KIND).reset_index(drop=True)
    allowed = {h} if hashes is None else set(hashes)
    found = set(table["config_hash"].astype(str))
    if not found <= allowed:
        raise ValueError(f"results table: config_hash column {sorted(found - allowed)} does not name "
                         f"{'this configuration' if hashes is None else 'a configuration of this run'}")
    files.write_marked(directory, {RESULTS_FILE: files.parquet_writer(table), **(extra or {})}, config,
                       config_hash=h, kind=KIND, rows=len(table))
    return h


def read_table(directory) -> pd.DataFrame:
    """The real-model table of a finished directory (checked against the schema)."""
    return files.read_tables(Path(directory) / RESULTS_FILE, kind=KIND)


def read_config(directory) -> dict | None:
    """``config.yaml`` of a directory as plain data, or None when absent or unreadable."""
    import yaml

    try:
        data = files.read_config(directory)
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


class ClaimError(RuntimeError):
    """Another live process holds the directory; the message is one line."""


#: the name under which a command claims its whole OUT folder (:mod:`experiments.claims`:
#: ``OUT/.claims/<name>.lock``, held with ``flock`` while the command runs)
OUT_CLAIM = "real_model-out"


@contextlib.contextmanager
def claim(directory, *, field: str = "out"):
    """Hold ``directory`` for this process while the block runs, with the store's job
    claims (:func:`experiments.claims.try_claim`): the kernel drops the lock when the
    holder exits however it exits, so a killed run's claim is taken over and a live
    one's never is (:class:`ClaimError` naming ``field``, the holder's pid and host)."""
    from experiments import claims

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    held = claims.try_claim(d, OUT_CLAIM, out_dir=d)
    if held is None:
        who = claims.holder(d, OUT_CLAIM)
        raise ClaimError(f"{field}: {d} is being written by pid {who.get('pid', '?')} on {who.get('host', '?')} "
                         f"since {who.get('started', '?')}")
    with held:
        yield held.path
