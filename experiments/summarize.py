"""Compact summary of a results table: one row per job at its last evaluation point.

    python -m experiments.summarize RESULTS [-o summary.csv]

Median and 10-90% quantiles over seeds of ||grad f||^2 and f - f* at the final
iteration, the theorem's bound there, epochs, diverged count and the job's wall
time, one row per ``config_hash``, labelled by the core configuration columns and
every other configuration column that varies in the table. Small enough to keep
in the repository next to paper_repro.md.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

#: label columns always shown (when present), before those that vary
CORE = ("problem", "method", "estimator", "p", "rank", "stepsize_factor", "gamma")


def label_columns(table: pd.DataFrame) -> list[str]:
    """The core labels, then every other configuration column (naming convention of
    :mod:`experiments.conf.schema`) that takes more than one value in ``table``."""
    from experiments.conf.check import is_config_column

    varying = [c for c in table.columns if c not in CORE and is_config_column(c)
               and table[c].nunique(dropna=False) > 1]
    return [c for c in CORE if c in table.columns] + varying


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per job (``config_hash``) at its last evaluation point: its labels
    (:func:`label_columns`), then the statistics over seeds."""
    last = table[table["iteration"] == table.groupby("config_hash")["iteration"].transform("max")]
    g = last.groupby("config_hash", sort=False)
    out = g.agg(seeds=("seed", "nunique"), iteration=("iteration", "max"), epochs=("epochs", "median"),
                grad_norm_sq_median=("grad_norm_sq", "median"),
                grad_norm_sq_q10=("grad_norm_sq", lambda s: s.quantile(0.1)),
                grad_norm_sq_q90=("grad_norm_sq", lambda s: s.quantile(0.9)),
                f_gap_median=("f_gap", "median"), bound=("bound", "first"), bound_metric=("bound_metric", "first"),
                diverged=("diverged", "sum"), time_s=("time_s", "max")).reset_index()
    labels = label_columns(table)
    out = g[labels].first().reset_index().merge(out, on="config_hash")
    out = out[labels + ["config_hash"] + [c for c in out.columns if c not in labels and c != "config_hash"]]
    return out.sort_values(labels, na_position="first", kind="stable").reset_index(drop=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.summarize", description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args(argv)
    from experiments.results import load_results

    try:
        table = load_results(args.path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"summarize: {exc}", file=sys.stderr)
        return 2
    if table.empty:
        print(f"summarize: {args.path}: no complete results", file=sys.stderr)
        return 2
    out = summarize(table)
    if args.out:
        out.to_csv(args.out, index=False, float_format="%.6g")
    print(out.to_string(index=False, max_rows=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
