"""Shared checks and helpers of the bound functions (:mod:`theory.bounds`,
:mod:`theory.bounds_pl`): iteration counts, positive constants, the admissible
stepsize test and the output shape (private to the ``theory`` package), and
:func:`vacuous_after` (public, re-exported by :mod:`theory.dispatch`)."""
from __future__ import annotations

import math

import numpy as np

#: a stepsize within this relative distance above the admissible one is accepted
#: (gamma = factor / L with factor = 1 must pass despite rounding)
STEPSIZE_RTOL = 1e-12


def _theorem(metric, item, anchor=None):
    """Tag a bound function with the metric it bounds, its theorem number and the
    anchor of its section of docs/theory.md (``t<item>`` unless given)."""
    def wrap(fn):
        fn.metric, fn.item, fn.anchor = metric, item, anchor or f"t{item}"
        return fn
    return wrap


def _T(T):
    T = np.asarray(T, dtype=float)
    if np.any(~(T >= 0)) or np.any(T != np.floor(T)):
        raise ValueError(f"T: iteration counts must be integers >= 0, got {T}")
    return T


def _out(x, T):
    x = np.asarray(x, dtype=float)
    return float(x) if np.ndim(T) == 0 else np.broadcast_to(x, np.shape(T)).copy()


def _pos(name, x):
    x = float(x)
    if not x > 0 or math.isinf(x):
        raise ValueError(f"{name}: must be a finite number > 0, got {x}")
    return x


def _nonneg(name, x):
    x = float(x)
    if not x >= 0 or math.isinf(x):
        raise ValueError(f"{name}: must be a finite number >= 0, got {x}")
    return x


def _admissible(gamma, gamma_max, what):
    gamma = _pos("gamma", gamma)
    if math.isnan(gamma_max):
        raise ValueError(f"gamma: admissible stepsize of {what} is unknown (NaN constant)")
    if gamma > gamma_max * (1 + STEPSIZE_RTOL):
        raise ValueError(f"gamma: {gamma:.6g} exceeds the admissible stepsize {gamma_max:.6g} of {what}")
    return gamma


def _lams(lmin_p, lmax_p=None):
    lmin = _pos("lmin_p", lmin_p)
    if lmax_p is None:
        return lmin
    lmax = _pos("lmax_p", lmax_p)
    if lmin > lmax * (1 + 1e-12):
        raise ValueError(f"lmin_p: must be <= lmax_p = {lmax}, got {lmin}")
    return lmin, lmax


def _rate(T, scale, gamma, lmin):
    """scale / (gamma lmin T) with +inf at T = 0."""
    with np.errstate(divide="ignore"):
        return np.where(T > 0, scale / (gamma * lmin * np.where(T > 0, T, 1.0)), np.inf)


def vacuous_after(iterations, values, initial=float("nan")):
    r"""First evaluation point from which on a bound says nothing, or None.

    A bound is *vacuous* at an iteration count :math:`T > 0` when its value is
    :math:`\ge` ``initial`` (the metric's value at :math:`W_0`; NaN if unknown,
    then this test is skipped), or larger than its value at an earlier evaluation
    point (a growing bound), or not finite. Returns the smallest evaluation point
    :math:`T > 0` such that the bound is vacuous there and at every later
    evaluation point, as an int; None when the bound is informative at the last
    point (or there is no point :math:`T > 0`). ``iterations`` may repeat and be
    unsorted (one entry per results-table row); ``values`` matches it.
    """
    T = np.asarray(iterations, dtype=float).ravel()
    v = np.broadcast_to(np.asarray(values, dtype=float), np.shape(iterations)).ravel()
    Ts, idx = np.unique(T, return_index=True)
    keep = Ts > 0
    Ts, vs = Ts[keep], v[idx][keep]
    if len(Ts) == 0:
        return None
    bad = ~np.isfinite(vs)
    if math.isfinite(float(initial)):
        bad |= vs >= float(initial)
    with np.errstate(invalid="ignore"):
        earlier_min = np.minimum.accumulate(np.where(np.isfinite(vs), vs, np.inf))
        bad[1:] |= vs[1:] > earlier_min[:-1] * (1 + 1e-12)
    if not bad[-1]:
        return None
    good = np.flatnonzero(~bad)
    return int(Ts[good[-1] + 1]) if len(good) else int(Ts[0])
