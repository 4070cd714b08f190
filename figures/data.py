"""Reading results files and reducing them to what the figures draw.

This module depends on files only (pandas + the results store's file layout:
``results.parquet`` beside a ``_COMPLETE`` JSON marker whose ``results_bytes``
is the parquet's size); it never imports the solvers or the experiments.

A *curve* is one configuration over all its seeds: rows sharing every column
that is neither a measurement, nor bookkeeping, nor derived from the others.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS_FILE = "results.parquet"
COMPLETE_MARKER = "_COMPLETE"
COLLECTED_FILE = "collected.parquet"

MEASUREMENTS = frozenset({
    "iteration", "epochs", "bits", "time_s", "loss", "f_gap", "grad_norm_sq", "dist_sq",
    "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap", "bound", "diverged",
})
BOOKKEEPING = frozenset({"seed", "config_hash", "device", "bound_status", "bound_metric", "wall_s"})
DERIVED = frozenset({"gamma", "lambda_min_p", "lambda_max_p"})


class NotEnoughData(ValueError):
    """The table lacks the columns or the variation a figure needs."""


# --------------------------------------------------------------------------- loading

def _complete(d: Path) -> bool:
    try:
        info = json.loads((d / COMPLETE_MARKER).read_text(encoding="utf-8"))
        return int(info["results_bytes"]) == (d / RESULTS_FILE).stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load(path: str | os.PathLike) -> pd.DataFrame:
    """A results table from a parquet file, or from the complete jobs under a
    directory (recursively); a directory without any falls back to its
    ``collected.parquet``. Returns an empty DataFrame when nothing is found."""
    p = Path(path)
    if p.is_file():
        return pd.read_parquet(p)
    if not p.is_dir():
        return pd.DataFrame()
    tables = []
    for here, dirs, files in os.walk(p):
        dirs.sort()
        if RESULTS_FILE in files and _complete(Path(here)):
            tables.append(pd.read_parquet(Path(here) / RESULTS_FILE))
    if tables:
        return pd.concat(tables, ignore_index=True)
    if (p / COLLECTED_FILE).is_file():
        return pd.read_parquet(p / COLLECTED_FILE)
    return pd.DataFrame()


# --------------------------------------------------------------------------- curves

def curve_keys(df: pd.DataFrame) -> list[str]:
    """Columns that identify a curve (configuration without the seed). Timings
    (any column ending in ``_s``, e.g. a sweep's ``group_wall_s``) are not keys."""
    skip = MEASUREMENTS | BOOKKEEPING | DERIVED
    return [c for c in df.columns if c not in skip and not str(c).endswith("_s")]


def varying(df: pd.DataFrame, keys) -> list[str]:
    """The columns among ``keys`` that take more than one value (NaN counts as one)."""
    return [k for k in keys if k in df.columns and df[k].nunique(dropna=False) > 1]


def groups(df: pd.DataFrame, keys):
    """(key dict, sub-frame) per combination of ``keys``, NaN kept, in sorted order."""
    keys = list(keys)
    if not keys:
        yield {}, df
        return
    for vals, sub in df.groupby(keys, dropna=False, sort=True):
        vals = vals if isinstance(vals, tuple) else (vals,)
        yield dict(zip(keys, vals)), sub


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


def rate_table(df: pd.DataFrame, metric: str, *, quantiles=(0.1, 0.9), geometric_r2: float = 0.999) -> pd.DataFrame:
    """One row per curve: its keys, the median and quantile band over (non-diverged)
    seeds of the fitted linear rate of ``metric``, ``theory_rate`` (the same fit on
    the bound when it bounds ``metric`` and is geometric, i.e. its log is a line
    with R^2 >= ``geometric_r2``; else NaN), and the first ``lambda_min_p``."""
    keys = curve_keys(df)
    rows = []
    for kv, curve in groups(df, keys):
        ok = ~curve["diverged"].astype(bool) if "diverged" in curve.columns else pd.Series(True, index=curve.index)
        bad_seeds = set(curve.loc[~ok, "seed"]) if "seed" in curve.columns else set()
        rates = []
        by_seed = curve.groupby("seed") if "seed" in curve.columns else [(0, curve)]
        for seed, run in by_seed:
            if seed in bad_seeds:
                continue
            r, _ = fit_log_slope(run["iteration"], run[metric])
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
        if "lambda_min_p" in curve.columns:
            row["lambda_min_p"] = float(curve["lambda_min_p"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tightness

def tightness_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per curve with a finite bound on one of its columns: at the last
    iteration, ``measured`` is the MEAN over seeds of the bounded column (the
    theorems bound an expectation), ``bound`` the bound there, ``ratio`` their
    quotient (<= 1: the bound holds; a diverged run makes it inf)."""
    need = {"bound", "bound_metric", "iteration"}
    if not need <= set(df.columns):
        return pd.DataFrame()
    rows = []
    for kv, curve in groups(df, curve_keys(df)):
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
