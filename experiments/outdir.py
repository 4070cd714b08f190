"""A job deletes only what it created.

Hydra creates a job's output folder, and its log file in it, before the job's
code runs, and the user may name a folder that already exists
(``hydra.run.dir=.``). So the Hydra callback :class:`OutputDirs` (listed under
``hydra.callbacks`` in ``conf/config.yaml``) runs before Hydra creates anything:
it refuses a bad ``results_root`` with one line, records whether the run
folder (``-m``: the sweep folder) existed and which entries it held, and
creates it (a location that cannot take files is refused in one line). The record
travels to the job through the environment variable :data:`ENV`, so launchers
that run jobs in other processes (joblib, submitit) see it too.

:class:`JobFolder` then knows, inside the job, which entries of its folder were
there before (never touched) and which were made for this job (Hydra's log
file, the job's own files): :meth:`JobFolder.clean` removes only the latter, and
the folder itself only if it was created for this job and is empty afterwards.
Without a record (callback removed) everything found in the folder is treated as
the user's.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

ENV = "BLORA_PREEXISTING"
#: A folder with more entries than this is recorded as "existed, contents unknown".
MAX_ENTRIES = 2000
#: The file Hydra's multirun writes into a sweep folder it creates.
MULTIRUN_FILE = "multirun.yaml"


def _snapshot(folder: Path) -> dict:
    if not folder.exists():
        first_new = folder  # the outermost folder Hydra will have to create
        while not first_new.parent.exists():
            first_new = first_new.parent
        return {"dir": str(folder), "existed": False, "entries": [], "stop": str(first_new.parent)}
    try:
        names = os.listdir(folder)
    except OSError:
        names = None
    if names is not None and len(names) > MAX_ENTRIES:
        names = None
    return {"dir": str(folder), "existed": True, "entries": names}


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover - Hydra is a dependency of the app only
    _Callback = object


class OutputDirs(_Callback):
    """Hydra callback: refuse a bad ``results_root``, record the output folder as
    it was before Hydra touched it, and create it (so that a full, read-only or
    forbidden location is reported in one line before any job starts)."""

    def on_run_start(self, config, **kwargs) -> None:
        _prepare(config, config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        _prepare(config, config.hydra.sweep.dir, "hydra.sweep.dir")

    def on_multirun_end(self, config, **kwargs) -> None:
        remove_unused_sweep()


def _prepare(config, folder, field: str) -> None:
    from experiments.storage import check_results_root, is_storage_error

    try:
        root = check_results_root(config.get("results_root")).resolve()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    folder = Path(str(folder)).resolve()
    os.environ[ENV] = json.dumps(_snapshot(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if not is_storage_error(err):
            raise
        name = "results_root" if root == folder or root in folder.parents else field
        print(f"error: {name}: cannot create {err.filename or folder}: {err.strerror}", file=sys.stderr)
        sys.exit(2)


def remove_unused_sweep() -> None:
    """Remove the sweep folder if it was made for this sweep and got no job (all
    skipped or refused): it then holds only Hydra's ``multirun.yaml``."""
    rec = _record()
    if rec is None or rec["existed"]:
        return
    folder = Path(rec["dir"])
    try:
        if os.listdir(folder) == [MULTIRUN_FILE]:
            (folder / MULTIRUN_FILE).unlink()
            _remove_empty(folder, Path(rec["stop"]))
    except OSError:
        pass


def _record() -> dict | None:
    try:
        rec = json.loads(os.environ[ENV])
        return rec if isinstance(rec, dict) and "dir" in rec else None
    except (KeyError, ValueError):
        return None


def _remove_empty(folder: Path, stop: Path) -> None:
    """rmdir ``folder`` and then its parents below ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


class JobFolder:
    """The job's output folder, split into the user's entries and this job's."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).resolve()
        present = set(os.listdir(self.path)) if self.path.is_dir() else set()
        before, self.created, self._stop = self._before(present)
        self.mine = present - before  # made by Hydra for this job (its log file)
        self.theirs = present & before

    def _before(self, present: set[str]):
        """(entries that existed before, folder created for this job?, where created folders end)."""
        rec = _record()
        unknown = (present, False, None)
        if rec is None:
            return unknown
        top = Path(rec["dir"])
        if self.path == top:
            if not rec["existed"]:
                return set(), True, Path(rec["stop"])
            return (set(rec["entries"]), False, None) if rec["entries"] is not None else unknown
        try:
            first = self.path.relative_to(top).parts[0]
        except (ValueError, IndexError):
            return unknown
        if not rec["existed"] or (rec["entries"] is not None and first not in rec["entries"]):
            return set(), True, top
        return unknown

    def add(self, *names: str) -> None:
        """Entries this job is about to write (ignored if they were the user's)."""
        self.mine.update(n for n in names if n not in self.theirs)

    def clean(self, *, keep_log: bool = False) -> None:
        """Remove this job's entries (Hydra's log file too unless ``keep_log``), then
        the folder and the parents made for it, if it was made for this job and is empty."""
        if not keep_log:
            _close_file_logs(self.path)
        for name in sorted(self.mine):
            p = self.path / name
            if keep_log and name.endswith(".log"):
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)  # made by Hydra for this job (e.g. .hydra/)
                else:
                    p.unlink()
            except FileNotFoundError:
                pass
        if self.created:
            _remove_empty(self.path, self._stop)


def _close_file_logs(folder: Path) -> None:
    """Close and detach the logging FileHandlers writing into ``folder``."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in list(lg.handlers):
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == folder:
                lg.removeHandler(h)
                h.close()
