"""Check every measured trajectory against its theorem's bound.

    python -m experiments.verify DIR [--confidence 0.99] [--out verdicts.csv]

DIR is a sweep directory (every ``results.parquet`` under it, recursively) or one
parquet file (e.g. the output of ``experiments.collect``). Prints one line per
configuration (``config_hash``, with the parameters that tell the configurations
apart): verdict (holds / violated / inconclusive / not applicable, see
:mod:`theory.verify` and docs/verify.md), tightness (max over the checked points of
mean/bound, with its confidence interval), the seeds that would decide an
inconclusive group, the exact-expectation check (agrees / disagrees) where the
table has an ``exact`` column, and the reason; then a line with the count of each verdict.

Exit status: 0 when no group is 'violated' and no exact check 'disagrees', 1
otherwise, 2 (one line on stderr) when DIR holds no results or cannot be read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from resultstore.files import RESULTS_FILE, complete_dirs, read_tables
from resultstore.schema import JOB
from theory.verify import format_table, verify


class NoResults(Exception):
    pass


def load_tables(path: str | Path) -> pd.DataFrame:
    """One table from a parquet file or from every complete job under a directory
    (the store's reader, :func:`resultstore.files.read_tables`, schema not enforced:
    verify needs only the columns it uses). Incomplete jobs and unreadable files are
    skipped with a warning on stderr; a single unreadable file is :class:`NoResults`."""
    path = Path(path)
    if not path.exists():
        raise NoResults(f"{path}: no such file or directory")
    if path.is_dir():
        from experiments.results import incomplete_jobs

        for d in incomplete_jobs(path):  # a killed job, or a results file changed since it was marked
            print(f"verify: warning: skipping {d}: not a complete job (no marker, or a results file "
                  f"whose size differs from its marker's)", file=sys.stderr)

    def unreadable(f, message):
        if path.is_file():
            raise NoResults(message)
        print(f"verify: warning: skipping {message}", file=sys.stderr)

    table = read_tables(path, kind=JOB, check=False, on_error=unreadable)
    if table.empty:
        found = path.is_file() or complete_dirs(path, kind=JOB)
        raise NoResults(f"{path}: the results tables are empty" if found
                        else f"{path}: no {RESULTS_FILE} found (nothing to verify)")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", metavar="DIR", help="sweep directory or a parquet results table")
    ap.add_argument("--confidence", type=float, default=0.99,
                    help="simultaneous confidence level over a group's checked points (default 0.99)")
    ap.add_argument("--checkpoints", type=int, default=8,
                    help="most points checked per group, log-spaced (default 8)")
    ap.add_argument("--out", default=None, help="also write the verdicts to this .csv or .parquet file")
    args = ap.parse_args(argv)
    if not 0 < args.confidence < 1:
        print(f"verify: --confidence must lie in (0, 1), got {args.confidence}", file=sys.stderr)
        return 2
    if args.checkpoints < 1:
        print(f"verify: --checkpoints must be an integer >= 1, got {args.checkpoints}", file=sys.stderr)
        return 2
    try:
        table = load_tables(args.path)
        verdicts = verify(table, confidence=args.confidence, checkpoints=args.checkpoints)
    except NoResults as err:
        print(f"verify: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"verify: {args.path}: {err}", file=sys.stderr)
        return 2
    print(format_table(verdicts))
    if args.out:
        out = Path(args.out)
        (verdicts.to_parquet if out.suffix == ".parquet" else verdicts.to_csv)(out, index=False)
    failed = (verdicts["verdict"] == "violated").any() or (verdicts["exact_verdict"] == "disagrees").any()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
