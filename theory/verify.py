r"""Measured trajectories against their theorem's bound: honest verdicts and tightness.

:func:`verify` takes a results table (one row per run and evaluation point, with the
``bound``, ``bound_metric`` and ``bound_status`` columns the runner attaches through
:func:`theory.dispatch.bound_for`) and returns one row per configuration
(``config_hash``; two configurations are never pooled). The theorems bound
expectations :math:`\mu_T` over the algorithm's randomness; the seeds are the sample.

Verdicts (level ``confidence`` = 1 - alpha, simultaneous over the checked points):

* ``violated``: a lower confidence bound of :math:`\mu_T` exceeds the bound :math:`b_T`
  at some checked point, or a run of a configuration with an 'ok' bound diverged.
  Probability under a true bound (false alarm) <= alpha.
* ``holds``: the upper confidence bound of :math:`\mu_T` is <= :math:`b_T` at *every*
  checked point. Probability when some checked :math:`\mu_T > b_T` <= alpha. A mean
  above the bound is never 'holds' (UCB >= mean).
* ``inconclusive``: neither; the row gives ``seeds_needed``, the number of seeds with
  which the present spread would decide (:func:`theory.confidence.seeds_needed`).
* ``not applicable``: the bound's status is not 'ok', no finite bound, the metric is
  not measured, or the bound is vacuous wherever it is finite.

The confidence bounds are those of :mod:`theory.confidence` (log-normal pivot and
Student t for the upper bound, geometric-mean and t for the lower one; coverage
measured by simulation in ``tests/test_verify_coverage.py``), each at level
alpha / K (Bonferroni) over K checked points.

Checked points. Points :math:`T\ge1` with a finite bound above the round-off floor
(``floor`` times the largest finite bound) and a usable statistic, and where the bound
is *informative*: :math:`b_T < v_0`, the mean initial value of the metric (``f_gap``
or ``grad_norm_sq`` at T = 0; a bound at or above it says no more than "no worse than
the start"), and, for a minimum over :math:`t<T`, :math:`b_T` not above the bound at
an earlier point (that one already bounds the minimum at T). Exponentially growing
ABC-type bounds are thus cut off and the verdict says "vacuous after t=...". Of the
informative points at most ``checkpoints`` are checked, spread evenly on a log scale
of T (the measured curves are smooth in log T, so a few points carry the evidence and
the Bonferroni factor stays small).

Statistics at a point T (the results-table columns, see :mod:`solvers.engine`):

* ``f_gap``, ``avg_grad_norm_sq``, ``avg_f_gap``: the column's per-seed values
  (:math:`\frac1T\sum_{t<T}`; rebuilt from the raw column when every :math:`t<T` was recorded).
* ``min_grad_norm_sq``, ``min_f_gap``: the theorems bound :math:`\min_{t<T}\mathbb E X_t`
  (iterates 0..T-1, not T: the engine's running minimum covers the same iterates).
  Estimate: the minimum over recorded :math:`t<T` of the per-t means. Lower bound: the
  minimum of the per-t lower bounds (valid: only the event at the minimising t is
  used), and where some :math:`t<T` were not recorded also the lower bound of the
  running-minimum column (:math:`\mathbb E\min_t X_t\le\min_t\mathbb EX_t`). Upper bound:
  that of :math:`\mathbb E X_{t'}\ge\min_t\mathbb EX_t` at the last recorded :math:`t'<T`.

Tightness = :math:`\max_k \bar X_{T_k}/b_{T_k}` over the checked points (the largest
ratio of measured mean to bound; 1 = attained), with the interval
:math:`[\max_k \mathrm{LCB}_k/b_k, \max_k \mathrm{UCB}_k/b_k]`, each end at the verdict's level.

Exact expectations: where the table has a column ``exact`` (:math:`\mathbb E` of the
column named by ``exact_metric`` if present, else by ``bound_metric``, known in closed
form), the mean over seeds is also tested two-sidedly against it at up to
``checkpoints`` points: 'disagrees' when the confidence interval [LCB, UCB] above
(each side at alpha/(2K)) excludes the exact value somewhere, else 'agrees'; the largest
z-score :math:`|\bar X-e|/(s/\sqrt n)` is reported with it (:func:`exact_verdict`).
See ``docs/verify.md``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from resultstore.schema import BOOKKEEPING, MEASUREMENTS, is_measured
from theory import confidence as ci
from theory.verify_stats import RAW, group_samples, log_spaced

__all__ = ["verify", "exact_verdict", "format_table", "MEASURED_COLUMNS", "DISPLAY_COLUMNS", "VERDICTS"]

VERDICTS = ("holds", "violated", "inconclusive", "not applicable")
EXACT_VERDICTS = ("agrees", "disagrees")
#: columns that are measurements or bookkeeping, not configuration: the results
#: schema's (:func:`resultstore.schema.is_measured`, which also counts ``exact_*`` and ``*_s``)
MEASURED_COLUMNS = MEASUREMENTS | BOOKKEEPING


def _is_measured(col: str) -> bool:
    return is_measured(col)


#: configuration columns shown when only one configuration is verified
DISPLAY_COLUMNS = ("method", "estimator", "problem", "p", "rank", "stepsize_factor", "stepsize_rule", "sketch",
                   "compressor", "estimator_batch")
_OUT = ("params", "metric", "n_seeds", "n_checked", "checked_iterations", "tightness", "tightness_lo",
        "tightness_hi", "worst_iteration", "mean_at_worst", "bound_at_worst", "verdict", "seeds_needed",
        "vacuous_from", "exact_verdict", "exact_max_abs_z", "exact_worst_iteration", "reason")


def _group_labels(table: pd.DataFrame) -> pd.Series:
    cfg = [c for c in table.columns if not _is_measured(c)]
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
        st = list(g["bound_status"].dropna().unique())
        bad = [s for s in st if s != "ok"]
        if bad:
            return str(bad[0])
        if st:
            return "ok"
    return "ok" if np.isfinite(g["bound"].to_numpy(float)).any() else "not applicable: no bound attached"


def _initial_value(g, metric):
    raw = RAW.get(metric, metric)
    if raw not in g.columns:
        return np.nan
    v = g.loc[g["iteration"] == 0, raw].to_numpy(float)
    return float(v.mean()) if len(v) and np.isfinite(v).all() else np.nan


def exact_verdict(X, exact, its, *, confidence, checkpoints=8, rtol=1e-9, atol=0.0) -> dict:
    r"""Two-sided check of known expectations: ``X`` (n seeds, P points), ``exact`` (P,).

    Tests :math:`\mathbb E X_T = e_T` at up to ``checkpoints`` points (log-spaced, finite
    ``exact``, every seed measured) at the simultaneous level ``confidence``: 'disagrees'
    when at some point the lower confidence bound of the mean exceeds :math:`e_T` or the
    upper one falls below it (:func:`theory.confidence.mean_bounds`, each side at
    :math:`\alpha/(2K)`); differences within ``rtol |e| + atol`` count as none. The
    z-scores :math:`z = (\bar X - e)/(s/\sqrt n)` are reported (largest :math:`|z|`) but not
    compared with a t quantile: for the right-skewed trajectories of randomised methods
    that plain test raises false alarms far above its level (measured in
    ``python -m theory.coverage``).

    Returns
    -------
    dict with ``exact_verdict`` ('agrees' | 'disagrees' | 'not applicable'),
    ``exact_max_abs_z``, ``exact_worst_iteration`` and ``exact_reason``.
    """
    X, exact, its = np.asarray(X, float), np.asarray(exact, float), np.asarray(its)
    ok = np.isfinite(exact) & np.all(np.isfinite(X), axis=0)
    out = dict(exact_verdict="not applicable", exact_max_abs_z=np.nan, exact_worst_iteration=np.nan)
    if X.shape[0] < 2 or not ok.any():
        why = "one seed: no standard error" if X.shape[0] < 2 else "no point with both exact and measured values"
        return dict(out, exact_reason=f"exact: {why}")
    cols = np.flatnonzero(ok)[log_spaced(its[ok], checkpoints)]
    Xc, e = X[:, cols], exact[cols]
    tol = rtol * np.abs(e) + atol
    mean, lcb, ucb = ci.mean_bounds(Xc, alpha=(1 - confidence) / (2 * len(cols)))
    same = np.abs(mean - e) <= tol
    z = np.where(same, 0.0, ci.exact_z(Xc, e))
    off = ~same & ((lcb > e + tol) | (ucb < e - tol))
    j = int(np.argmax(np.where(off, np.abs(z), -1.0))) if off.any() else int(np.argmax(np.abs(z)))
    word = "disagrees" if off.any() else "agrees"
    where = f"t={int(its[cols[j]])}: mean {mean[j]:.6g}, exact {e[j]:.6g}, interval [{lcb[j]:.6g}, {ucb[j]:.6g}]"
    return dict(exact_verdict=word, exact_max_abs_z=float(abs(z[j])), exact_worst_iteration=int(its[cols[j]]),
                exact_reason=(f"exact {word} at {int(off.sum())} of {len(cols)} points" if off.any() else
                              f"exact agrees at {len(cols)} points") + f" (max |z| = {abs(z[j]):.3g} at {where}, "
                f"two-sided {100 * confidence:.4g}% simultaneous)")


def _exact(g, seeds, confidence, checkpoints, rtol, floor_abs):
    if "exact" not in g.columns or not np.isfinite(g["exact"].to_numpy(float)).any():
        return {}
    col = str(_first(g, "exact_metric", _first(g, "bound_metric", "none")))
    if col not in g.columns:
        return dict(exact_verdict="not applicable", exact_reason=f"exact: column {col!r} not in the table")
    its = np.sort(g["iteration"].unique())
    P = g.pivot(index="seed", columns="iteration", values=col).reindex(index=seeds, columns=its)
    e = g.groupby("iteration")["exact"].first().reindex(its).to_numpy(float)
    keep = its >= 1
    return exact_verdict(P.to_numpy(float)[:, keep], e[keep], its[keep], confidence=confidence,
                         checkpoints=checkpoints, rtol=rtol, atol=floor_abs)


def _verdict(g: pd.DataFrame, confidence, rtol, floor, checkpoints) -> dict:
    g = g.drop_duplicates(subset=["seed", "iteration"], keep="first")
    g = g.assign(iteration=g["iteration"].astype(np.int64))
    seeds = np.sort(g["seed"].unique())
    metric = str(_first(g, "bound_metric", "none"))
    out = dict(metric=metric, n_seeds=len(seeds), n_checked=0, checked_iterations="")
    bvals = g["bound"].to_numpy(float)
    floor_abs = floor * float(np.max(np.abs(bvals[np.isfinite(bvals)]))) if np.isfinite(bvals).any() else 0.0
    exact = _exact(g, seeds, confidence, checkpoints, rtol, floor_abs)
    notes = [exact.pop("exact_reason")] if "exact_reason" in exact else []
    out.update(exact)

    def done(verdict, reason):
        return dict(out, verdict=verdict, reason="; ".join([reason] + notes))

    status = _status(g)
    diverged = g.groupby("seed")["diverged"].any() if "diverged" in g.columns else pd.Series(dtype=bool)
    n_div = int(diverged.fillna(False).astype(bool).sum())
    div = f"{n_div} of {len(seeds)} runs diverged"
    if status != "ok":
        reason = status.split("not applicable:", 1)[-1].strip() or status
        return done("not applicable", reason + (f" ({div})" if n_div else ""))
    if metric not in g.columns and RAW.get(metric) not in g.columns:
        return done("not applicable", f"metric column {metric!r} not in the table")
    if n_div:
        return done("violated", div)
    b = g.groupby("iteration")["bound"].first()
    b = b[np.isfinite(b.to_numpy(float)) & (b.index >= 1) & (b.to_numpy(float) > floor_abs)]
    if b.empty:
        return done("not applicable", "no finite bound above the round-off floor at any point t >= 1")
    its_all = np.sort(g["iteration"].unique())
    S = group_samples(g, metric, its_all, seeds, b.index.to_numpy())
    if not S.usable.any():
        why = "the min over t < T needs every iterate recorded or the running-min column" \
            if metric.startswith("min_") else f"{metric} not measured (NaN) at the points with a finite bound"
        return done("not applicable", why)
    its, bound = b.index.to_numpy()[S.usable], b.to_numpy(float)[S.usable]
    v0 = _initial_value(g, metric)
    vac = bound >= v0 if math.isfinite(v0) else np.zeros(len(bound), bool)
    if metric.startswith("min_"):
        vac |= bound > np.minimum.accumulate(np.concatenate([[np.inf], bound[:-1]]))
    if vac.all():
        return done("not applicable", f"bound vacuous at every point (>= initial value {v0:.4g})")
    if vac.any():
        why = f">= initial value {v0:.4g}" + (" or above an earlier bound" if metric.startswith("min_") else "")
        note = f"bound vacuous ({why}) at {int(vac.sum())} of {len(its)} points"
        after = vac & (np.arange(len(its)) > np.argmin(vac))  # vacuous again after being informative
        if after.any():  # its[k - 1] is the last informative point before it
            k = int(np.argmax(after))
            out["vacuous_from"] = int(its[k])
            note += f", vacuous after t={int(its[k - 1])} (from t={int(its[k])})"
        notes.append(note + "; checked only where informative")
    inf_idx = np.flatnonzero(~vac)
    chosen = inf_idx[log_spaced(its[inf_idx], checkpoints)]
    K = len(chosen)
    alpha = (1 - confidence) / K
    est, lcb, ucb, X_lo, X_hi = S.evaluate(np.flatnonzero(S.usable)[chosen], alpha)
    its, bound = its[chosen], bound[chosen]
    if S.note:
        notes.insert(0, S.note)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio, r_lo, r_hi = est / bound, lcb / bound, ucb / bound
    k = int(np.nanargmax(ratio))
    out.update(n_checked=K, checked_iterations=" ".join(str(int(t)) for t in its),
               tightness=float(ratio[k]), tightness_lo=float(np.max(r_lo)), tightness_hi=float(np.max(r_hi)),
               worst_iteration=int(its[k]), mean_at_worst=float(est[k]), bound_at_worst=float(bound[k]))
    level = f"{100 * confidence:.4g}%"
    tol = rtol * bound + floor_abs
    bad = lcb > bound + tol
    if bad.any():
        j = int(np.argmax(bad))
        return done("violated", f"{int(bad.sum())} of {K} checked points violated, first at t={int(its[j])}: "
                    f"lower {level} simultaneous confidence bound {lcb[j]:.6g} > bound {bound[j]:.6g}")
    if np.all(ucb <= bound + tol):
        return done("holds", f"upper {level} simultaneous confidence bound <= bound at all {K} checked points")
    over = est > bound + tol
    want = "violated" if over.any() else "holds"
    cols = np.flatnonzero(over) if over.any() else np.arange(K)
    Xn = X_lo if want == "violated" else X_hi
    need = ci.seeds_needed(Xn[:, cols], (bound + tol)[cols], alpha=alpha, want=want)
    out["seeds_needed"] = need if need <= 100_000 else np.inf
    j = int(np.argmax(ucb / bound)) if want == "holds" else int(np.flatnonzero(over)[0])
    side = (f"upper bound {ucb[j]:.6g} > bound {bound[j]:.6g} at t={int(its[j])}" if want == "holds"
            else f"mean {est[j]:.6g} > bound {bound[j]:.6g} at t={int(its[j])} but lower bound {lcb[j]:.6g} is not")
    more = f"about {need} seeds" if need <= 100_000 else "more than 100000 seeds"
    return done("inconclusive", f"{side} ({level}, {K} points); {more} would decide '{want}' at this spread")


def _params(table, keys, display):
    """'name=value, ...' of the configuration columns that differ between groups."""
    firsts = table.groupby(keys, sort=False).first()
    cfg = [c for c in firsts.columns if not _is_measured(c)]
    varying = [c for c in cfg if firsts[c].astype(str).nunique(dropna=False) > 1]
    cols = varying or display
    return {key: ", ".join(f"{c}={_cell(firsts.at[key, c])}" for c in cols if _cell(firsts.at[key, c]) != "")
            for key in firsts.index}


def verify(table: pd.DataFrame, *, confidence: float = 0.99, rtol: float = 1e-9, floor: float = 1e-12,
           checkpoints: int = 8) -> pd.DataFrame:
    r"""Verdict of every configuration (module docstring for the statistics).

    Parameters
    ----------
    table : DataFrame
        Results table (docs/design.md#results): at least ``seed``, ``iteration``, ``bound`` and the metric columns;
        ``bound_metric``, ``bound_status``, ``diverged``, ``config_hash``, ``exact`` and
        ``exact_metric`` are used when present. Groups: ``config_hash``, else every
        configuration column (all but :data:`MEASURED_COLUMNS`).
    confidence : float in (0, 1)
        Simultaneous level over a group's checked points (false-alarm and false-'holds'
        probabilities are each at most 1 - confidence).
    rtol, floor : float
        Relative tolerance of the comparison, and the round-off floor as a fraction of
        the group's largest finite bound (points below it are not checked).
    checkpoints : int >= 1
        Most points checked per group (log-spaced among the informative ones).

    Returns
    -------
    DataFrame
        One row per group: the display columns present (:data:`DISPLAY_COLUMNS`),
        ``config_hash``, ``params`` (the configuration columns that differ between
        groups), ``metric``, ``n_seeds``, ``n_checked``, ``checked_iterations``,
        ``tightness`` (max over checked points of mean/bound) with ``tightness_lo`` and
        ``tightness_hi``, ``worst_iteration``, ``mean_at_worst``, ``bound_at_worst``,
        ``verdict`` (:data:`VERDICTS`), ``seeds_needed`` (inconclusive only; inf when
        more than 100000), ``vacuous_from``, ``exact_verdict`` ('agrees' | 'disagrees' |
        'not applicable' | NaN without an ``exact`` column), ``exact_max_abs_z``,
        ``exact_worst_iteration`` and ``reason``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    if not (isinstance(checkpoints, (int, np.integer)) and checkpoints >= 1):
        raise ValueError(f"checkpoints: must be an integer >= 1, got {checkpoints!r}")
    missing = [c for c in ("seed", "iteration", "bound") if c not in table.columns]
    if missing:
        raise ValueError(f"table: missing column(s) {', '.join(missing)}")
    display = [c for c in DISPLAY_COLUMNS if c in table.columns]
    keys = _group_labels(table)
    params = _params(table.assign(_key=keys.to_numpy()), "_key", display) if len(table) else {}
    rows = []
    for key, g in table.groupby(keys, sort=False):
        row = {c: g[c].iloc[0] for c in display}
        row.update(config_hash=key, params=params.get(key, ""))
        row.update(_verdict(g, confidence, rtol, floor, checkpoints))
        rows.append(row)
    return pd.DataFrame(rows, columns=display + ["config_hash", *_OUT])


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def format_table(verdicts: pd.DataFrame) -> str:
    """Plain-text table of :func:`verify`'s output, one line per group, and a summary line
    with the count of each verdict."""
    if verdicts.empty:
        return "no groups"
    v = verdicts
    tight = [("" if pd.isna(t) else f"{t:.3g} [{lo:.3g}, {hi:.3g}]") for t, lo, hi in
             zip(v["tightness"], v["tightness_lo"], v["tightness_hi"])]
    cols = {"config": v["config_hash"].astype(str).str[:10], "params": v["params"], "metric": v["metric"],
            "seeds": v["n_seeds"].astype(str), "checked": v["n_checked"].astype(str),
            "tightness (max mean/bound)": tight, "verdict": v["verdict"],
            "seeds needed": [("" if pd.isna(x) else (">1e5" if np.isinf(x) else str(int(x))))
                             for x in v["seeds_needed"]]}
    has_exact = v["exact_verdict"].notna().any()
    if has_exact:
        cols["exact"] = v["exact_verdict"].fillna("")
        cols["max|z|"] = [_cell(x) for x in v["exact_max_abs_z"]]
    cols["reason"] = v["reason"]
    names = list(cols)
    cells = [[_cell(x) for x in row] for row in zip(*(list(c) for c in cols.values()))]
    widths = [max(len(n), *(len(r[j]) for r in cells)) for j, n in enumerate(names)]

    def line(items):
        return "  ".join([s.ljust(w) for s, w in zip(items[:-1], widths)] + [items[-1]]).rstrip()

    counts = v["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(w, 0)} {w}" for w in VERDICTS)
    if has_exact:
        ec = v["exact_verdict"].value_counts()
        summary += "; exact: " + ", ".join(f"{ec.get(w, 0)} {w}" for w in EXACT_VERDICTS)
    return "\n".join([line(names)] + [line(r) for r in cells] + [f"{len(v)} groups: {summary}"])
