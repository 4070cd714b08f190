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

from experiments.results import rename_old_columns
from theory.verify import format_table, verify

RESULTS_FILE = "results.parquet"


class NoResults(Exception):
    pass


def load_tables(path: str | Path) -> pd.DataFrame:
    """One table from a parquet file or from every results.parquet under a directory."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        # complete jobs only: a job killed mid-write has no completion marker
        from experiments.results import complete_jobs, incomplete_jobs

        files = [Path(d) / RESULTS_FILE for d in complete_jobs(path)]
        for d in incomplete_jobs(path):  # a killed job, or a results file changed since it was marked
            print(f"verify: warning: skipping {d}: not a complete job (no marker, or a results file "
                  f"whose size differs from its marker's)", file=sys.stderr)
    else:
        raise NoResults(f"{path}: no such file or directory")
    if not files:
        raise NoResults(f"{path}: no {RESULTS_FILE} found (nothing to verify)")
    tables = []
    for f in files:
        try:
            tables.append(rename_old_columns(pd.read_parquet(f)))
        except Exception as err:  # pyarrow raises several types for a bad file
            if len(files) == 1:
                raise NoResults(f"{f}: cannot read parquet ({type(err).__name__}: {err})") from None
            print(f"verify: warning: skipping {f}: cannot read parquet ({type(err).__name__}: {err})",
                  file=sys.stderr)
    tables = [t for t in tables if len(t)]
    if not tables:
        raise NoResults(f"{path}: the results tables are empty")
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


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
