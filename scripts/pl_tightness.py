"""Ratio of the measured mean f_gap to the PL bound at every evaluation point, per
configuration, for results written by the pl_* presets (docs/theory.md#pl-versions).

    python -m experiments.run -m experiment=pl_page results_root=ROOT   (and pl_mvr, ...)
    python scripts/pl_tightness.py ROOT OUT.csv
"""
import sys

from experiments.results import load_results


def main(root, out):
    t = load_results(root)
    t = t[t["bound_metric"] == "f_gap"]
    g = t.groupby(["config_hash", "estimator", "p", "iteration"], as_index=False).agg(
        n_seeds=("seed", "nunique"), mean_f_gap=("f_gap", "mean"), bound=("bound", "first"))
    g["ratio"] = g["mean_f_gap"] / g["bound"]
    g.sort_values(["estimator", "p", "iteration"]).to_csv(out, index=False, float_format="%.6g")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
