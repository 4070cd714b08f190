"""Verdicts per variant of the paper from a verify output (CSV of experiments.verify --out):
one row per (method, estimator, stepsize rule) with the count of each verdict and of the
exact check's outcomes. Markdown on stdout.

    python scripts/verdict_table.py paper_results/cpu_ci_reproduce/verdicts.csv
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from theory.verify import EXACT_VERDICTS, VERDICTS

KEYS = ["method", "estimator", "stepsize_rule"]


def table(verdicts: pd.DataFrame) -> pd.DataFrame:
    v = verdicts.copy()
    v["exact_verdict"] = v["exact_verdict"].fillna("")
    rows = []
    for key, g in v.groupby(KEYS, sort=True, dropna=False):
        row = dict(zip(KEYS, key), configurations=len(g))
        row.update({w: int((g["verdict"] == w).sum()) for w in VERDICTS})
        row.update({w: int((g["exact_verdict"] == w).sum()) for w in EXACT_VERDICTS})
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    args = ap.parse_args(argv)
    out = table(pd.read_csv(args.csv))
    cols = list(out.columns)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for rec in out.itertuples(index=False):
        print("| " + " | ".join("" if pd.isna(x) else str(x) for x in rec) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
