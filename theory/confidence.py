r"""Confidence bounds for the mean of a nonnegative, heavy-tailed quantity from few seeds.

Used by :mod:`theory.verify`. ``X`` is an array (n seeds, K points); every function
works column by column, vectorised, and takes a one-sided error level ``alpha`` per
point (the caller divides the level of a simultaneous statement by K: Bonferroni).

Model. The measured quantities (:math:`f(W_T)-f^*`, :math:`\|\nabla f\|^2`, their running
averages and minima) are nonnegative and, for the randomised methods, products of
many random contraction factors: :math:`\log X_T = \log X_0 + \sum_{t<T}\log\rho_t` is a
sum of roughly independent terms, so :math:`\log X` is close to normal and :math:`X` is
right-skewed with a heavy upper tail. On the raw scale Student's t is then lopsided: its
*lower* bound is conservative (a sample that misses the upper tail has a small mean
*and* a small spread) but its *upper* bound under-covers. Hence two constructions:

Lower confidence bound (used for 'violated'; its error is the false-alarm rate)

.. math:: \mathrm{LCB} = \max\Big(\bar X - t_{n-1,1-\alpha/2}\tfrac{s_X}{\sqrt n},\;
          \exp\big(\bar Y - t_{n-1,1-\alpha/2}\tfrac{s_Y}{\sqrt n}\big)\Big),\qquad Y=\log X.

The second term is a lower bound of the geometric mean :math:`e^{\mathbb E\log X}`, which
is :math:`\le\mathbb EX` by Jensen's inequality whatever the distribution: it is exact
(up to the t approximation on the log scale) for log-normal data and the more
conservative the more skewed the data. Each term gets half the level (Bonferroni), so
the maximum errs with probability at most :math:`\alpha` when both terms are valid. With a
value :math:`\le 0` in the column the log term is 0.

Upper confidence bound (used for 'holds'; its error is the false-'holds' rate)

.. math:: \mathrm{UCB} = \max\Big(\bar X + t_{n-1,1-\alpha}\tfrac{s_X}{\sqrt n},\;
          \exp\big(q_{1-\alpha}(\Theta)\big)\Big),

where :math:`\Theta` is the generalised pivotal quantity of the log-normal mean
:math:`\log\mathbb EX = \mu+\sigma^2/2` (Krishnamoorthy & Mathew, 2003),

.. math:: \Theta = \bar Y - \frac{Z}{\sqrt{U/(n-1)}}\frac{s_Y}{\sqrt n} + \frac{s_Y^2}{2\,U/(n-1)},
          \quad Z\sim N(0,1),\ U\sim\chi^2_{n-1}\ \text{independent},

whose upper quantile is computed by quadrature over :math:`U` (given U, Θ is normal)
and bisection, deterministically. The maximum of two upper bounds is valid as soon as
*one* of them is, at the full level, no correction needed: the log-normal term covers
right-skewed data, the t term covers data close to normal (and data with zeros,
where the log term is left out). With few seeds and a large log-scale spread the
log-normal term is large: an honest 'inconclusive' rather than a false 'holds'.

Both bounds need n >= 2; with one seed they are :math:`(-\infty, +\infty)`. The coverage
of both (false-alarm rate and false-'holds' rate) is measured by simulation in
``tests/test_verify_coverage.py`` on log-normal, chi-square, Pareto and exact
quadratic-trajectory samples.

Known expectation and second moment (the exact check's 'below' side,
:func:`bennett_lower_limit`): for :math:`X\ge0` with :math:`\mathbb EX = e`,
:math:`\operatorname{Var}X = v`, the variables :math:`Y = e - X` are :math:`\le e`, and
Bennett's inequality (which needs only this one-sided bound) gives, for every such
distribution,

.. math:: P(\bar X \le e - \varepsilon) \le \exp\Big(-\frac{nv}{e^2}\,
          h\Big(\frac{e\varepsilon}{v}\Big)\Big),\qquad h(u) = (1+u)\log(1+u) - u.

No bound of the lower side can do without v: a nonnegative X with mean e may be 0 with
probability close to 1, and then every seed's value is 0.
"""
from __future__ import annotations

import numpy as np
from scipy import special, stats

__all__ = ["mean_bounds", "lognormal_mean_ucb", "t_quantile", "seeds_needed", "exact_z", "bennett_lower_limit"]

# quadrature nodes over the chi-square quantile levels, denser in both tails (logit grid)
_LEVEL_EDGES = special.expit(np.linspace(-16.0, 16.0, 161))
_LEVEL_MID = 0.5 * (_LEVEL_EDGES[1:] + _LEVEL_EDGES[:-1])
_LEVEL_W = np.diff(_LEVEL_EDGES) / np.diff(_LEVEL_EDGES).sum()


def t_quantile(df, level):
    """Student t quantile (df may be an array)."""
    return special.stdtrit(df, level)


def _moments(X):
    """n, column mean and sd, and over the positive entries: their count, log mean and log sd."""
    n = X.shape[0]
    mean = X.mean(axis=0)
    sd = X.std(axis=0, ddof=1) if n > 1 else np.full(X.shape[1:], np.nan)
    P = X > 0
    npos = P.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        Y = np.where(P, np.log(np.where(P, X, 1.0)), 0.0)
        ym = Y.sum(axis=0) / npos
        ys = np.sqrt(np.where(P, (Y - ym) ** 2, 0.0).sum(axis=0) / (npos - 1))
    return n, mean, sd, npos, ym, ys


def lognormal_mean_ucb(n, ym, ys, alpha):
    r"""Upper (1 - alpha) quantile of the generalised pivot :math:`\Theta` of
    :math:`\log\mathbb EX` (see the module docstring): arrays ``ym``, ``ys`` of the log
    sample means and sds of ``n`` >= 2 seeds (int, or int array broadcast with them)."""
    ym, ys, n = np.broadcast_arrays(np.asarray(ym, float), np.asarray(ys, float), np.asarray(n, int))
    shape = ym.shape
    ym, ys, n = ym.ravel()[:, None], ys.ravel()[:, None], n.ravel()
    uniq, inv = np.unique(n, return_inverse=True)
    U = np.stack([_chi2_nodes(int(k)) for k in uniq])[inv] if len(n) else np.empty((0, len(_LEVEL_MID)))
    u = (stats.chi2.ppf(alpha / 2, uniq - 1) / (uniq - 1))[inv]
    nn = n[:, None].astype(float)
    centre = ym + ys ** 2 / (2 * U)
    scale = ys / np.sqrt(nn * U)
    flat = scale[:, 0] == 0  # no spread: Theta = ym
    inv = 1.0 / np.where(scale > 0, scale, 1.0)

    def tail(theta):  # P(Theta > theta), columns with spread
        return (special.ndtr((centre - theta[:, None]) * inv) * _LEVEL_W).sum(axis=1)

    lo = ym[:, 0].copy()  # P(Theta > ym) >= 1/2 > alpha
    # P(Theta > hi) <= P(U/(n-1) < u) + P(Z < -z) = alpha: a bracket of moderate width
    z = special.ndtri(1 - alpha / 2)
    hi = lo + ys[:, 0] ** 2 / (2 * u) + z * ys[:, 0] / np.sqrt(n * u)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        above = tail(mid) > alpha
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.where(flat, ym[:, 0], hi).reshape(shape)


_NODES: dict = {}


def _chi2_nodes(n):
    """Quadrature nodes of U/(n-1), U ~ chi2(n-1)."""
    if n not in _NODES:
        _NODES[n] = stats.chi2.ppf(_LEVEL_MID, n - 1) / (n - 1)
    return _NODES[n]


def mean_bounds(X, *, alpha, upper=True):
    """Column means of ``X`` (n, K) and their one-sided lower and upper confidence
    bounds, each of error <= ``alpha`` (module docstring). Returns (mean, lcb, ucb);
    ``upper=False`` skips the upper bound (ucb = +inf), the costly one."""
    X = np.asarray(X, float)
    n, mean, sd, npos, ym, ys = _moments(X)
    if n < 2:
        return mean, np.full_like(mean, -np.inf), np.full_like(mean, np.inf)
    lcb, ucb = _bounds(n, mean, sd, npos, ym, ys, alpha, upper=upper)
    return mean, lcb, (np.full_like(mean, np.inf) if ucb is None else ucb)


def _bounds(n, mean, sd, npos, ym, ys, alpha, upper=True):
    """(lcb, ucb) from the sample statistics (``n``, ``npos`` ints or arrays broadcast with
    them); ucb None unless ``upper``."""
    t_lo, t_hi = t_quantile(n - 1, 1 - alpha / 2), t_quantile(n - 1, 1 - alpha)
    se = sd / np.sqrt(n)
    pos = npos == n
    with np.errstate(over="ignore", invalid="ignore"):
        lcb = np.maximum(mean - t_lo * se, np.where(pos, np.exp(ym - t_lo * ys / np.sqrt(n)), 0.0))
        if not upper:
            return lcb, None
        # with zeros: E X <= E[X | X > 0], bounded from the positive entries alone
        two = npos >= 2
        log_ucb = lognormal_mean_ucb(np.where(two, npos, 2), np.where(two, ym, 0.0), np.where(two, ys, 0.0), alpha)
        ucb = np.maximum(mean + t_hi * se, np.where(two, np.exp(log_ucb), -np.inf))
    return lcb, ucb


def seeds_needed(X, bound, *, alpha, want, n_max=100_000):
    """Smallest number of seeds for which, the sample statistics (mean, sd, log mean,
    log sd) staying what they are now, the bounds would decide: ``want='holds'``:
    UCB <= bound at every column; ``want='violated'``: LCB > bound at some column.
    Returns an int (on a grid of 40 log-spaced values), or ``n_max + 1`` when more than
    ``n_max`` would be needed (or never, e.g. a mean equal to the bound)."""
    X = np.asarray(X, float)
    n0, mean, sd, npos, ym, ys = _moments(X)
    if n0 < 2:  # no spread to extrapolate from
        return n_max + 1
    grid = np.unique(np.round(np.geomspace(max(n0, 2), n_max, 40)).astype(int))[:, None]
    shape = (len(grid), X.shape[1])
    ns = np.broadcast_to(grid, shape)
    npos_n = np.round(ns * (npos / n0)).astype(int)  # the same fraction of positive values
    mean, sd, ym, ys = (np.broadcast_to(a, shape) for a in (mean, sd, ym, ys))
    lcb, ucb = _bounds(ns, mean, sd, npos_n, ym, ys, alpha, upper=want == "holds")
    bound = np.asarray(bound, float)[None, :]
    ok = np.all(ucb <= bound, axis=1) if want == "holds" else np.any(lcb > bound, axis=1)
    return int(grid[np.argmax(ok), 0]) if ok.any() else n_max + 1


def exact_z(X, exact):
    """z-scores of the column means against known expectations ``exact`` (K,):
    (mean - exact) / (sd / sqrt(n)); +-inf where sd = 0 and mean != exact, 0 where equal."""
    X = np.asarray(X, float)
    n = X.shape[0]
    mean = X.mean(axis=0)
    diff = mean - np.asarray(exact, float)
    if n < 2:
        return np.full_like(mean, np.nan)
    se = X.std(axis=0, ddof=1) / np.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / se, np.where(diff == 0, 0.0, np.sign(diff) * np.inf))


def bennett_lower_limit(exact, second, n, alpha):
    r"""Smallest sample mean of ``n`` draws of :math:`X\ge0` with :math:`\mathbb EX` =
    ``exact`` and :math:`\mathbb EX^2` = ``second`` (arrays, broadcast) that Bennett's
    inequality does not reject at one-sided level ``alpha``: :math:`e - \varepsilon^*` with
    :math:`\frac{nv}{e^2}h(e\varepsilon^*/v) = \log\frac1\alpha`, :math:`v = \mathbb EX^2 - e^2`
    (module docstring), so that :math:`P(\bar X < e - \varepsilon^*) \le \alpha` whatever the
    distribution. ``v <= 0`` (a constant X, up to rounding): ``exact`` itself; NaN where
    ``second`` is not finite. A limit <= 0 means no sample mean is rejected."""
    e, s2 = np.broadcast_arrays(np.asarray(exact, float), np.asarray(second, float))
    v = np.maximum(s2 - e * e, 0.0)
    ok = np.isfinite(e) & np.isfinite(s2)
    live = ok & (v > 0) & (e > 0)
    # h(u) = c with c = log(1/alpha) e^2 / (n v); h increasing on u >= 0, bisection on log u
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(live, np.log(1.0 / alpha) * e * e / (n * np.where(live, v, 1.0)), 1.0)
    lo, hi = np.full(e.shape, -40.0), np.full(e.shape, 40.0)  # log u
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        u = np.exp(mid)
        above = (1 + u) * np.log1p(u) - u > c
        lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
    eps = np.where(live, np.where(live, v, 0.0) * np.exp(hi) / np.where(live, e, 1.0), 0.0)
    return np.where(ok, e - eps, np.nan)
