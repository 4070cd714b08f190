r"""Measured trajectories against their theorem's bound: verdict and tightness.

:func:`verify` takes a results table (one row per run and evaluation point, with
the ``bound``, ``bound_metric`` and ``bound_status`` columns the runner attaches
through :func:`theory.dispatch.bound_for`) and returns one row per group of runs
that differ only by seed.

The theorems bound expectations over the algorithm's randomness, so at every
evaluation point T with a finite bound the statistic is a mean over seeds and the
verdict uses its one-sided lower confidence bound (Student t; with one seed the
value itself, no interval). The level is Bonferroni-corrected over the group's
points, 1 - (1 - ``confidence``)/n_points each, so that a group whose bound holds
is called 'violated' with probability at most 1 - ``confidence`` (the t interval
is approximate for heavy-tailed late iterates; use many seeds near tight bounds):

* ``f_gap``, ``avg_grad_norm_sq``, ``avg_f_gap``: the mean over seeds of that
  column (unbiased for :math:`\mathbb E[f(W_T)-f^*]`, resp. the running averages).
  Where the running average is missing it is rebuilt from the raw column when
  every iterate :math:`t<T` was recorded.
* ``min_grad_norm_sq``, ``min_f_gap``: the theorems bound
  :math:`\min_t\mathbb E[X_t]`, not :math:`\mathbb E[\min_t X_t]\ (\le)`. The statistic
  is the minimum over recorded :math:`t\le T` of the per-t mean of the raw column
  (``grad_norm_sq``, ``f_gap``), and its lower confidence bound the minimum of the
  per-t lower bounds (valid: at the minimising t the event has probability at most
  1 - confidence). When some :math:`t\le T` were not recorded (``eval_every > 1``)
  that minimum over-estimates the target, so the statistic and its lower bound
  also take the mean of the per-run running minimum (:math:`\mathbb E\min\le\min\mathbb E`,
  the column ``min_*`` itself); with neither, the point cannot be verified and is skipped.

Verdicts: 'violated' if at some point the lower confidence bound exceeds the bound
by more than ``rtol * bound + floor * scale`` (scale = the group's largest finite
bound: a round-off floor, so that measured values at machine precision do not
'violate' a bound that has decayed below it), or if a run of a group with an 'ok'
bound diverged; 'not applicable' if the bound's status is not 'ok' or no point has
a finite bound (never 'holds'); else 'holds'. Tightness is the largest
statistic/bound over the points T >= 1 whose bound lies above the round-off floor
(1 = the bound is attained; at T = 0 a bound on the gap is the initial gap itself, so
that point is checked but not counted; a geometric bound decayed below the floor would
otherwise report the ratio of rounding noise to it, e.g. 1e37).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["verify", "format_table", "MEASURED_COLUMNS", "DISPLAY_COLUMNS"]

#: columns that are measurements or bookkeeping, not configuration (group key fallback)
MEASURED_COLUMNS = frozenset({
    "seed", "iteration", "epochs", "bits", "time_s", "loss", "f_gap", "grad_norm_sq", "dist_sq",
    "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap", "bound", "bound_metric",
    "bound_status", "diverged", "config_hash", "device", "wall_s", "test_acc",
})
#: configuration columns shown in the verdict table, when present
DISPLAY_COLUMNS = ("method", "estimator", "problem", "p", "rank", "stepsize_factor", "stepsize_rule", "sketch",
                   "compressor", "estimator_batch")
_RAW = {"min_grad_norm_sq": "grad_norm_sq", "min_f_gap": "f_gap",
        "avg_grad_norm_sq": "grad_norm_sq", "avg_f_gap": "f_gap"}
_OUT = ("metric", "n_seeds", "n_points", "tightness", "worst_iteration", "estimate_at_worst",
        "bound_at_worst", "verdict", "reason")


def _t_quantile(df: int, confidence: float) -> float:
    from scipy.special import stdtrit  # Student t quantile

    return float(stdtrit(df, confidence))


def _mean_lcb(X: np.ndarray, confidence: float):
    """Column-wise mean over seeds (axis 0), one-sided lower confidence bound, and
    the mask of columns where every seed has a value."""
    n = X.shape[0]
    ok = np.all(~np.isnan(X), axis=0)
    with np.errstate(invalid="ignore"):
        mean = X.mean(axis=0)
        if n < 2:
            return mean, mean.copy(), ok
        sd = X.std(axis=0, ddof=1)
        half = _t_quantile(n - 1, confidence) * np.where(np.isfinite(sd), sd, 0.0) / math.sqrt(n)
    return mean, mean - half, ok


def _group_labels(table: pd.DataFrame) -> pd.Series:
    cfg = [c for c in table.columns if c not in MEASURED_COLUMNS]
    codes = (table.groupby(cfg, dropna=False, sort=False).ngroup() if cfg
             else pd.Series(0, index=table.index)).astype(str)
    fallback = "cfg-" + codes
    if "config_hash" in table.columns:
        h = table["config_hash"]
        return h.where(h.notna(), fallback).astype(str)
    return fallback


def _first(g: pd.DataFrame, col, default=None):
    if col not in g.columns:
        return default
    s = g[col].dropna()
    return s.iloc[0] if len(s) else default


def _status(g: pd.DataFrame) -> str:
    if "bound_status" in g.columns:
        st = [s for s in g["bound_status"].dropna().unique()]
        bad = [s for s in st if s != "ok"]
        if bad:
            return str(bad[0])
        if st:
            return "ok"
    return "ok" if np.isfinite(g["bound"].to_numpy(float)).any() else "not applicable: no bound attached"


def _pivot(g: pd.DataFrame, col: str, its: np.ndarray, seeds: np.ndarray) -> np.ndarray | None:
    if col not in g.columns:
        return None
    P = g.pivot(index="seed", columns="iteration", values=col).reindex(index=seeds, columns=its)
    return P.to_numpy(dtype=float)


def _statistics(g, metric, its, seeds, confidence):
    """Per evaluation point: estimate, lower confidence bound, verifiable mask, note."""
    P = len(its)
    est, lcb, usable = np.full(P, np.nan), np.full(P, np.nan), np.zeros(P, bool)
    note = ""
    M = _pivot(g, metric, its, seeds)
    raw = _pivot(g, _RAW.get(metric, metric), its, seeds) if metric in _RAW else None
    prefix = int(np.argmin(its == np.arange(P))) if not np.all(its == np.arange(P)) else P
    # its[:prefix] == 0, 1, ..., prefix-1: every iterate t < prefix recorded
    if metric.startswith("min_") and raw is not None:
        m, lo, ok = _mean_lcb(raw, confidence)
        m, lo = np.where(ok, m, np.inf), np.where(ok, lo, np.inf)
        est, lcb = np.minimum.accumulate(m), np.minimum.accumulate(lo)
        all_ok = np.logical_and.accumulate(ok)
        complete = (np.arange(P) < prefix) & all_ok
        usable = complete.copy()
        if not complete.all() and M is not None:
            mm, mlo, mok = _mean_lcb(M, confidence)
            sparse = ~complete & mok
            # the truth lies in [E running min, min over recorded t of the mean]: report the
            # lower end, the one the verdict uses
            lcb = np.where(sparse, np.minimum(lcb, mlo), lcb)
            est = np.where(sparse, np.minimum(est, mm), est)
            usable |= sparse
            if sparse.any():
                note = "iterates not all recorded: judged on E[running min] <= min_t E"
        est = np.where(np.isfinite(est), est, np.nan)
        return est, lcb, usable, note
    if M is not None:
        est, lcb, usable = _mean_lcb(M, confidence)
        if metric.startswith("min_") and usable.any():
            note = f"no {_RAW[metric]} column: judged on E[running min] <= min_t E"
    if metric.startswith("avg_") and raw is not None and not usable.all() and prefix > 0:
        # rebuild (1/T) sum_{t<T} X_t from the raw column where every t < T was recorded
        T = its.astype(float)
        csum = np.cumsum(raw[:, :prefix], axis=1)
        idx = np.clip(its - 1, 0, prefix - 1).astype(int)
        with np.errstate(invalid="ignore", divide="ignore"):
            rebuilt = np.where((its >= 1) & (its <= prefix), csum[:, idx] / np.maximum(T, 1.0), np.nan)
        rm, rl, rok = _mean_lcb(rebuilt, confidence)
        fill = ~usable & rok
        est, lcb, usable = np.where(fill, rm, est), np.where(fill, rl, lcb), usable | fill
        if fill.any():
            note = f"{metric} rebuilt from {_RAW[metric]}"
    return est, lcb, usable, note


def _verdict(g: pd.DataFrame, confidence: float, rtol: float, floor: float) -> dict:
    g = g.drop_duplicates(subset=["seed", "iteration"], keep="first")
    g = g.assign(iteration=g["iteration"].astype(np.int64))
    seeds = np.sort(g["seed"].unique())
    out = dict(metric=str(_first(g, "bound_metric", "none")), n_seeds=len(seeds), n_points=0,
               tightness=np.nan, worst_iteration=np.nan, estimate_at_worst=np.nan, bound_at_worst=np.nan)
    status = _status(g)
    diverged = g.groupby("seed")["diverged"].any() if "diverged" in g.columns else pd.Series(dtype=bool)
    n_div = int(diverged.fillna(False).astype(bool).sum())
    if status != "ok":
        reason = status.split("not applicable:", 1)[-1].strip() or status
        if n_div:
            reason += f" ({n_div} of {len(seeds)} runs diverged)"
        return dict(out, verdict="not applicable", reason=reason)
    metric = out["metric"]
    b = g.groupby("iteration")["bound"].first()
    b = b[np.isfinite(b.to_numpy(float))]
    if metric not in g.columns and _RAW.get(metric) not in g.columns:
        return dict(out, verdict="not applicable", reason=f"metric column {metric!r} not in the table")
    if b.empty:
        verdict = ("violated", f"{n_div} of {len(seeds)} runs diverged") if n_div else \
            ("not applicable", "no finite bound at any evaluation point")
        return dict(out, verdict=verdict[0], reason=verdict[1])
    its_all = np.sort(g["iteration"].unique())
    # Bonferroni: the verdict tests every point, so each gets level 1 - (1 - confidence)/n and the
    # group's verdict has false-violation probability <= 1 - confidence
    per_point = 1.0 - (1.0 - confidence) / len(b)
    est, lcb, usable, note = _statistics(g, metric, its_all.astype(np.int64), seeds, per_point)
    pos = np.searchsorted(its_all, b.index.to_numpy())
    bound = b.to_numpy(float)
    est, lcb, usable = est[pos], lcb[pos], usable[pos]
    its = b.index.to_numpy()
    floor_abs = floor * float(np.max(np.abs(bound)))
    with np.errstate(invalid="ignore", divide="ignore"):
        # below the round-off floor a measured value is rounding, not a test of the bound
        ratio = np.where(usable & (bound > 0) & (bound > floor_abs), est / bound, np.nan)
    if (its > 0).any():  # at T = 0 a bound on f(W_0) - f* is the start itself: ratio 1, uninformative
        ratio = np.where(its > 0, ratio, np.nan)
    if np.isfinite(ratio).any() or np.isinf(ratio).any():
        k = int(np.nanargmax(np.where(np.isnan(ratio), -np.inf, ratio)))
        out.update(tightness=float(ratio[k]), worst_iteration=int(its[k]), estimate_at_worst=float(est[k]),
                   bound_at_worst=float(bound[k]))
    out["n_points"] = int(usable.sum())
    level = f"{100 * confidence:.4g}%"
    notes = [s for s in (note, "1 seed: no confidence interval" if len(seeds) == 1 else "") if s]
    if n_div:
        return dict(out, verdict="violated", reason="; ".join([f"{n_div} of {len(seeds)} runs diverged"] + notes))
    if not usable.any():
        why = "the min over t needs every iterate recorded or the running-min column" \
            if metric.startswith("min_") else f"{metric} not measured (NaN) at the points with a finite bound"
        return dict(out, verdict="not applicable", reason=why)
    tol = rtol * np.abs(bound) + floor_abs
    bad = usable & (lcb > bound + tol)
    if bad.any():
        k = int(np.argmax(bad))
        msg = (f"{int(bad.sum())} of {int(usable.sum())} points violated, first at iteration {int(its[k])}: "
               f"lower {level} simultaneous confidence bound {lcb[k]:.6g} > bound {bound[k]:.6g}")
        return dict(out, verdict="violated", reason="; ".join([msg] + notes))
    msg = f"lower {level} simultaneous confidence bound <= bound at all {int(usable.sum())} points"
    return dict(out, verdict="holds", reason="; ".join([msg] + notes))


def verify(table: pd.DataFrame, *, confidence: float = 0.99, rtol: float = 1e-9,
           floor: float = 1e-12) -> pd.DataFrame:
    r"""Verdict of every group of runs that differ only by seed.

    Parameters
    ----------
    table : DataFrame
        Results table (docs/design.md#results): at least ``seed``, ``iteration``,
        ``bound`` and the metric columns; ``bound_metric``, ``bound_status``,
        ``diverged`` and ``config_hash`` are used when present. The group key is
        ``config_hash`` (seed-independent), else every configuration column (all
        but :data:`MEASURED_COLUMNS`).
    confidence : float in (0, 1)
        Simultaneous level (over a group's points) of the one-sided Student-t lower
        confidence bounds of the means over seeds.
    rtol : float
        Relative tolerance of the comparison with the bound.
    floor : float
        Absolute tolerance as a fraction of the group's largest finite bound
        (round-off floor).

    Returns
    -------
    DataFrame
        One row per group: the display configuration columns present
        (:data:`DISPLAY_COLUMNS`), ``config_hash``, ``metric``, ``n_seeds``,
        ``n_points`` (points verified), ``tightness`` (max statistic/bound),
        ``worst_iteration``, ``estimate_at_worst``, ``bound_at_worst``,
        ``verdict`` ('holds' | 'violated' | 'not applicable') and ``reason``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    missing = [c for c in ("seed", "iteration", "bound") if c not in table.columns]
    if missing:
        raise ValueError(f"table: missing column(s) {', '.join(missing)}")
    display = [c for c in DISPLAY_COLUMNS if c in table.columns]
    keys = _group_labels(table)
    rows = []
    for key, g in table.groupby(keys, sort=False):
        row = {c: g[c].iloc[0] for c in display}
        row["config_hash"] = key
        row.update(_verdict(g, confidence, rtol, floor))
        rows.append(row)
    return pd.DataFrame(rows, columns=display + ["config_hash", *_OUT])


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def format_table(verdicts: pd.DataFrame) -> str:
    """Plain-text table of :func:`verify`'s output, one line per group, and a summary line."""
    if verdicts.empty:
        return "no groups"
    df = verdicts.drop(columns=[c for c in ("estimate_at_worst", "bound_at_worst") if c in verdicts.columns])
    if "config_hash" in df.columns:
        df = df.assign(config_hash=df["config_hash"].astype(str).str[:10])
    if "worst_iteration" in df.columns:
        df = df.assign(worst_iteration=[("" if pd.isna(x) else str(int(x))) for x in df["worst_iteration"]])
    cols = list(df.columns)
    cells = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(verdicts[c]) if c in verdicts.columns and c != "worst_iteration"
               else c == "worst_iteration" for c in cols]
    widths = [max(len(c), *(len(r[j]) for r in cells)) for j, c in enumerate(cols)]

    def line(items):
        parts = [(s.rjust(w) if num else s.ljust(w)) for s, w, num in zip(items, widths, numeric)]
        parts[-1] = items[-1]  # the reason, unpadded
        return "  ".join(parts).rstrip()

    counts = df["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("holds", "violated", "not applicable"))
    return "\n".join([line(cols)] + [line(r) for r in cells] + [f"{len(df)} groups: {summary}"])
