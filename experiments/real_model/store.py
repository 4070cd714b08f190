"""Finished-or-not directories of the real-model CLI (the results store's contract).

The real-model rows (one per configuration and seed: test accuracy, trainable
counts, wall time) do not fit the Hydra jobs' schema (``experiments.results.COLUMNS``:
iterations, losses, bounds), so :func:`experiments.results.write_job` cannot write
them; this module writes them under the same convention:

* every file is written atomically: a temporary file in the same directory, flushed
  to disk, then ``os.replace`` (an interrupted writer leaves the old file or none);
* a stale marker ``_COMPLETE`` (:data:`experiments.results.COMPLETE_MARKER`) is
  removed before anything else is written, and the marker is written last;
* the marker is JSON with the directory's ``config_hash``
  (:func:`experiments.results.config_hash` of its configuration, also written as
  ``config.yaml``), the byte size of every file it vouches for (``files``),
  ``kind: "real_model"`` and, when the directory holds ``results.parquet``, that
  table's ``rows``.

A directory is finished (:func:`finished`) iff its marker exists, is of this kind,
names the expected hash, and every file it lists exists with the recorded size.
The marker deliberately has no ``results_bytes``: the Hydra jobs' readers
(:func:`experiments.results.is_complete`, ``complete_jobs``, ``load_results``,
``python -m experiments.collect``) then never take a real-model table, whose
columns are not theirs, for one of their jobs when both live under one root.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from experiments.storage import atomic_write, pid_alive, text_writer  # noqa: F401 (re-exported)
from experiments.results import COMPLETE_MARKER, CONFIG_FILE, RESULTS_FILE, config_hash

KIND = "real_model"
CLAIM_FILE = "_CLAIM"
#: Version of the real-model row layout (bump when a column changes meaning).
TABLE_VERSION = 1

Writer = Callable[[str], None]  # writes the whole file at the given (temporary) path


def read_marker(directory) -> dict | None:
    """The marker's JSON, or None (absent, unreadable, not a JSON object)."""
    try:
        info = json.loads((Path(directory) / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def finished(directory, expected_hash: str | None = None) -> bool:
    """True iff ``directory`` holds a finished real-model write (of ``expected_hash``)."""
    d = Path(directory)
    info = read_marker(d)
    if info is None or info.get("kind") != KIND or not isinstance(info.get("files"), dict):
        return False
    if expected_hash is not None and info.get("config_hash") != expected_hash:
        return False
    for name, size in info["files"].items():
        try:
            if (d / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def remove_marker(directory) -> None:
    try:
        (Path(directory) / COMPLETE_MARKER).unlink()
    except FileNotFoundError:
        pass


def write_marked(directory, files: Mapping[str, Writer], config: Mapping, *, rows: int | None = None) -> str:
    """Write ``files`` (name -> writer) and ``config.yaml`` into ``directory``, marker last.

    Order: remove a stale marker; ``config.yaml``; each file in the given order; the
    marker. ``config`` must be plain data (str, numbers, bool, None, lists, dicts).
    ``rows``: the row count of ``results.parquet`` when ``files`` has one. Returns
    the configuration's hash."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    h = config_hash(config)
    remove_marker(d)
    atomic_write(d / CONFIG_FILE, text_writer(yaml.safe_dump(dict(config), sort_keys=True, default_flow_style=False)))
    for name, write in files.items():
        atomic_write(d / name, write)
    names = [CONFIG_FILE, *files]
    info = {"kind": KIND, "config_hash": h, "table_version": TABLE_VERSION,
            "files": {name: (d / name).stat().st_size for name in names}}
    if RESULTS_FILE in files and rows is not None:
        info["rows"] = int(rows)
    atomic_write(d / COMPLETE_MARKER, text_writer(json.dumps(info, sort_keys=True) + "\n"))
    return h


def read_config(directory) -> dict | None:
    """``config.yaml`` of a directory as plain data, or None when absent or unreadable."""
    try:
        data = yaml.safe_load((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


class ClaimError(RuntimeError):
    """Another live process holds the directory; the message is one line."""


@contextlib.contextmanager
def claim(directory, *, field: str = "out"):
    """Hold ``directory`` for this process while the block runs.

    ``_CLAIM`` is created with O_EXCL (JSON: pid, host, since) and removed when the
    block ends, exceptions included. A claim held by a live process, or by any
    process on another host (whose liveness cannot be checked), raises
    :class:`ClaimError` naming ``field``; a claim left by a dead process on this host
    (a killed run) is taken over. Two processes taking over the same stale claim at
    the same instant can both succeed; atomic writes keep even that from corrupting
    a file."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / CLAIM_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                held = {}
            pid, host = held.get("pid"), held.get("host")
            if isinstance(pid, int) and host == me["host"] and not pid_alive(pid):
                path.unlink(missing_ok=True)  # a killed run's claim
                continue
            raise ClaimError(f"{field}: {d} is being written by pid {pid} on {host} since {held.get('since')} "
                             f"(remove {path} if that process is gone)") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(me) + "\n")
        break
    else:  # pragma: no cover - a third process re-created it between our two attempts
        raise ClaimError(f"{field}: {d} is being claimed by another process; try again")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
