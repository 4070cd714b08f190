"""File safety around the results store: the suite's own temporary files, the
``results_root`` check, and storage-error recognition. The atomic writer itself
(:func:`atomic_write`, :data:`TEMP_RE`) is :mod:`resultstore.files`, re-exported here.

Temporary files are named ``.<target>.~<host>~<pid>~<random>.tmp`` beside their
target (:data:`TEMP_RE` is the one definition of that pattern), so a later run
can tell the suite's leftovers from anybody else's files and can tell whether
their writer is still alive: :func:`remove_stale_temps` removes a matching file
only when its writer was a process of this host that no longer exists, or when
it is older than ``min_age_s`` (writers on other hosts of a shared file system).
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from resultstore.files import HOST, TEMP_RE, atomic_write, temp_path, text_writer  # noqa: F401 (one definition)

#: errno values that mean "this folder cannot take our files" (disk full, quota,
#: read-only file system, no permission): every further job would fail alike.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(root: str | os.PathLike, *, min_age_s: float = 3600.0) -> list[Path]:
    """Remove the suite's leftover temporary files under ``root`` (recursively).

    A file is removed only if its name matches :data:`TEMP_RE` and either its
    writer was a process of this host that has exited, or it was last modified
    more than ``min_age_s`` seconds ago. Anything else is left alone. Returns the
    removed paths; a missing ``root`` gives ``[]``.
    """
    removed = []
    now = time.time()
    for here, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            m = TEMP_RE.match(name)
            if m is None:
                continue
            p = Path(here) / name
            mine_dead = m["host"] == HOST and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"]))
            try:
                old = now - p.stat().st_mtime > min_age_s
            except FileNotFoundError:
                continue
            if mine_dead or old:
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    return removed


def is_storage_error(exc: BaseException) -> bool:
    """True for an OSError that no later job could avoid (disk full, read-only, ...)."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def check_results_root(value) -> Path:
    """``results_root`` as a Path, or ValueError("results_root: ...").

    Refused: empty or missing (the job folders would land at the file-system
    root, ``/runs``), and an existing path that is not a folder. A folder that
    does not exist yet is fine (it is created when the first job writes).
    """
    if value is None or not str(value).strip():
        raise ValueError("results_root: must name a folder, got an empty value "
                         "(jobs would be written to /runs at the file-system root)")
    p = Path(str(value)).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"results_root: {p} exists and is not a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"results_root: {parent} (a parent of {p}) is not a folder")
            break
    return p
