"""Compact summary of a results table: one row per job at its last evaluation point.

    python -m experiments.summarize RESULTS [-o summary.csv]

Median and 10-90% quantiles over seeds of ||grad f||^2 and f - f* at the final
iteration, the theorem's bound there, epochs, diverged count and the job's wall
time. Small enough to keep in the repository next to paper_repro.md.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

KEYS = ["problem", "method", "estimator", "sketch", "p", "rank", "stepsize", "gamma", "config_hash"]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    last = table[table["iteration"] == table.groupby("config_hash")["iteration"].transform("max")]
    keys = [k for k in KEYS if k in last]
    g = last.groupby(keys, dropna=False)
    out = g.agg(seeds=("seed", "nunique"), iteration=("iteration", "max"), epochs=("epochs", "median"),
                grad_norm_sq_median=("grad_norm_sq", "median"),
                grad_norm_sq_q10=("grad_norm_sq", lambda s: s.quantile(0.1)),
                grad_norm_sq_q90=("grad_norm_sq", lambda s: s.quantile(0.9)),
                f_gap_median=("f_gap", "median"), bound=("bound", "first"), bound_metric=("bound_metric", "first"),
                diverged=("diverged", "sum"), time_s=("time_s", "max")).reset_index()
    if "group_wall_s" in last:
        out = out.merge(g["group_wall_s"].first().reset_index()[["config_hash", "group_wall_s"]], on="config_hash")
    return out.sort_values([k for k in ("problem", "estimator", "stepsize", "method", "rank", "p") if k in out])


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
