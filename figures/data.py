"""Reducing results tables to what the figures draw (reading them: :mod:`figures.files`).

A *configuration* (one curve, one heatmap cell, one point of a rate plot) is the
set of rows sharing a ``config_hash`` (the job's configuration without the seed):
two configurations are never pooled, even when every column shown in a figure is
equal. Tables without ``config_hash`` fall back to every configuration column.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from resultstore.schema import DERIVED, configuration_columns

#: the stepsize factor's column (gamma = factor / L), newest name first
STEPSIZE_COLUMNS = ("stepsize_factor", "stepsize")
#: pseudo-column naming a configuration by its hash when no column tells it apart
CONFIG = "config"


class NotEnoughData(ValueError):
    """The table lacks the columns or the variation a figure needs."""


class InconsistentHash(UserWarning):
    """One config_hash labels rows with different settings (they are not pooled)."""


# --------------------------------------------------------------------------- configurations

def stepsize_column(df) -> str | None:
    """The name of the stepsize factor's column in ``df`` (tables before and after
    its rename), or None."""
    cols = df.columns if hasattr(df, "columns") else df
    return next((c for c in STEPSIZE_COLUMNS if c in cols), None)


def config_columns(df: pd.DataFrame) -> list[str]:
    """Columns that describe a configuration (neither a measurement, nor
    bookkeeping, nor derived from the others: :mod:`resultstore.schema`)."""
    return configuration_columns(df.columns)


def _text(s: pd.Series) -> pd.Series:
    """A column as comparable strings (NaN one value; lists and dicts allowed)."""
    return s.map(lambda v: "\0nan" if is_missing(v) else repr(v))


def is_missing(v) -> bool:
    """NaN / None (a setting that does not apply to this configuration)."""
    if v is None:
        return True
    try:
        return bool(np.isnan(v))
    except (TypeError, ValueError):
        return False


def _hashable(v):
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def _hashable_column(s: pd.Series) -> pd.Series:
    if s.dtype != object:
        return s
    try:
        s.nunique(dropna=False)
        return s
    except TypeError:  # lists or dicts (a parameter column holding a list)
        return s.map(_hashable)


def config_ids(df: pd.DataFrame) -> pd.Series:
    """One id per row naming its configuration: its ``config_hash``. Rows with
    the same hash but different configuration columns (inconsistent input) are
    told apart as ``hash#1``, ``hash#2`` with an :class:`InconsistentHash`
    warning, rows without a hash are named by their configuration columns:
    two configurations never share an id."""
    cols = config_columns(df)
    h = df["config_hash"].astype("string").fillna("") if "config_hash" in df.columns \
        else pd.Series("", index=df.index, dtype="string")
    keys = pd.DataFrame({"__h": h, **{c: _hashable_column(df[c]) for c in cols}})
    group = keys.groupby(list(keys.columns), dropna=False, sort=False).ngroup()
    first = keys.assign(__g=group).drop_duplicates("__g").set_index("__g")["__h"]
    names = {}
    for g, hv in first.items():
        names[g] = hv if hv else "cfg" + str(g)
    dup = first[first != ""].duplicated(keep=False)
    if dup.any():
        bad = sorted(set(first[first != ""][dup]))
        warnings.warn(f"config_hash {', '.join(b[:12] for b in bad)} labels rows with different settings: "
                      "drawn as separate configurations", InconsistentHash, stacklevel=3)
        for k, g in enumerate(first[first != ""][dup].index):
            names[g] = f"{first[g]}#{k + 1}"
    return group.map(names).astype(str)


def configs(df: pd.DataFrame, *, ids: pd.Series | None = None) -> pd.DataFrame:
    """One row per configuration (:func:`config_ids`, or ``ids`` when the caller
    has them), in the table's order: its configuration columns (first row's
    values), any ``DERIVED`` column, and ``config_hash`` (the configuration's id)."""
    keep = config_columns(df) + [c for c in df.columns if c in DERIVED]
    ids = config_ids(df) if ids is None else ids
    first = df.assign(config_hash=ids.to_numpy()).drop_duplicates("config_hash")
    return first[keep + ["config_hash"]].reset_index(drop=True)


def row_keys(df: pd.DataFrame, cols, *, texts: dict | None = None) -> pd.Series:
    """One comparable string per row from the columns ``cols`` (NaN-safe): their
    texts joined by ``|``. ``texts``: a dict of the columns' texts already made
    (filled with those made here), for callers that key the same table many times."""
    if not cols:
        return pd.Series("all", index=df.index)
    texts = {} if texts is None else texts
    for c in cols:
        if c not in texts:
            texts[c] = _text(df[c]).tolist()
    return pd.Series(["|".join(t) for t in zip(*(texts[c] for c in cols))], index=df.index, dtype=object)


def curves(df: pd.DataFrame, cf: pd.DataFrame | None = None, *, ids: pd.Series | None = None):
    """(configuration dict, rows) per configuration of ``cf`` (default
    :func:`configs` of ``df``), in its order; ``ids``: :func:`config_ids` of
    ``df`` when the caller has them (they are computed once either way)."""
    if ids is None and cf is None:
        ids = config_ids(df)  # an inconsistent hash is said here, once
    elif ids is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InconsistentHash)  # said once, by configs()
            ids = config_ids(df)
    cf = configs(df, ids=ids) if cf is None else cf
    by = dict(iter(df.groupby(ids.to_numpy(), sort=False)))
    for kv in cf.to_dict("records"):
        if kv["config_hash"] in by:
            yield kv, by[kv["config_hash"]]


def sort_key(v):
    """Numbers in numeric order, then the rest by text; missing last."""
    if is_missing(v):
        return (2, 0.0, "")
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, repr(v))


def n_distinct(cf: pd.DataFrame, cols, *, texts: dict | None = None) -> int:
    """The number of distinct rows of ``cf`` over ``cols`` (:func:`row_keys`)."""
    cols = [c for c in cols if c in cf.columns]
    return int(row_keys(cf, cols, texts=texts).nunique()) if len(cf) else 0


def distinguishing(cf: pd.DataFrame, candidates, given=()) -> list[str]:
    """The columns among ``candidates`` (in order) that tell configurations apart
    beyond ``given`` and the columns chosen before them: a column is kept when it
    splits some group of configurations that agree on those. So a setting that
    follows from another (``batch`` from the estimator: NaN for GD) or a copy
    under another name (``method.p`` beside ``p``) is not shown twice."""
    chosen: list[str] = []
    base = [c for c in given if c in cf.columns]
    texts: dict = {}  # each column's texts made once
    count = n_distinct(cf, base, texts=texts)
    for c in candidates:
        if c not in cf.columns or c in base:
            continue
        k = n_distinct(cf, base + chosen + [c], texts=texts)
        if k > count:
            chosen.append(c)
            count = k
    return chosen


def label_columns(cf: pd.DataFrame, given, *, exclude=(), within=()) -> list[str]:
    """:func:`distinguishing` over every configuration column but ``given``,
    ``exclude`` and ``within``, short names before prefixed ones (``problem.L``),
    plus the pseudo-column :data:`CONFIG` (added to ``cf`` as the hash's first 8
    characters) when configurations remain that neither these columns nor
    ``within`` (settings that vary inside a group, e.g. a plot's x) tell apart."""
    skip = set(given) | set(exclude) | set(within) | DERIVED | {"config_hash", CONFIG}
    cand = [c for c in cf.columns if c not in skip]
    cand = [c for c in cand if "." not in str(c)] + [c for c in cand if "." in str(c)]
    cols = distinguishing(cf, cand, given)
    if n_distinct(cf, [*given, *within, *cols]) < len(cf):
        cf[CONFIG] = cf["config_hash"].astype(str).map(lambda h: h[:8] + (h[h.index("#"):] if "#" in h else ""))
        cols.append(CONFIG)
    return cols


# --------------------------------------------------------------------------- curves

def has_values(df: pd.DataFrame, col: str, *, positive: bool = True) -> bool:
    if col not in df.columns or not pd.api.types.is_numeric_dtype(df[col]):
        return False
    v = df[col].to_numpy(dtype=float)
    ok = np.isfinite(v) & (v > 0 if positive else True)
    return bool(ok.any())


def positive(values) -> np.ndarray:
    """Values for a log axis: non-finite and non-positive entries become NaN."""
    v = np.asarray(values, dtype=float).copy()
    v[~np.isfinite(v) | (v <= 0)] = np.nan
    return v


def summarize(curve: pd.DataFrame, metric: str, x: str = "iteration",
              quantiles: tuple[float, float] = (0.1, 0.9)) -> pd.DataFrame:
    """Median and quantile band over seeds of ``metric`` at each iteration.

    Columns: x (median of ``x`` over seeds), median, lo, hi, bound (median over
    seeds; NaN unless the curve's ``bound_metric`` is ``metric``), n (seeds with a
    value). Non-positive and non-finite values are dropped (log axes).
    """
    d = pd.DataFrame({"iteration": curve["iteration"].to_numpy(),
                      "x": curve[x].to_numpy(dtype=float),
                      "v": positive(curve[metric])})
    bound_ok = ("bound" in curve.columns and "bound_metric" in curve.columns
                and (curve["bound_metric"].astype(str) == metric).any())
    d["bound"] = positive(curve["bound"]) if bound_ok else np.nan
    g = d.groupby("iteration", sort=True)
    out = pd.DataFrame({
        "x": g["x"].median(),
        "median": g["v"].median(),
        "lo": g["v"].quantile(quantiles[0]),
        "hi": g["v"].quantile(quantiles[1]),
        "bound": g["bound"].median(),
        "n": g["v"].count(),
    })
    return out.reset_index()


# --------------------------------------------------------------------------- rates

def fit_log_slope(iteration, values, *, rel_floor: float = 1e-10) -> tuple[float, float]:
    """Least-squares slope of log(values) against the iteration, on the prefix of
    the trajectory before it first drops below ``rel_floor`` times its start (the
    float floor is noise). Returns (rate, r2) with rate = -slope per iteration
    (> 0 when converging); NaNs when fewer than three usable points."""
    it = np.asarray(iteration, dtype=float)
    v = positive(values)
    order = np.argsort(it, kind="stable")
    it, v = it[order], v[order]
    ok = np.isfinite(v)
    if ok.sum() < 3:
        return np.nan, np.nan
    start = v[ok][0]
    below = np.flatnonzero(ok & (v < start * rel_floor))
    end = below[0] if below.size else len(v)
    it, v = it[:end], v[:end]
    ok = np.isfinite(v)
    if ok.sum() < 3 or np.ptp(it[ok]) == 0:
        return np.nan, np.nan
    x, y = it[ok], np.log(v[ok])
    slope, icept = np.polyfit(x, y, 1)
    resid = y - (slope * x + icept)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss if ss > 0 else 1.0
    return -float(slope), r2


def rate_metric(df: pd.DataFrame) -> str | None:
    """f_gap when known (linear rates are stated for it), else grad_norm_sq."""
    for m in ("f_gap", "grad_norm_sq"):
        if has_values(df, m):
            return m
    return None


def _seed_runs(curve: pd.DataFrame, cols):
    """(seed, [values of each of ``cols``]) per run, as ``curve.groupby("seed")``
    gives them (increasing seed, rows in table order, missing seeds dropped;
    the whole curve as seed 0 without a ``seed`` column), without pandas'
    cost per group."""
    arrays = [curve[c].to_numpy() for c in cols]
    if "seed" not in curve.columns:
        yield 0, arrays
        return
    seeds = curve["seed"].to_numpy()
    rows = np.flatnonzero(pd.notna(seeds))
    rows = rows[np.argsort(seeds[rows], kind="stable")]
    ordered = seeds[rows]
    for run in np.split(rows, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1):
        if run.size:
            yield seeds[run[0]], [a[run] for a in arrays]


def rate_table(df: pd.DataFrame, metric: str, *, quantiles=(0.1, 0.9), geometric_r2: float = 0.999) -> pd.DataFrame:
    """One row per configuration: its :func:`configs` row, the median and quantile
    band over (non-diverged) seeds of the fitted linear rate of ``metric``,
    ``theory_rate`` (the same fit on the bound when it bounds ``metric`` and is
    geometric, i.e. its log is a line with R^2 >= ``geometric_r2``; else NaN),
    ``n_runs`` and ``n_diverged``."""
    rows = []
    for kv, curve in curves(df):
        ok = ~curve["diverged"].astype(bool) if "diverged" in curve.columns else pd.Series(True, index=curve.index)
        bad_seeds = set(curve.loc[~ok, "seed"]) if "seed" in curve.columns else set()
        rates = []
        for seed, (its, vals) in _seed_runs(curve, ("iteration", metric)):
            if seed in bad_seeds:
                continue
            r, _ = fit_log_slope(its, vals)
            if np.isfinite(r):
                rates.append(r)
        theory = np.nan
        if "bound_metric" in curve.columns and (curve["bound_metric"].astype(str) == metric).any():
            b = curve.groupby("iteration")["bound"].median()
            tr, r2 = fit_log_slope(b.index.to_numpy(), b.to_numpy(), rel_floor=0.0)
            if np.isfinite(tr) and r2 >= geometric_r2:
                theory = tr
        row = dict(kv)
        r = np.asarray(rates)
        row.update(rate=np.median(r) if r.size else np.nan,
                   rate_lo=np.quantile(r, quantiles[0]) if r.size else np.nan,
                   rate_hi=np.quantile(r, quantiles[1]) if r.size else np.nan,
                   theory_rate=theory, n_runs=int(r.size), n_diverged=len(bad_seeds))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tightness

#: what :func:`tightness_table`'s ratio is (figure labels say it; ``experiments.verify``'s
#: "tightness" is instead the largest such ratio over the iterations T >= 1)
FINAL_RATIO = "mean measured / bound at the final iteration"


def tightness_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration with a finite bound on one of its columns: at the
    last iteration, ``measured`` is the MEAN over seeds of the bounded column (the
    theorems bound an expectation), ``bound`` the bound there, ``ratio`` their
    quotient (<= 1: the bound holds there; a diverged run makes it inf). This is
    the ratio at the final iteration (:data:`FINAL_RATIO`), not verify's maximum
    over the trajectory."""
    need = {"bound", "bound_metric", "iteration"}
    if not need <= set(df.columns):
        return pd.DataFrame()
    rows = []
    for kv, curve in curves(df):
        metric = str(curve["bound_metric"].iloc[0])
        if metric not in curve.columns:
            continue
        last = curve[curve["iteration"] == curve["iteration"].max()]
        bound = float(np.nanmedian(last["bound"].to_numpy(dtype=float))) if last["bound"].notna().any() else np.nan
        if not np.isfinite(bound) or bound <= 0:
            continue
        vals = last[metric].to_numpy(dtype=float)
        if "diverged" in last.columns and last["diverged"].astype(bool).any():
            measured = np.inf
        else:
            vals = vals[~np.isnan(vals)]
            if vals.size == 0:
                continue
            measured = float(vals.mean())
        row = dict(kv)
        row.update(metric=metric, iteration=int(last["iteration"].iloc[0]), measured=measured,
                   bound=bound, ratio=measured / bound)
        rows.append(row)
    return pd.DataFrame(rows)
