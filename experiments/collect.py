"""Gather every complete job table under a directory into one parquet file.

    python -m experiments.collect DIR [-o OUT]

OUT defaults to DIR/collected.parquet (never re-read as a job table: only
``results.parquet`` files beside a completion marker count). A results file
that cannot be read is skipped with a warning naming it; rows that two jobs
both hold (same config hash, seed and iteration: e.g. two sweeps that ran the
same job) are kept once, and the number dropped is reported. Exit status 2,
with one line on stderr, when DIR does not exist or holds no readable job.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.results import (ROW_KEY, complete_jobs, drop_duplicate_rows, incomplete_jobs, load_results,
                                 write_table)

DEFAULT_NAME = "collected.parquet"


def _warn(path, message):
    print(f"collect: warning: {message} (skipped)", file=sys.stderr)


def collect(root: str | Path, out: str | Path | None = None, *, on_error="raise") -> tuple[Path, int, int, int]:
    """Write the table of the complete jobs under ``root`` to ``out``, one row
    per :data:`experiments.results.ROW_KEY`.

    Returns ``(out_path, rows, jobs, duplicates_dropped)``. ``on_error`` is passed
    to :func:`experiments.results.load_results`. Raises FileNotFoundError when
    ``root`` is missing or holds no complete (readable) job.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    jobs = complete_jobs(root)
    if not jobs:
        raise FileNotFoundError(f"no complete results under {root}")
    skipped = []

    def on_bad(path, message):
        skipped.append(path)
        if on_error == "warn":
            _warn(path, message)
        elif callable(on_error):
            on_error(path, message)

    table = load_results(root, on_error="raise" if on_error == "raise" else on_bad)
    if len(skipped) == len(jobs):
        raise FileNotFoundError(f"no readable results under {root} ({len(skipped)} unreadable)")
    table, dropped = drop_duplicate_rows(table)
    out_path = Path(out) if out is not None else root / DEFAULT_NAME
    write_table(out_path, table)
    return out_path, len(table), len(jobs) - len(skipped), dropped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="sweep root (searched recursively for complete jobs)")
    ap.add_argument("-o", "--out", default=None, help=f"output parquet (default DIR/{DEFAULT_NAME})")
    args = ap.parse_args(argv)
    try:
        out, rows, jobs, dropped = collect(args.dir, args.out, on_error="warn")
    except (FileNotFoundError, ValueError) as err:
        print(f"collect: {err}", file=sys.stderr)
        return 2
    skipped = len(incomplete_jobs(args.dir))
    note = f" ({skipped} incomplete job(s) ignored)" if skipped else ""
    if dropped:
        note += f" ({dropped} duplicate row(s) dropped: same {', '.join(ROW_KEY)} in more than one job)"
    print(f"collected {rows} rows from {jobs} job(s) into {out}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
