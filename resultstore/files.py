"""The results store on disk: one atomic writer, one completion marker, one reader.

A store directory holds one table (a Hydra job, or one real-model configuration or
run) as::

    results.parquet   the table (:mod:`resultstore.schema`), or other files (real model)
    config.yaml       the configuration (plain YAML, sorted keys)
    _COMPLETE         JSON marker, written last: a directory without it did not finish

Every file is written atomically (:func:`atomic_write`: a temporary file beside the
target, flushed to disk, then ``os.replace``), and a stale marker is removed before
anything else is written, so an interrupted writer never leaves a directory that
looks complete. The marker names the ``config_hash`` of ``config.yaml``; its other
keys depend on the kind of table (:data:`resultstore.schema.KINDS`):

* ``job`` (no ``kind`` key; the Hydra jobs' format since schema version 2):
  ``rows``, ``results_bytes`` (the size of ``results.parquet``), ``schema_version``;
* ``real_model``: ``kind``, ``table_version``, ``files`` ({name: size in bytes} of
  every file it vouches for) and, with a table, ``rows``.

A directory is complete (:func:`is_complete`) iff its marker exists and every size it
records matches. Readers ask for one kind, so a real-model table is never taken for
a job's (their columns differ) even when both live under one root.

Temporary files are named ``.<target>.~<host>~<pid>~<random>.tmp`` (:data:`TEMP_RE`),
so that ``experiments.storage.remove_stale_temps`` can tell the suite's leftovers
from anybody else's files. This module needs pandas, pyarrow and pyyaml only.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from resultstore.schema import (JOB, KINDS, REAL_MODEL, REAL_MODEL_VERSION, SCHEMA_VERSION, canonical_order, coerce,
                                empty_table, rename_old_columns, validate)

RESULTS_FILE = "results.parquet"
CONFIG_FILE = "config.yaml"
COMPLETE_MARKER = "_COMPLETE"
#: what ``experiments.collect`` writes at a sweep's root
COLLECTED_FILE = "collected.parquet"
#: Every file :func:`write_job` writes into a job folder.
JOB_FILES = (RESULTS_FILE, CONFIG_FILE, COMPLETE_MARKER)

Writer = Callable[[str], None]  # writes the whole file at the given (temporary) path

# --------------------------------------------------------------------------- atomic writes

#: The suite's temporary files: ``.<target>.~<host>~<pid>~<random>.tmp``.
TEMP_RE = re.compile(r"^\.(?P<target>.+)\.~(?P<host>[^~/]*)~(?P<pid>\d+)~(?P<token>[0-9a-f]+)\.tmp$")
HOST = socket.gethostname().replace("~", "_").replace("/", "_")


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` following :data:`TEMP_RE`."""
    return path.parent / f".{path.name}.~{HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp"


def _fsync(path: os.PathLike | str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, write: Writer, *, mode: int = 0o644) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it
    over ``path``. On any exception (KeyboardInterrupt included) the temporary
    file is removed and ``path`` is untouched. ``mode``: the new file's permission
    bits (before the umask)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.close(fd)
        write(str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def text_writer(text: str) -> Writer:
    """A ``write(tmp)`` for :func:`atomic_write` that writes ``text`` (UTF-8)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return write


def _write_parquet(df: pd.DataFrame, tmp: str) -> None:
    df.to_parquet(tmp, index=False)


def parquet_writer(df: pd.DataFrame) -> Writer:
    """A ``write(tmp)`` for :func:`atomic_write` that writes ``df`` as parquet (no index)."""
    return lambda tmp: _write_parquet(df, tmp)


def dump_yaml(data: Mapping) -> str:
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=True, default_flow_style=False)


# --------------------------------------------------------------------------- markers

def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker's JSON, or None (absent, unreadable, not a JSON object)."""
    try:
        info = json.loads((Path(directory) / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def marker_kind(info: Mapping) -> str:
    return str(info.get("kind", JOB))


def _sizes_match(d: Path, info: Mapping) -> bool:
    files = info.get("files")
    if marker_kind(info) == JOB:
        files = {RESULTS_FILE: info.get("results_bytes")}
        if not (d / CONFIG_FILE).is_file():
            return False
    if not isinstance(files, dict):
        return False
    for name, size in files.items():
        try:
            if (d / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def is_complete(directory: str | os.PathLike, config_hash: str | None = None, *, kind: str | None = JOB) -> bool:
    """True iff ``directory`` holds a finished write of ``kind`` (None: any kind):
    marker present, of that kind, naming ``config_hash`` when given, and every size
    it records matching the file on disk."""
    d = Path(directory)
    info = read_marker(d)
    if info is None or (kind is not None and marker_kind(info) != kind):
        return False
    if config_hash is not None and info.get("config_hash") != config_hash:
        return False
    return _sizes_match(d, info)


def remove_marker(directory: str | os.PathLike) -> None:
    try:
        (Path(directory) / COMPLETE_MARKER).unlink()
    except FileNotFoundError:
        pass


def write_marked(directory: str | os.PathLike, files: Mapping[str, Writer], config: Mapping, *,
                 config_hash: str, kind: str, rows: int | None = None,
                 marker: Mapping | None = None) -> Path:
    """The one writer of the store: ``files`` (name -> writer) and ``config.yaml``
    into ``directory``, marker last (``marker``: further JSON fields it records, e.g. a
    job's ``overrides``).

    Order: remove a stale marker; each file in the given order; ``config.yaml``
    (``config`` as plain data: str, numbers, bool, None, lists, dicts); the marker
    (module docstring) naming ``config_hash``. ``rows``: the row count of
    ``results.parquet`` when ``files`` has one. Returns the directory."""
    if kind not in KINDS:
        raise ValueError(f"kind: unknown table kind {kind!r} (choose {' or '.join(KINDS)})")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    remove_marker(d)
    for name, write in files.items():
        atomic_write(d / name, write)
    atomic_write(d / CONFIG_FILE, text_writer(dump_yaml(config)))
    if kind == JOB:
        info = {"config_hash": config_hash, "rows": int(rows), "results_bytes": (d / RESULTS_FILE).stat().st_size,
                "schema_version": SCHEMA_VERSION}
    else:
        names = [*files, CONFIG_FILE]
        info = {"kind": kind, "config_hash": config_hash, "table_version": REAL_MODEL_VERSION,
                "files": {name: (d / name).stat().st_size for name in names}}
        if RESULTS_FILE in files and rows is not None:
            info["rows"] = int(rows)
    info.update(marker or {})
    atomic_write(d / COMPLETE_MARKER, text_writer(json.dumps(info, sort_keys=True) + "\n"))
    return d


def write_table_dir(directory: str | os.PathLike, df: pd.DataFrame, config: Mapping, *, config_hash: str,
                    kind: str = JOB, extra: Mapping[str, Writer] | None = None,
                    marker: Mapping | None = None) -> Path:
    """Write one table of ``kind`` (coerced to and checked against its schema; its
    ``config_hash`` column filled from ``config_hash`` when absent, and refused when it
    names another) with its configuration. Returns the path of ``results.parquet``."""
    table = df.copy()
    if "config_hash" not in table.columns:
        table["config_hash"] = config_hash
    table = validate(coerce(table, kind), kind).reset_index(drop=True)
    found = set(table["config_hash"].astype(str).unique())
    if found and found != {config_hash}:
        raise ValueError(f"results table: config_hash column {sorted(found)} does not match "
                         f"the hash of the config ({config_hash})")
    files = {RESULTS_FILE: parquet_writer(table), **(extra or {})}
    write_marked(directory, files, config, config_hash=config_hash, kind=kind, rows=len(table), marker=marker)
    return Path(directory) / RESULTS_FILE


def write_table(path: str | os.PathLike, df: pd.DataFrame, *, kind: str = JOB) -> Path:
    """Atomically write a (collected) table of ``kind`` to ``path`` (no marker)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table = validate(coerce(df, kind), kind).reset_index(drop=True)
    atomic_write(p, parquet_writer(table))
    return p


# --------------------------------------------------------------------------- reading

def store_dirs(root: str | os.PathLike, *, kind: str = JOB):
    """Folders under ``root`` (itself included, sorted walk) holding a table of
    ``kind``, complete or not. A folder whose marker names another kind belongs to
    that kind and is never listed; a folder without a marker counts as a ``job``
    (a job killed before it finished)."""
    for here, dirs, files in os.walk(root):
        dirs.sort()
        if RESULTS_FILE in files or COMPLETE_MARKER in files:
            info = read_marker(here) if COMPLETE_MARKER in files else None
            found = marker_kind(info) if info is not None else JOB
            if found == kind:
                yield Path(here)


def complete_dirs(root: str | os.PathLike, *, kind: str = JOB) -> list[Path]:
    """Directories under ``root`` holding a complete table of ``kind``, sorted."""
    return [d for d in store_dirs(root, kind=kind) if is_complete(d, kind=kind)]


def complete_hashes(root: str | os.PathLike, *, kind: str = JOB) -> dict[str, Path]:
    """{config_hash: directory} for every complete table of ``kind`` under ``root``
    (one walk; the first directory in walk order wins)."""
    out: dict[str, Path] = {}
    if not Path(root).is_dir():
        return out
    for d in store_dirs(root, kind=kind):
        info = read_marker(d)
        if info is not None and is_complete(d, info.get("config_hash"), kind=kind):
            out.setdefault(str(info["config_hash"]), d)
    return out


def read_config(directory: str | os.PathLike) -> dict:
    """The ``config.yaml`` of a store directory as plain data."""
    import yaml

    return yaml.safe_load((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8")) or {}


class UnreadableResults(UserWarning):
    """A results file that cannot be read or is not a results table (skipped)."""


def _read_one(path: Path, kind: str | None) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises OSError, ArrowInvalid, ... for a bad file
        raise ValueError(f"{path}: cannot read parquet ({type(err).__name__}: {err})") from None
    try:
        return rename_old_columns(df) if kind is None else validate(coerce(df, kind), kind)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def read_tables(path: str | os.PathLike, *, kind: str = JOB, check: bool = True,
                on_error: str | Callable[[Path, str], None] = "raise", collected: bool = False) -> pd.DataFrame:
    """The one reader: a table from a parquet file, or from every complete table of
    ``kind`` under a directory (recursively; incomplete ones are ignored), in sorted
    path order. Old column names are made current (:func:`resultstore.schema.coerce`).

    Parameters
    ----------
    path : a parquet file or a directory.
    kind : the kind of table to collect from a directory (:data:`resultstore.schema.KINDS`).
    check : coerce and validate each table against the kind's schema (a file that
        fails counts as unreadable); False reads any parquet (old names still renamed).
    on_error : a file that cannot be read or checked: ``"raise"`` (ValueError naming
        the file), ``"warn"`` (skip it with an :class:`UnreadableResults` warning), or
        a callable ``on_error(file, message)`` called before the file is skipped.
    collected : a directory without any complete table falls back to its
        ``collected.parquet`` (what ``experiments.collect`` writes).

    Returns an empty table (the kind's columns when ``check``) when nothing is found.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    if not (callable(on_error) or on_error in ("raise", "warn")):
        raise ValueError(f"on_error: expected 'raise', 'warn' or a callable, got {on_error!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {p}")
    if p.is_file():
        files = [p]
    else:
        files = [d / RESULTS_FILE for d in complete_dirs(p, kind=kind)]
        if not files and collected and (p / COLLECTED_FILE).is_file():
            files = [p / COLLECTED_FILE]
    tables = []
    for f in files:
        try:
            t = _read_one(f, kind if check else None)
        except ValueError as err:
            if on_error == "raise":
                raise
            if on_error == "warn":
                warnings.warn(f"skipped {err}", UnreadableResults, stacklevel=2)
            else:
                on_error(f, str(err))
            continue
        if len(t) or len(files) == 1:
            tables.append(t)
    if not tables:
        return empty_table(kind) if check else pd.DataFrame()
    if p.is_file():
        return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    # read from folders: the tables in the order of their configurations and the columns in
    # canonical order, so that the table depends on the jobs only, never on where they were
    # written (a Hydra sweep's folders, experiments.sweep's) or in what order
    tables.sort(key=_table_order)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    return table[canonical_order(table.columns, kind)]


_ORDER = ("problem", "method", "estimator", "sketch", "compressor", "stepsize_rule", "p", "rank", "stepsize_factor",
          "data", "config_hash")


def _table_order(t: pd.DataFrame) -> tuple:
    """Sort key of a one-job table: its configuration's leading columns, then its hash."""
    return tuple(str(t[c].iloc[0]) if c in t.columns and len(t) else "" for c in _ORDER)


__all__ = ["RESULTS_FILE", "CONFIG_FILE", "COMPLETE_MARKER", "COLLECTED_FILE", "JOB_FILES", "TEMP_RE", "HOST",
           "temp_path", "atomic_write", "text_writer", "parquet_writer", "dump_yaml", "read_marker", "marker_kind",
           "is_complete", "remove_marker", "write_marked", "write_table_dir", "write_table", "store_dirs",
           "complete_dirs", "complete_hashes", "read_config", "UnreadableResults", "read_tables", "REAL_MODEL"]
