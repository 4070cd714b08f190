"""Are two collected results tables the same runs with the same numbers?

    python scripts/compare_collected.py A.parquet B.parquet

Matches the rows of A and B by (config_hash, seed, iteration) and compares every column
bitwise (NaN equals NaN) but the timing ones (``resultstore.schema.TIMING_SUFFIX``: wall
times differ from run to run). Prints what it compared and exits 1 on any difference: a
row in one table only, a column in one table only, or a differing value. Used to check
that two ways of running the same jobs (``scripts/reproduce.sh`` with ``RUNNER=hydra``
and ``RUNNER=sweep``, two versions of the solvers) give the same table.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from resultstore.schema import TIMING_SUFFIX

KEY = ["config_hash", "seed", "iteration"]


def compare(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The differences between ``a`` and ``b`` (empty: the same table), one line each."""
    out = []
    cols_a = {c for c in a.columns if not str(c).endswith(TIMING_SUFFIX)}
    cols_b = {c for c in b.columns if not str(c).endswith(TIMING_SUFFIX)}
    out += [f"column {c} only in the first table" for c in sorted(cols_a - cols_b)]
    out += [f"column {c} only in the second table" for c in sorted(cols_b - cols_a)]
    a, b = a.sort_values(KEY).reset_index(drop=True), b.sort_values(KEY).reset_index(drop=True)
    if len(a) != len(b) or not a[KEY].equals(b[KEY]):
        return out + [f"different rows: {len(a)} against {len(b)} (by {', '.join(KEY)})"]
    for c in sorted(cols_a & cols_b):
        x, y = a[c], b[c]
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            same = np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True)
        else:
            same = x.astype(str).equals(y.astype(str))
        if not same:
            out.append(f"column {c}: {int((x.astype(str) != y.astype(str)).sum())} values differ")
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    a, b = (pd.read_parquet(p) for p in args)
    diff = compare(a, b)
    timing = sorted(c for c in set(a.columns) | set(b.columns) if str(c).endswith(TIMING_SUFFIX))
    print(f"{len(a)} and {len(b)} rows, {len(set(a.columns) & set(b.columns)) - len(timing)} columns compared "
          f"bitwise (not compared: {', '.join(timing)})")
    for line in diff:
        print(line)
    print("the same table" if not diff else f"{len(diff)} difference(s)")
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
