r"""Simulated coverage of the confidence bounds of :mod:`theory.confidence`.

Samples with a known mean: :data:`DISTRIBUTIONS` (nonnegative, heavy-tailed) and
:func:`quadratic_trajectories`, the exactly solvable model of Bernoulli-LoRA-GD on
:math:`f = \frac L2\|W-W^*\|_F^2` from a rank-one :math:`W_0 - W^*`: a Gaussian
sketch of rank r projects the current rank-one error onto a uniformly random
subspace, so each step multiplies :math:`f - f^*` by :math:`1 - (2c - c^2)\beta_t`,
:math:`c = \gamma L`, :math:`\beta_t \sim \mathrm{Beta}(r/2, (m-r)/2)` with probability p
(left) else :math:`\mathrm{Beta}(r/2, (n-r)/2)`, independently, and

.. math:: \mathbb E[f(W_T)-f^*] = (1 - (2c-c^2)\lambda)^T (f(W_0)-f^*),\quad
          \lambda = \mathbb E\beta = p\,r/m + (1-p)\,r/n,

and likewise :math:`\mathbb E[(f(W_T)-f^*)^2] = \mathbb E[(1-(2c-c^2)\beta)^2]^T (f(W_0)-f^*)^2`
from the first two moments of the Beta laws (:func:`quadratic_moments`): the exact
check's 'below' side with the exact variance (Bennett) is simulated on it too.

``python -m theory.coverage`` prints the table quoted in ``docs/verify.md``
(``paper_results/verify_coverage.txt``).
"""
from __future__ import annotations

import numpy as np

from theory.confidence import exact_z, mean_bounds, t_quantile

__all__ = ["DISTRIBUTIONS", "quadratic_trajectories", "quadratic_moments", "error_rates", "exact_false_alarms",
           "student_t_bounds"]

#: name -> (sampler(rng, shape), exact mean)
DISTRIBUTIONS = {
    "lognormal(0,1)": (lambda rng, s: np.exp(rng.normal(0.0, 1.0, s)), float(np.exp(0.5))),
    "lognormal(0,2)": (lambda rng, s: np.exp(rng.normal(0.0, 2.0, s)), float(np.exp(2.0))),
    "chi2(1)": (lambda rng, s: rng.chisquare(1, s), 1.0),
    "exponential": (lambda rng, s: rng.exponential(1.0, s), 1.0),
    "pareto(2.5)": (lambda rng, s: rng.pareto(2.5, s) + 1.0, 2.5 / 1.5),
    "20% zeros + exponential": (lambda rng, s: np.where(rng.random(s) < 0.2, 0.0, rng.exponential(1.0, s)), 0.8),
}


#: the model's parameters: coin p, W of shape m x n, sketch rank, stepsize c / L
MODEL = dict(p=0.3, m=12, n=6, rank=2, c=1.0)


def quadratic_trajectories(rng, shape, steps, **model):
    r"""Per-run :math:`f(W_t)-f^*`, t = 0..steps (array ``shape + (steps + 1,)``, f_0 = 1) of the
    model above (parameters :data:`MODEL`, overridden by ``model``), and the exact
    expectation (steps + 1,)."""
    p, m, n, rank, c = (dict(MODEL, **model)[k] for k in ("p", "m", "n", "rank", "c"))
    left = rng.random((*shape, steps)) < p
    beta = np.where(left, rng.beta(rank / 2, (m - rank) / 2, (*shape, steps)),
                    rng.beta(rank / 2, (n - rank) / 2, (*shape, steps)) if n > rank else 1.0)
    f = np.concatenate([np.ones((*shape, 1)), np.cumprod(1 - (2 * c - c * c) * beta, axis=-1)], axis=-1)
    return f, quadratic_moments(steps, **model)[0]


def quadratic_moments(steps, **model):
    r"""Exact :math:`\mathbb E f_t` and :math:`\mathbb E f_t^2`, t = 0..steps, of the model
    (:math:`f_t = \prod_{s<t}\rho_s`, :math:`\rho = 1 - k\beta`, :math:`k = 2c - c^2`, the
    :math:`\rho_s` independent: :math:`\mathbb E\rho^j` from :math:`\mathbb E\beta = a/(a+b)`,
    :math:`\mathbb E\beta^2 = a(a+1)/((a+b)(a+b+1))` for Beta(a, b), :math:`\beta = 1` when
    the rank is the side's dimension)."""
    p, m, n, rank, c = (dict(MODEL, **model)[k] for k in ("p", "m", "n", "rank", "c"))
    k = 2 * c - c * c

    def factor(dim):  # (E rho, E rho^2) for one side
        a, b = rank / 2, (dim - rank) / 2
        e1, e2 = (a / (a + b), a * (a + 1) / ((a + b) * (a + b + 1))) if dim > rank else (1.0, 1.0)
        return 1 - k * e1, 1 - 2 * k * e1 + k * k * e2

    (l1, l2), (r1, r2) = factor(m), factor(n)
    t = np.arange(steps + 1)
    return (p * l1 + (1 - p) * r1) ** t, (p * l2 + (1 - p) * r2) ** t


def student_t_bounds(X, *, alpha):
    """Plain Student-t bounds (mean, lcb, ucb), for comparison."""
    n, m = X.shape[0], X.mean(axis=0)
    half = t_quantile(n - 1, 1 - alpha) * X.std(axis=0, ddof=1) / np.sqrt(n)
    return m, m - half, m + half


def error_rates(sampler, mean, *, n, reps, alpha, rng, bounds=mean_bounds, X=None):
    """(P(LCB > mean), P(UCB < mean)) over ``reps`` samples of ``n`` seeds (or the given X)."""
    X = sampler(rng, (n, reps)) if X is None else X
    _, lcb, ucb = bounds(X, alpha=alpha)
    return float(np.mean(lcb > mean)), float(np.mean(ucb < mean))


def exact_false_alarms(*, n, reps, steps, checkpoints, confidence, rng, model=None):
    r"""Rates of 'disagrees' against the true E f_t of the quadratic model (:data:`MODEL`,
    overridden by the dict ``model``) at ``checkpoints`` points, two-sided simultaneous level
    ``confidence``: (plain z-test against the Student t quantile, :func:`theory.verify.exact_verdict`
    with the confidence bounds alone, :func:`theory.verify.exact_verdict` given the exact
    :math:`\mathbb E f_t^2`: Bennett's limit on the 'below' side), each as (rate, rate below):
    'below' counts the repetitions whose mean is under the exact value at the worst point."""
    from theory.verify import exact_verdict  # late: verify imports this package's siblings

    f, mean = quadratic_trajectories(rng, (reps, n), steps, **(model or {}))
    second = quadratic_moments(steps, **(model or {}))[1]
    its = np.unique(np.round(np.geomspace(1, steps, checkpoints)).astype(int))
    thr = t_quantile(n - 1, 1 - (1 - confidence) / (2 * len(its)))
    zs = np.stack([exact_z(f[r][:, its], mean[its]) for r in range(reps)])
    worst = np.abs(zs).argmax(1)
    flag = np.abs(zs).max(1) > thr
    out = [(float(np.mean(flag)), float(np.mean(flag & (zs[np.arange(reps), worst] < 0))))]
    for s2 in (None, second[its]):
        flags = np.zeros(reps, bool)
        low = np.zeros(reps, bool)
        for r in range(reps):
            v = exact_verdict(f[r][:, its], mean[its], its, confidence=confidence, second_moment=s2)
            flags[r] = v["exact_verdict"] == "disagrees"
            t = v["exact_worst_iteration"]
            low[r] = flags[r] and f[r][:, t].mean() < mean[t]
        out.append((float(np.mean(flags)), float(np.mean(low))))
    return tuple(out)


def _main():
    rng = np.random.default_rng(2026)
    reps, alpha = int(__import__("os").environ.get("REPS", 4000)), 0.05
    print(f"one-sided error rates of theory.confidence.mean_bounds, alpha = {alpha}, {reps} repetitions "
          f"(Monte Carlo sd {np.sqrt(alpha * (1 - alpha) / reps):.4f}); seed 2026")
    print(f"{'distribution':28s} {'seeds':>5s} {'P(LCB > mean)':>14s} {'P(UCB < mean)':>14s} "
          f"{'Student t alone: P(UCB < mean)':>31s}")
    cases = dict(DISTRIBUTIONS)
    cases["quadratic f_T, T=40"] = (lambda rng, s: quadratic_trajectories(rng, s, 40)[0][..., -1],
                                   float(quadratic_trajectories(rng, (1,), 40)[1][-1]))
    for name, (sampler, mean) in cases.items():
        for n in (3, 5, 10, 20):
            X = sampler(rng, (n, reps))
            lo, hi = error_rates(sampler, mean, n=n, reps=reps, alpha=alpha, rng=rng, X=X)
            _, t_hi = error_rates(sampler, mean, n=n, reps=reps, alpha=alpha, rng=rng, X=X, bounds=student_t_bounds)
            print(f"{name:28s} {n:5d} {lo:14.4f} {hi:14.4f} {t_hi:31.4f}")
    conf = 0.9
    print(f"\nexact-expectation check on the quadratic model (t = 1..30, 8 log-spaced points), "
          f"rate of 'disagrees' when exact is right (in parentheses: with the mean below the exact value), "
          f"nominal {1 - conf:.2g}, {reps // 4} repetitions")
    print(f"{'model':28s} {'seeds':>5s} {'plain z-test':>17s} {'confidence bounds':>17s} "
          f"{'with E f^2 (Bennett)':>20s}")
    for name, model in (("default", {}), ("p=0.2 m=3 n=2 rank=1 c=0.3", dict(p=0.2, m=3, n=2, rank=1, c=0.3))):
        for n in (5, 10, 20):
            res = exact_false_alarms(n=n, reps=reps // 4, steps=30, checkpoints=8, confidence=conf, rng=rng,
                                     model=model)
            cells = [f"{a:.4f} ({b:.4f})" for a, b in res]
            print(f"{name:28s} {n:5d} {cells[0]:>17s} {cells[1]:>17s} {cells[2]:>20s}")


if __name__ == "__main__":
    _main()
