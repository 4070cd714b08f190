r"""False-alarm rate of :func:`theory.verify.verify` on honest runs of exact cases.

Each case is one configuration on the exactly solvable quadratic (its exact expectation
is attached by :mod:`experiments.exact`). It runs as ONE batched job of ``reps * seeds``
seeds (seed 0, 1, ...); repetition ``k`` is the disjoint block of seeds
``[k * seeds, (k + 1) * seeds)``, verified on its own at the default confidence 0.99.
The runs are honest, so every flag is a false alarm:

* ``violated`` (the bound check; nominal level :math:`\alpha = 0.01`: P(violated while
  every checked :math:`\mu_T \le b_T`) :math:`\le \alpha`, docs/verify.md);
* exact ``disagrees`` (the two-sided check against the exact expectation; nominal
  :math:`\alpha = 0.01`, each side at :math:`\alpha/(2K)`);
* either of them (nominal :math:`\le 2\alpha` by the union bound).

Reported per case and check: the count, the rate and its two-sided 95% Clopper-Pearson
interval, and the binomial tail P(X >= count) at the nominal level.

    python scripts/false_alarm_rate.py [--reps 1000] [--seeds 10] [--out paper_results/false_alarm_rate.txt]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.conf.schema import job_config  # noqa: E402
from experiments.job import execute  # noqa: E402
from resultstore.files import atomic_write, text_writer  # noqa: E402
from theory.verify import exact_verdict, verify  # noqa: E402

CONFIDENCE = 0.99
NOMINAL = 1 - CONFIDENCE
QUADRATIC = {"problem": "quadratic", "problem.m": 3, "problem.n": 2, "problem.mu": 0.5, "problem.L": 4.0,
              "problem.seed": 1, "problem.n_samples": 8, "problem.noise": 1.0, "problem.n_clients": 2,
              "problem.heterogeneity": 0.5, "method.p": 0.2, "method.rank": 1, "stepsize.factor": 0.3,
              "steps": 60, "eval_every": 1, "device": "cpu", "progress": False}
#: the isotropic quadratic f = L/2 ||W - W*||^2 (mu = L) of nonisotropic_p, 3 x 2
ISOTROPIC = {"problem": "quadratic", "problem.m": 3, "problem.n": 2, "problem.mu": 4.0, "problem.L": 4.0,
             "method.p": 0.2, "method.rank": 1, "steps": 40, "eval_every": 1, "device": "cpu", "progress": False}
#: case -> job_config overrides (the number of seeds is set by the run)
CASES = {
    # Bernoulli-LoRA-GD, PL bound with slack
    "bl-gd": QUADRATIC,
    # a stochastic estimator: additive-noise SGD
    "bl-sgd-noise": {**QUADRATIC, "estimator": "sgd", "estimator.noise": 2.0, "estimator.batch": None},
    # a variance-reduced estimator: PAGE (minibatch 2 of 8, q = 0.3)
    "bl-page": {**QUADRATIC, "estimator": "page", "estimator.batch": 2, "estimator.q": 0.3},
    # isotropic mu = L at gamma = 1/L: the PL bound is attained, E f_T = bound (the hardest case
    # for the bound check: every checked mean sits exactly on the bound)
    "bl-gd-bound-attained": {**ISOTROPIC, "stepsize.factor": 1.0},
}
CHECKS = {"violated": lambda v: v["verdict"] == "violated",
          "disagrees": lambda v: v["exact_verdict"] == "disagrees"}
CHECKS["either"] = lambda v: CHECKS["violated"](v) or CHECKS["disagrees"](v)
NOMINALS = {"violated": NOMINAL, "disagrees": NOMINAL, "either": 2 * NOMINAL}


def clopper_pearson(k, n, level=0.95):
    """Two-sided exact binomial interval for k successes in n trials."""
    a = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def tail(k, n, p):
    """P(X >= k) for X ~ Binomial(n, p)."""
    return float(stats.binom.sf(k - 1, n, p))


def repetitions(case, reps, seeds):
    """Verdict rows of ``reps`` disjoint blocks of ``seeds`` seeds of ``case`` (one batched job)."""
    table, _ = execute(job_config(**{**CASES[case], "seed": 0, "seeds": reps * seeds}))
    block = table["seed"].to_numpy() // seeds
    rows = []
    for k in range(reps):
        out = verify(table[block == k], confidence=CONFIDENCE)
        assert len(out) == 1
        rows.append(out.iloc[0])
    return rows


def exact_disagreements(case, reps, seeds):
    """The blocks (of ``reps``) whose exact check alone disagrees
    (:func:`theory.verify.exact_verdict` on the column ``exact_metric``, at the points
    ``T >= 1``, as :func:`theory.verify.verify` calls it), split by the side of the seeds'
    mean at the worst point: ``{'below': n, 'above': m}`` (below: the interval's upper end
    is under the exact value). A fast path for many repetitions."""
    table, _ = execute(job_config(**{**CASES[case], "seed": 0, "seeds": reps * seeds}))
    metric = str(table["exact_metric"].iloc[0])
    its = np.sort(table["iteration"].unique())
    its = its[its >= 1]
    X = table.pivot(index="seed", columns="iteration", values=metric)[its].to_numpy(float)
    e = table.groupby("iteration")["exact"].first()[its].to_numpy(float)
    out = {"below": 0, "above": 0}
    for k in range(reps):
        block = X[k * seeds:(k + 1) * seeds]
        v = exact_verdict(block, e, its, confidence=CONFIDENCE)
        if v["exact_verdict"] == "disagrees":
            j = int(np.flatnonzero(its == v["exact_worst_iteration"])[0])
            out["below" if block[:, j].mean() < e[j] else "above"] += 1
    return out


def max_count(reps, nominal, tail_level=0.002):
    """The smallest c with P(X > c) < ``tail_level`` for X ~ Binomial(reps, nominal): more
    than c false alarms is evidence at that level that the rate exceeds ``nominal``."""
    c = 0
    while tail(c + 1, reps, nominal) >= tail_level:
        c += 1
    return c


def count(rows):
    """``{check: number of repetitions flagged}`` and the verdict counts."""
    flags = {name: sum(bool(f(v)) for v in rows) for name, f in CHECKS.items()}
    verdicts = {}
    for v in rows:
        key = f"{v['verdict']}/{v['exact_verdict']}"
        verdicts[key] = verdicts.get(key, 0) + 1
    return flags, verdicts


def report(results, sides, reps, seeds, seconds):
    lines = [f"# False alarms of theory.verify.verify (confidence {CONFIDENCE}) on honest runs of exact cases",
             f"# scripts/false_alarm_rate.py --reps {reps} --seeds {seeds}: {reps} repetitions per case, each a "
             f"disjoint block of {seeds} seeds; {seconds:.0f} s",
             "# nominal: violated <= 0.01, disagrees <= 0.01, either <= 0.02 (union bound)",
             "# CI: two-sided 95% Clopper-Pearson; tail: P(X >= count) for X ~ Binomial(reps, nominal)",
             f"{'case':22s} {'check':10s} {'count':>6s} {'reps':>5s} {'rate':>7s} {'ci_lo':>7s} {'ci_hi':>7s} "
             f"{'nominal':>7s} {'tail':>7s}"]
    for case, (flags, verdicts) in results.items():
        for check, k in flags.items():
            lo, hi = clopper_pearson(k, reps)
            lines.append(f"{case:22s} {check:10s} {k:6d} {reps:5d} {k / reps:7.4f} {lo:7.4f} {hi:7.4f} "
                         f"{NOMINALS[check]:7.4f} {tail(k, reps, NOMINALS[check]):7.4f}")
        lines.append(f"# {case} verdict/exact_verdict counts: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    lines.append("# the exact check alone (exact_disagreements): side of the seeds' mean at the worst point")
    for case, side in sides.items():
        lines.append(f"{case:22s} disagrees  below {side['below']:4d}  above {side['above']:4d}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "paper_results" / "false_alarm_rate.txt")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps: must be >= 1")
    if args.seeds < 2:
        ap.error("--seeds: must be >= 2 (a confidence bound needs two seeds)")
    t0 = time.perf_counter()
    results = {case: count(repetitions(case, args.reps, args.seeds)) for case in CASES}
    sides = {case: exact_disagreements(case, args.reps, args.seeds) for case in CASES}
    text = report(results, sides, args.reps, args.seeds, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, text_writer(text))
    print(text, end="")


if __name__ == "__main__":
    main()
