"""Job claims: a job is claimed atomically before it runs, so that two sweeps
started into the same ``results_root`` never run it twice.

A claim is the file ``<results_root>/.claims/<config_hash>.lock`` held with an
exclusive, non-blocking ``flock`` for as long as the job runs; its content (JSON:
``pid``, ``host``, ``started``, ``out_dir``) says who holds it. The kernel drops
the lock when the holder exits, however it exits (SIGKILL included), so a claim
left behind by a killed sweep is stale by construction and the next job simply
takes it over; a claim held by a live process is never taken. The holder removes
the file (while still holding the lock) when it is done; a process that locked
the removed file notices that the path no longer names its file and retries.

A job written outside ``results_root`` (``hydra.sweep.dir`` or
``hydra.run.dir`` pointing elsewhere) leaves the pointer
``<results_root>/.claims/<config_hash>.where`` (JSON ``{"dir": ...}``) so that
later sweeps into the same ``results_root`` still find it (:func:`find_recorded`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

from experiments.results import is_complete
from experiments.storage import HOST, atomic_write

CLAIMS_DIR = ".claims"


def _claim_path(root: str | os.PathLike, config_hash: str, suffix: str) -> Path:
    return Path(root) / CLAIMS_DIR / f"{config_hash}.{suffix}"


class Claim:
    """A held claim; :meth:`release` (or leaving the ``with`` block) gives it up."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: nobody can hold this inode meanwhile
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def try_claim(root: str | os.PathLike, config_hash: str, *, out_dir: str | os.PathLike) -> Claim | None:
    """Claim job ``config_hash`` under ``root``; None when a live process holds it.

    Raises
    ------
    ValueError
        ``results_root: ...`` when the file system cannot lock files.
    OSError
        The claims folder cannot be created or written (disk full, read-only).
    """
    path = _claim_path(root, config_hash, "lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise ValueError(f"results_root: cannot lock files under {root} ({err.strerror}); "
                                 "use a results_root on a file system with locking") from None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed this file after we opened it
            os.close(fd)
            continue
        try:
            info = {"pid": os.getpid(), "host": HOST, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "out_dir": str(Path(out_dir).resolve())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode(), 0)
        except BaseException:
            Claim(path, fd).release()
            raise
        return Claim(path, fd)


def holder(root: str | os.PathLike, config_hash: str) -> dict:
    """Who holds the claim on ``config_hash`` (``{}`` if unknown)."""
    try:
        info = json.loads(_claim_path(root, config_hash, "lock").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def record_location(root: str | os.PathLike, config_hash: str, out_dir: str | os.PathLike) -> Path | None:
    """Leave a pointer to a job completed outside ``root``; None if it lies inside."""
    out = Path(out_dir).resolve()
    if _inside(out, Path(root)):
        return None
    path = _claim_path(root, config_hash, "where")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"dir": str(out)}) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)
    return path


def find_recorded(root: str | os.PathLike, config_hash: str) -> Path | None:
    """The complete job recorded by :func:`record_location`, or None."""
    try:
        where = json.loads(_claim_path(root, config_hash, "where").read_text(encoding="utf-8"))["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(where) if is_complete(where, config_hash) else None
