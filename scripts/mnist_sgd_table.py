"""The MNIST table with per-step switching and plain SGD, its learning rate swept.

Reads ``DIR/lr_<lr>/summary.csv`` (one real-model run per learning rate, as written by
``ONLY=mnist_sgd bash scripts/gpu_real_model.sh``) and prints a markdown table: one row per
method, one column per learning rate (test accuracy %, median +- std over seeds; "div k/n"
when k of the n seeds diverged), and the best learning rate of each method (highest median
among the learning rates where no seed diverged).

    python scripts/mnist_sgd_table.py paper_results/h200/real_model/mnist_sgd > table.md
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd


def load(root: Path) -> pd.DataFrame:
    """One row per (learning rate, configuration) from every ``lr_*/summary.csv`` under ``root``."""
    frames = []
    for path in sorted(root.glob("lr_*/summary.csv")):
        frame = pd.read_csv(path)
        frame["lr"] = float(path.parent.name.removeprefix("lr_"))
        frames.append(frame)
    if not frames:
        raise SystemExit(f"error: DIR: no lr_*/summary.csv under {root}")
    return pd.concat(frames, ignore_index=True)


def _cell(row) -> str:
    n, bad = int(row.seeds), int(row.diverged)
    if bad == n or not math.isfinite(row.acc_median):
        return f"div {bad}/{n}"
    text = f"{row.acc_median:.2f} +- {row.acc_std:.2f}"
    return text + (f" (div {bad}/{n})" if bad else "")


def table(frame: pd.DataFrame) -> str:
    """The markdown table (rows in the order of the first run's summary)."""
    lrs = sorted(frame["lr"].unique())
    labels = list(dict.fromkeys(frame["label"]))
    head = ["method", "trainable / seed"] + [f"lr {lr:g}" for lr in lrs] + ["best lr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        rows = frame[frame["label"] == label].set_index("lr")
        cells = [_cell(rows.loc[lr]) if lr in rows.index else "" for lr in lrs]
        clean = rows[(rows["diverged"] == 0) & rows["acc_median"].notna()]
        best = f"{clean['acc_median'].idxmax():g}" if len(clean) else "none"
        trainable = f"{rows['trainable_params'].iloc[0]:,.1f}".replace(".0", "")
        lines.append("| " + " | ".join([label, trainable] + cells + [best]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="folder holding lr_<lr>/summary.csv")
    args = ap.parse_args(argv)
    frame = load(args.dir)
    first = frame.iloc[0]
    print(f"MNIST, rank {first['rank']}, {first['epochs']} epochs, switch every {first['switch']}, "
          f"optimizer {first['optimizer']}, {first['seeds']} seeds; test accuracy %, median +- std")
    print()
    print(table(frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
