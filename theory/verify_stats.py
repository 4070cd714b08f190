r"""Per-seed samples of the statistic a bound is compared with, and their confidence bounds.

Helper of :mod:`theory.verify` (whose docstring states which statistic each metric
uses). :func:`group_samples` reads one configuration's rows; its result's
:meth:`Samples.evaluate` returns, at chosen points, the estimate, the lower and upper
confidence bounds of :mod:`theory.confidence`, and the per-seed sample matrices behind
them (for the seeds-needed estimate).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from theory import confidence as ci

__all__ = ["RAW", "log_spaced", "group_samples", "Samples"]

#: raw per-iterate column behind each running statistic
RAW = {"min_grad_norm_sq": "grad_norm_sq", "min_f_gap": "f_gap",
       "avg_grad_norm_sq": "grad_norm_sq", "avg_f_gap": "f_gap"}


def log_spaced(its, k: int) -> np.ndarray:
    """Indices of at most ``k`` of the increasing iteration counts ``its`` (>= 1), evenly
    spread in log T, always the first and the last."""
    its = np.asarray(its, float)
    if len(its) <= k:
        return np.arange(len(its))
    targets = np.geomspace(its[0], its[-1], k)
    idx = np.abs(np.log(its)[None, :] - np.log(targets)[:, None]).argmin(axis=1)
    return np.unique(idx)


def _pivot(g: pd.DataFrame, col: str, its, seeds):
    if col not in g.columns:
        return None
    P = g.pivot(index="seed", columns="iteration", values=col).reindex(index=seeds, columns=its)
    return P.to_numpy(dtype=float)


def _full(X):
    return X is not None and np.isfinite(X).all()


@dataclass
class Samples:
    """Per candidate point T: how its statistic is formed. ``kind[i]`` is 'column'
    (samples ``X[i]``), 'min' (minimum over recorded t < T of the raw per-t means) or
    'runmin' (running-minimum column only: no upper bound)."""

    n: int
    its: np.ndarray
    usable: np.ndarray
    kind: list
    X: list
    raw: np.ndarray | None = None
    raw_its: np.ndarray | None = None
    runmin: list = field(default_factory=list)
    note: str = ""

    def evaluate(self, idx, alpha):
        """(est, lcb, ucb, X_lo, X_hi) at candidate indices ``idx``; one-sided level alpha each."""
        K = len(idx)
        plain = [k for k, i in enumerate(idx) if self.kind[i] != "min"]
        X_lo = np.full((self.n, K), np.nan)
        X_hi = X_lo.copy()
        est, lcb, ucb = np.empty(K), np.empty(K), np.empty(K)
        if plain:
            Xp = np.stack([self.X[idx[k]] for k in plain], axis=1)
            m, lo, hi = ci.mean_bounds(Xp, alpha=alpha)
            est[plain], lcb[plain] = m, lo
            ucb[plain] = np.where([self.kind[idx[k]] == "column" for k in plain], hi, np.inf)
            X_lo[:, plain] = X_hi[:, plain] = Xp
        mins = [k for k in range(K) if k not in plain]
        if mins:
            rm, rl, ru = ci.mean_bounds(self.raw, alpha=alpha)
            extra = [k for k in mins if self.runmin[idx[k]] is not None]
            if extra:  # not every t < T recorded: E min_t X_t <= min_t E X_t
                R = np.stack([self.runmin[idx[k]] for k in extra], axis=1)
                _, l2, _ = ci.mean_bounds(R, alpha=alpha)
                l2 = dict(zip(extra, l2))
        for k in mins:
            before = np.flatnonzero(self.raw_its < self.its[idx[k]])
            j, last = before[np.argmin(rl[before])], before[-1]
            est[k], lcb[k], ucb[k] = rm[before].min(), rl[j], ru[last]
            X_lo[:, k], X_hi[:, k] = self.raw[:, j], self.raw[:, last]
            if self.runmin[idx[k]] is not None and l2[k] < lcb[k]:
                lcb[k], X_lo[:, k] = l2[k], self.runmin[idx[k]]
        return est, lcb, ucb, X_lo, X_hi


def group_samples(g: pd.DataFrame, metric: str, its_all, seeds, candidates) -> Samples:
    """Samples of the statistic of ``metric`` at the ``candidates`` (iterations >= 1)."""
    its_all = np.asarray(its_all)
    M = _pivot(g, metric, its_all, seeds)
    raw = _pivot(g, RAW[metric], its_all, seeds) if metric in RAW else None
    P = len(its_all)
    contiguous = its_all == np.arange(P)
    prefix = P if contiguous.all() else int(np.argmin(contiguous))  # its_all[:prefix] = 0..prefix-1
    pos = {int(t): i for i, t in enumerate(its_all)}
    kind, X, runmin, usable = [], [], [], []
    notes = set()
    raw_ok = raw is not None and np.all(np.isfinite(raw), axis=0) if raw is not None else None
    for T in candidates:
        T = int(T)
        col = M[:, pos[T]] if M is not None else None
        k, x, rmin = None, None, None
        if metric.startswith("min_"):
            rec = its_all < T
            if raw is not None and rec.any() and raw_ok[rec].all():
                if T <= prefix:
                    k = "min"
                elif _full(col) and np.any(rec & (its_all >= 1)):
                    # an upper bound needs a recorded iterate 1 <= t' < T (E X_0 is the start)
                    k, rmin = "min", col
                    notes.add("iterates not all recorded: lower bound also from E[running min] <= min_t E")
            if k is None and _full(col) and not (raw is not None and rec.any() and raw_ok[rec].all()):
                k, x = "runmin", col
                notes.add(f"judged on E[running min] <= min_t E (no complete {RAW[metric]}): no upper bound")
        elif _full(col):
            k, x = "column", col
        elif metric.startswith("avg_") and raw is not None and T <= prefix and raw_ok[:T].all():
            k, x = "column", raw[:, :T].sum(axis=1) / T
            notes.add(f"{metric} rebuilt from {RAW[metric]}")
        kind.append(k)
        X.append(x)
        runmin.append(rmin)
        usable.append(k is not None)
    return Samples(n=len(seeds), its=np.asarray(candidates), usable=np.asarray(usable, bool), kind=kind, X=X, raw=raw,
                   raw_its=its_all, runmin=runmin, note="; ".join(sorted(notes)))
