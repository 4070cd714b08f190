"""Rates of the ``nonisotropic_p`` sweep against lambda_min^p (one row per configuration).

    python -m experiments.nonisotropic_rates TABLE.parquet [-o rates.csv]

TABLE is the collected results of ``experiment=nonisotropic_p`` (python -m
experiments.collect). Per configuration (``config_hash``), with a = gamma L and
T_e = a tenth of the last recorded iteration:

* ``rate_bound``: -ln(1 - gamma mu lambda_min^p), the PL bound's rate
  (docs/theory.md#t1); ``rate_isotropic_bound``: the same if E[H_B] were (r/m) I
  (equal for all p);
* ``rate_median_seed``: median over seeds of each run's fitted rate of f_gap
  (:func:`figures.data.rate_table`, as in the rate-vs-p figure);
* ``rate_mean_early``: minus the least-squares slope of log(mean over seeds of f_gap)
  over iterations <= T_e (the theorem bounds the expectation; later the mean of a
  few seeds under-estimates it: the expectation of these multiplicative processes is
  carried by rare runs whose slow coordinate is seldom selected);
* for mu = L only (f = L/2 ||W - W*||^2): entry (i, j) of W - W* is multiplied by
  1 - a each time row i (left step) or column j (right step) is selected, so

  - the expected gap is the closed form sum_ij (1 - (2a - a^2) lambda_ij)^T (L/2) (W0 - W*)_ij^2,
    lambda_ij = p pi_i + (1-p) pi'_j (tests/test_sketches_nonisotropic.py):
    ``rate_exact_early`` is the same fit on it, ``max_abs_z_early`` the largest
    |mean - closed form| / standard error over iterations <= T_e;
  - each run's log f_gap / T tends almost surely to 2 ln(1 - a) min_ij lambda_ij (law of
    large numbers on the selection counts): ``rate_as_predicted`` =
    -2 ln(1 - a) lambda_min^p, to compare with ``rate_median_seed``.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import pandas as pd


def _fit_rate(its, values):
    keep = values > 0
    slope = np.polyfit(its[keep], np.log(values[keep]), 1)[0]
    return -float(slope)


def rates(table: pd.DataFrame) -> pd.DataFrame:
    from experiments.problems import make_problem
    from figures.data import rate_table
    from solvers.sketches import make_sketch

    rows = []
    for _, g in table.groupby("config_hash", sort=False):
        first = g.iloc[0]
        P = g.pivot(index="seed", columns="iteration", values="f_gap")
        its = P.columns.to_numpy(float)
        early = its <= its.max() / 10
        mean = P.mean(axis=0).to_numpy()
        se = P.std(axis=0, ddof=1).to_numpy() / math.sqrt(P.shape[0])
        mu, L, gamma, lmin = (float(first[k]) for k in ("problem_mu", "problem_L", "gamma", "lambda_min_p"))
        p, r, m = float(first["p"]), int(first["rank"]), int(first["problem_m"])
        row = dict(p=p, problem_mu=mu, sketch_left_decay=float(first["sketch_left_decay"]), problem_L=L, gamma=gamma, lambda_min_p=lmin,
                   lambda_max_p=float(first["lambda_max_p"]), n_seeds=P.shape[0],
                   rate_bound=-math.log1p(-gamma * mu * lmin),
                   rate_isotropic_bound=-math.log1p(-gamma * mu * r / m),
                   rate_median_seed=float(rate_table(g, "f_gap")["rate"].iloc[0]),
                   rate_mean_early=_fit_rate(its[early], mean[early]),
                   rate_exact_early=np.nan, max_abs_z_early=np.nan, rate_as_predicted=np.nan)
        if mu == L:
            prob = make_problem("quadratic", m=m, n=int(first["problem_n"]), mu=mu, L=L,
                                seed=int(first["problem_seed"]))
            sk = make_sketch("weighted_column", left_decay=float(first["sketch_left_decay"]),
                             right_decay=float(first["sketch_right_decay"]))
            m_, n_ = prob.shape
            lam = (p * np.diag(sk.expected_projection_matrix(m_, r, side="left"))[:, None]
                   + (1 - p) * np.diag(sk.expected_projection_matrix(n_, r, side="right"))[None, :])
            a = gamma * L
            X0sq = ((prob.W0 - prob.W_star) ** 2).numpy()
            exact = np.array([((1 - (2 * a - a * a) * lam) ** T * L / 2 * X0sq).sum() for T in its])
            z = np.abs(mean - exact)[early & (its > 0)] / se[early & (its > 0)]
            row.update(rate_exact_early=_fit_rate(its[early], exact[early]), max_abs_z_early=float(z.max()),
                       rate_as_predicted=-2 * math.log1p(-a) * lmin)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["problem_mu", "sketch_left_decay", "p"]).reset_index(drop=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args(argv)
    from experiments.results import load_results

    out = rates(load_results(args.table))  # the store's reader: old column names read as current
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(out.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.out:
        out.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
