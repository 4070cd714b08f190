"""Gather every complete job table under a directory into one parquet file.

    python -m experiments.collect DIR [-o OUT]

OUT defaults to DIR/collected.parquet (never re-read as a job table: only
``results.parquet`` files beside a completion marker count). Exit status 2, with
one line on stderr, when DIR does not exist or holds no complete job.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.results import complete_jobs, incomplete_jobs, load_results, write_table

DEFAULT_NAME = "collected.parquet"


def collect(root: str | Path, out: str | Path | None = None) -> tuple[Path, int, int]:
    """Write the concatenated table of the complete jobs under ``root`` to ``out``.

    Returns ``(out_path, rows, jobs)``. Raises FileNotFoundError when ``root`` is
    missing or holds no complete job.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    jobs = complete_jobs(root)
    if not jobs:
        raise FileNotFoundError(f"no complete results under {root}")
    table = load_results(root)
    out_path = Path(out) if out is not None else root / DEFAULT_NAME
    write_table(out_path, table)
    return out_path, len(table), len(jobs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="sweep root (searched recursively for complete jobs)")
    ap.add_argument("-o", "--out", default=None, help=f"output parquet (default DIR/{DEFAULT_NAME})")
    args = ap.parse_args(argv)
    try:
        out, rows, jobs = collect(args.dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"collect: {err}", file=sys.stderr)
        return 2
    skipped = len(incomplete_jobs(args.dir))
    note = f" ({skipped} incomplete job(s) ignored)" if skipped else ""
    print(f"collected {rows} rows from {jobs} job(s) into {out}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
