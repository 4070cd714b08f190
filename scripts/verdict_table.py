"""Verdicts per variant of the paper from verify outputs (CSVs of experiments.verify --out,
concatenated; a configuration in two of them is refused): one row per (method, estimator,
stepsize rule), or per ``--keys``, with the count of each verdict and of the exact check's
outcomes. Markdown on stdout.

    python scripts/verdict_table.py paper_results/cpu_ci_reproduce/verdicts.csv
    python scripts/verdict_table.py A.csv B.csv --keys method,p,estimator,estimator_batch,compressor
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from theory.verify import EXACT_VERDICTS, VERDICTS

KEYS = ["method", "estimator", "stepsize_rule"]


def table(verdicts: pd.DataFrame, keys=KEYS) -> pd.DataFrame:
    v = verdicts.copy()
    v["exact_verdict"] = v["exact_verdict"].fillna("")
    rows = []
    for key, g in v.groupby(list(keys), sort=True, dropna=False):
        row = dict(zip(keys, key), configurations=len(g))
        row.update({w: int((g["verdict"] == w).sum()) for w in VERDICTS})
        row.update({w: int((g["exact_verdict"] == w).sum()) for w in EXACT_VERDICTS})
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--keys", default=",".join(KEYS), help="columns to group by (comma-separated)")
    args = ap.parse_args(argv)
    v = pd.concat([pd.read_csv(f) for f in args.csv], ignore_index=True)
    if v["config_hash"].duplicated().any():
        print(f"error: csv: configuration {v.loc[v['config_hash'].duplicated(), 'config_hash'].iloc[0]} "
              "is in more than one file", file=sys.stderr)
        return 2
    keys = args.keys.split(",")
    missing = [k for k in keys if k not in v.columns]
    if missing:
        print(f"error: --keys: no column {missing[0]!r} in the csv", file=sys.stderr)
        return 2
    out = table(v, keys)
    cols = list(out.columns)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for rec in out.itertuples(index=False):
        print("| " + " | ".join("" if pd.isna(x) else str(x) for x in rec) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
