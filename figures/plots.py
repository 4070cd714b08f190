"""One function per figure. Each takes a results DataFrame and an output path
stem, writes ``stem.pdf`` and ``stem.png``, and returns the two paths. A figure
whose columns or variation are absent raises :class:`figures.data.NotEnoughData`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D

from figures import style
from figures.data import (NotEnoughData, curve_keys, groups, has_values, rate_metric, rate_table,
                          summarize, tightness_table, varying)
from figures.style import plt

METHOD_KEYS = ("method", "p", "estimator")
LINESTYLES = ("-", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))


# --------------------------------------------------------------------------- helpers

def save(fig, stem, *, tight=False) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")]
    try:
        for p in paths:
            fig.savefig(p, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return paths


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "-"
        return f"{v:g}"
    return str(v)


def facet_title(col: str, val) -> str:
    if col == "rank":
        return f"rank r = {_fmt(val)}" if val != 0 else "full rank"
    if col == "stepsize_factor":
        return rf"$\gamma$ = {_fmt(val)}/L"
    if col == "p":
        return f"p = {_fmt(val)}"
    return f"{col} = {_fmt(val)}"


def _line_id(kv: dict) -> tuple:
    # NaN != NaN: spell it so that equal configurations give equal dictionary keys
    return tuple((k, "nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in kv.items())


def line_label(kv: dict, extra: list[str]) -> str:
    """Paper's method name, then the other varying keys as k=v."""
    parts = []
    if "method" in kv:
        parts.append(style.method_label(kv["method"], kv.get("p"), kv.get("estimator", "gd")))
    for k in extra:
        if k in METHOD_KEYS or k not in kv:
            continue
        parts.append(facet_title(k, kv[k]).replace("rank r", "r"))
    return ", ".join(parts) if parts else "all runs"


def _facet_values(df, col):
    if col is None or col not in df.columns or df[col].nunique(dropna=False) < 2:
        return [None]
    vals = df[col].drop_duplicates().tolist()
    if col == "rank":
        vals = [v for v in vals if v != 0] or vals  # full-parameter rows join every panel
    return sorted(vals, key=lambda v: (isinstance(v, float) and math.isnan(v), v))


def _select(df, col, val):
    if val is None:
        return df
    if col == "rank":
        return df[(df[col] == val) | (df[col] == 0)]
    if isinstance(val, float) and math.isnan(val):
        return df[df[col].isna()]
    return df[df[col] == val]


# --------------------------------------------------------------------------- convergence

@style.styled
def convergence(df: pd.DataFrame, stem, *, metric: str = "grad_norm_sq", x: str = "iteration",
                facet: str | None = "rank", row: str | None = "stepsize_factor", bound: bool = True,
                title: str | None = None) -> list[Path]:
    """Median and 10-90% band over seeds of ``metric`` (log scale) against ``x``
    (iteration, epochs or bits), one panel per ``facet`` value (columns) and ``row``
    value (rows); the theorem's bound dashed in the curve's colour where the
    table's ``bound_metric`` is ``metric`` and the bound is finite.
    Full-parameter rows (rank 0) are drawn in every rank panel, as in the paper."""
    for col in ("iteration", x, metric):
        if col not in df.columns:
            raise NotEnoughData(f"no column {col!r}")
    if not has_values(df, metric):
        raise NotEnoughData(f"{metric} has no finite positive values")
    if x != "iteration" and df[x].nunique() < 2:
        raise NotEnoughData(f"{x} does not vary")
    keys = curve_keys(df)
    fcols, frows = _facet_values(df, facet), _facet_values(df, row)
    panel_cols = [c for c, vals in ((facet, fcols), (row, frows)) if vals != [None]]
    line_keys = [k for k in keys if k not in panel_cols]
    extra = [k for k in varying(df, line_keys) if k not in METHOD_KEYS]

    # one colour per line, consistent over panels
    # colour by method (and p); the other varying settings by line style, or by a
    # palette when there are more of them than line styles
    line_kvs = [kv for kv, _ in groups(df, line_keys)]
    combos = sorted({_line_id({k: kv[k] for k in extra}) for kv in line_kvs}, key=repr)
    if len(combos) <= len(LINESTYLES):
        colors = {_line_id(kv): style.method_color(kv.get("method"), kv.get("p")) for kv in line_kvs}
        styles = {_line_id(kv): LINESTYLES[combos.index(_line_id({k: kv[k] for k in extra}))] for kv in line_kvs}
    else:
        colors = dict(zip(map(_line_id, line_kvs), style.palette(len(line_kvs))))
        styles = {}

    nr, nc = len(frows), len(fcols)
    fig, axes = plt.subplots(nr, nc, figsize=(2.7 * nc + 0.5, 2.3 * nr + 0.4), squeeze=False,
                             sharex=True, sharey=True)
    handles: dict[str, object] = {}
    any_bound = any_diverged = False
    for i, rv in enumerate(frows):
        for j, cv in enumerate(fcols):
            ax = axes[i][j]
            sub = _select(_select(df, row, rv), facet, cv)
            for kv, curve in groups(sub, line_keys):
                lid = _line_id(kv)
                s = summarize(curve, metric, x)
                if not s["median"].notna().any():
                    continue
                color = colors.get(lid, "tab:gray")
                label = line_label(kv, extra)
                (h,) = ax.plot(s["x"], s["median"], color=color, linestyle=styles.get(lid, "-"), label=label)
                handles.setdefault(label, h)
                if "diverged" in curve.columns and curve["diverged"].astype(bool).any():
                    last = s[s["median"].notna()].iloc[-1]
                    ax.plot([last["x"]], [last["median"]], marker="x", markersize=7, color=color, linestyle="none")
                    any_diverged = True
                if (s["hi"] > s["lo"]).any():
                    ax.fill_between(s["x"], s["lo"], s["hi"], color=color, alpha=0.18, linewidth=0)
                if bound and s["bound"].notna().any():
                    ax.plot(s["x"], s["bound"], color=color, linestyle="--", linewidth=1.0, alpha=0.9)
                    any_bound = True
            ax.set_yscale("log")
            t = [facet_title(c, v) for c, v in ((row, rv), (facet, cv)) if v is not None]
            if t:
                ax.set_title(", ".join(t))
            if i == nr - 1:
                ax.set_xlabel(style.x_label(x))
            if j == 0:
                ax.set_ylabel(style.metric_label(metric))
    if not handles:
        plt.close(fig)
        raise NotEnoughData(f"no curve of {metric} to draw")
    labels = list(handles)
    hs = list(handles.values())
    if any_bound:
        hs.append(Line2D([], [], color="gray", linestyle="--", linewidth=1.0))
        labels.append("theorem bound (dashed)")
    if any_diverged:
        hs.append(Line2D([], [], color="gray", marker="x", linestyle="none"))
        labels.append("some seeds diverged")
    fig.legend(hs, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, stem)


# --------------------------------------------------------------------------- rates

def _rate_plot(rt: pd.DataFrame, stem, *, x: str, xlabel: str, metric: str, title: str | None,
               logx: bool = False) -> list[Path]:
    rt = rt[np.isfinite(rt["rate"].to_numpy(dtype=float))]
    if rt.empty or rt[x].nunique() < 2:
        raise NotEnoughData(f"fewer than two values of {x} with a fitted rate")
    skip = {x, "rate", "rate_lo", "rate_hi", "theory_rate", "n_runs", "n_diverged", "lambda_min_p"}
    if x == "lambda_min_p":
        skip |= {"rank"}
    line_keys = [k for k in rt.columns if k not in skip]
    shown = varying(rt, line_keys)
    lines = list(groups(rt, shown))
    colors = style.palette(len(lines))
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    any_theory = False
    for (kv, sub), color in zip(lines, colors):
        sub = sub.sort_values(x)
        xs, r = sub[x].to_numpy(dtype=float), sub["rate"].to_numpy(dtype=float)
        err = np.vstack([r - sub["rate_lo"].to_numpy(dtype=float), sub["rate_hi"].to_numpy(dtype=float) - r])
        label = line_label(kv, shown) if "method" in kv else ", ".join(facet_title(k, v) for k, v in kv.items())
        ax.errorbar(xs, r, yerr=np.clip(err, 0, None), color=color, marker="o", markersize=3.5,
                    capsize=2, label=label or "measured")
        th = sub["theory_rate"].to_numpy(dtype=float)
        if np.isfinite(th).any():
            ax.plot(xs, th, color=color, linestyle="--", linewidth=1.0)
            any_theory = True
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"linear rate of {style.metric_label(metric)}\n" r"$-\Delta\log(\cdot)$ per iteration")
    if logx:
        ax.set_xscale("log", base=2)
        ticks = np.unique(rt[x].to_numpy(dtype=float))
        ax.set_xticks(ticks, [_fmt(t) for t in ticks])
        ax.minorticks_off()
    hs, ls = ax.get_legend_handles_labels()
    if any_theory:
        hs.append(Line2D([], [], color="gray", linestyle="--", linewidth=1.0))
        ls.append("rate of the bound (dashed)")
    if title:
        ax.set_title(title)
    # lay out the axes alone, then hang the legend outside: a long legend must widen the
    # saved figure (bbox_inches='tight'), not squeeze the axes
    fig.tight_layout()
    ax.legend(hs, ls, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, stem, tight=True)


@style.styled
def rate_vs_p(df: pd.DataFrame, stem, *, metric: str | None = None, title: str | None = None) -> list[Path]:
    """Empirical linear rate (median and 10-90% over seeds of the fitted slope of
    log ``metric``; default f_gap, else grad_norm_sq) against p, one line per
    rank / shape / other varying setting; the bound's rate dashed when geometric."""
    if "p" not in df.columns:
        raise NotEnoughData("no column 'p'")
    sub = df[df["p"].notna()]
    if sub["p"].nunique() < 2:
        raise NotEnoughData("p does not vary")
    metric = metric or rate_metric(sub)
    if metric is None:
        raise NotEnoughData("neither f_gap nor grad_norm_sq has positive values")
    return _rate_plot(rate_table(sub, metric), stem, x="p", xlabel="p (probability of the left sketch)",
                      metric=metric, title=title)


@style.styled
def rate_vs_rank(df: pd.DataFrame, stem, *, metric: str | None = None, title: str | None = None) -> list[Path]:
    """Empirical linear rate against lambda_min^p when the table has a
    ``lambda_min_p`` column that varies, else against the rank; one line per p /
    method / other varying setting."""
    if "rank" not in df.columns:
        raise NotEnoughData("no column 'rank'")
    sub = df[df["rank"] > 0]
    metric = metric or rate_metric(sub)
    if metric is None:
        raise NotEnoughData("neither f_gap nor grad_norm_sq has positive values")
    if "lambda_min_p" in sub.columns and sub["lambda_min_p"].nunique() > 1:
        return _rate_plot(rate_table(sub, metric), stem, x="lambda_min_p", xlabel=r"$\lambda_{\min}^p$",
                          metric=metric, title=title)
    if sub["rank"].nunique() < 2:
        raise NotEnoughData("rank does not vary")
    return _rate_plot(rate_table(sub, metric), stem, x="rank", xlabel="rank r", metric=metric,
                      title=title, logx=True)


# --------------------------------------------------------------------------- tightness

@style.styled
def tightness(df: pd.DataFrame, stem, *, title: str | None = None, max_panels: int = 12) -> list[Path]:
    """Heatmap over (p, rank) of measured / bound at the final iteration (mean over
    seeds of the bounded column; <= 1 means the bound holds), one panel per
    combination of the other varying settings."""
    for col in ("p", "rank", "bound", "bound_metric"):
        if col not in df.columns:
            raise NotEnoughData(f"no column {col!r}")
    tt = tightness_table(df[df["p"].notna()])
    if tt.empty:
        raise NotEnoughData("no finite bound")
    if len(tt[["p", "rank"]].drop_duplicates()) < 2:
        raise NotEnoughData("p and rank do not vary")
    skip = {"p", "rank", "metric", "iteration", "measured", "bound", "ratio", "lambda_min_p"}
    panel_keys = varying(tt, [k for k in tt.columns if k not in skip])
    panels = list(groups(tt, panel_keys))
    if len(panels) > max_panels:
        raise NotEnoughData(f"{len(panels)} panels (settings {panel_keys}) exceed {max_panels}")
    ratios = tt["ratio"].to_numpy(dtype=float)
    finite = ratios[np.isfinite(ratios) & (ratios > 0)]
    span = max(1.0, float(np.max(np.abs(np.log10(finite))))) if finite.size else 1.0
    norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
    nc = min(len(panels), 3)
    nr = math.ceil(len(panels) / nc)
    fig, axes = plt.subplots(nr, nc, figsize=(3.2 * nc + 0.8, 2.6 * nr + 0.4), squeeze=False)
    im = None
    for ax, (kv, sub) in zip(axes.flat, panels):
        grid = sub.pivot_table(index="p", columns="rank", values="ratio", aggfunc="max")
        vals = grid.to_numpy(dtype=float)
        logv = np.where(vals > 0, np.log10(np.where(vals > 0, vals, 1.0)), np.nan)
        logv = np.where(np.isinf(vals), span, logv)
        im = ax.imshow(logv, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        for (a, b), v in np.ndenumerate(vals):
            if not np.isnan(v):
                dark = np.isinf(v) or abs(logv[a, b]) > 0.6 * span
                ax.text(b, a, "inf" if np.isinf(v) else f"{v:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        ax.set_xticks(range(grid.shape[1]), [_fmt(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [_fmt(r) for r in grid.index])
        ax.set_xlabel("rank r")
        ax.set_ylabel("p")
        ax.grid(False)
        t = ", ".join(facet_title(k, v) for k, v in kv.items() if k not in METHOD_KEYS)
        est = kv.get("estimator")
        head = f"{style.estimator_name(est)}, " if est is not None else ""
        ax.set_title(f"{head}bound on {sub['metric'].iloc[0]}" + (f"\n{t}" if t else ""))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9)
    cb.set_label(r"$\log_{10}$(measured / bound)")
    if title:
        fig.suptitle(title, y=1.0 + 0.04 / nr)
    return save(fig, stem)
