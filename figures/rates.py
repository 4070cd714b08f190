"""Rate figures: the fitted linear rate of every configuration against p, the
rank, or lambda_min^p (one point per configuration, median and 10-90% over
seeds; the bound's rate dotted when the bound is geometric). Points of
configurations that differ only in the x setting are joined into one line.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from figures import style
from figures.data import NotEnoughData, label_columns, rate_metric, rate_table, row_keys, sort_key
from figures.layout import bound_handle, fmt, grid, legend, line_label
from figures.plots import writer

RATE_COLUMNS = ("rate", "rate_lo", "rate_hi", "theory_rate", "n_runs", "n_diverged")


def _lines(rt: pd.DataFrame, x: str, along: tuple[str, ...]):
    """Group the rate table into lines: configurations that agree on every setting
    that tells them apart except ``x`` and the settings in ``along`` (which change
    along a line). Returns ([(kv, rows sorted by x)], the label settings)."""
    cf = rt.drop(columns=[c for c in RATE_COLUMNS if c in rt.columns])
    cols = label_columns(cf, (), within=(x, *along))
    keys = row_keys(cf, cols)
    lines = []
    for _, sub in rt.assign(_line=keys.to_numpy()).groupby("_line", sort=False):
        kv = cf.loc[sub.index[0]].to_dict()
        lines.append((kv, sub.drop(columns="_line").sort_values(x)))
    lines.sort(key=lambda t: [sort_key(t[0].get(c)) for c in cols])
    return lines, cols


def _rate_figure(rt: pd.DataFrame, *, x: str, xlabel: str, metric: str, title: str | None,
                 along: tuple[str, ...] = (), logx: bool = False):
    rt = rt[np.isfinite(rt["rate"].to_numpy(dtype=float))].reset_index(drop=True)
    if rt.empty or rt[x].nunique() < 2:
        raise NotEnoughData(f"fewer than two values of {x} with a fitted rate")
    lines, cols = _lines(rt, x, along)
    # colour from method and p (one per line when p is on the x axis, or when two
    # lines would look alike), style and marker from the estimator
    def colour_kv(kv):
        return {**kv, "p": np.nan} if x == "p" else kv

    labels = [line_label(colour_kv(kv), [c for c in cols if c != x]) for kv, _ in lines]
    kws = [style.line_style(colour_kv(kv)) for kv, _ in lines]
    if x == "p" or len({style.look(k) for k in kws}) < len(set(labels)):
        for k, c in zip(kws, style.palette(len(kws))):
            k["color"] = c
    any_theory = bool(np.isfinite(rt["theory_rate"].to_numpy(dtype=float)).any())
    fig, (ax,), loc = grid(1, 1, legend_entries=len(lines) + int(any_theory), sharey=False,
                           panel_size=style.RATE_PANEL_SIZE)
    for (kv, sub), kw, label in zip(lines, kws, labels):
        xs, r = sub[x].to_numpy(dtype=float), sub["rate"].to_numpy(dtype=float)
        err = np.vstack([r - sub["rate_lo"].to_numpy(dtype=float), sub["rate_hi"].to_numpy(dtype=float) - r])
        single = len(xs) == 1
        ax.errorbar(xs, r, yerr=np.clip(err, 0, None), color=kw["color"],
                    linestyle="none" if single else kw["linestyle"], marker=kw["marker"] or "o",
                    markersize=6 if single else 4, capsize=2, label=label)
        th = sub["theory_rate"].to_numpy(dtype=float)
        if np.isfinite(th).any():
            ax.plot(xs, th, color=kw["color"], marker="_" if single else None, markersize=10,
                    **style.BOUND_STYLE)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"linear rate of {style.metric_label(metric)}\n" r"$-\Delta\log(\cdot)$ per iteration")
    if logx:
        ax.set_xscale("log", base=2)
        ticks = np.unique(rt[x].to_numpy(dtype=float))
        ax.set_xticks(ticks, [fmt(t) for t in ticks])
        ax.minorticks_off()
    hs, ls = ax.get_legend_handles_labels()
    if any_theory:
        hs.append(bound_handle())
        ls.append("rate of the bound (dotted)")
    legend(fig, hs, ls, loc, 3)
    if title:
        ax.set_title(title)
    return fig


@style.styled
def rate_vs_p_figure(df: pd.DataFrame, *, metric: str | None = None, title: str | None = None):
    """Empirical linear rate (median and 10-90% over seeds of the fitted slope of
    log ``metric``; default f_gap, else grad_norm_sq) against p, one line per
    rank / estimator / other setting that differs; the bound's rate dotted when
    the bound is geometric."""
    if "p" not in df.columns:
        raise NotEnoughData("no column 'p'")
    sub = df[df["p"].notna()]
    if sub["p"].nunique() < 2:
        raise NotEnoughData("p does not vary")
    metric = metric or rate_metric(sub)
    if metric is None:
        raise NotEnoughData("neither f_gap nor grad_norm_sq has positive values")
    return _rate_figure(rate_table(sub, metric), x="p", xlabel="p (probability of the left sketch)",
                        metric=metric, title=title)


def _ranked(df: pd.DataFrame, metric: str | None):
    if "rank" not in df.columns:
        raise NotEnoughData("no column 'rank'")
    sub = df[df["rank"] > 0]
    metric = metric or rate_metric(sub)
    if metric is None:
        raise NotEnoughData("neither f_gap nor grad_norm_sq has positive values")
    return sub, metric


@style.styled
def rate_vs_rank_figure(df: pd.DataFrame, *, metric: str | None = None, title: str | None = None):
    """Empirical linear rate against the rank r (log2 axis), one line per p /
    method / estimator / other setting that differs. Needs two ranks or more."""
    sub, metric = _ranked(df, metric)
    if sub["rank"].nunique() < 2:
        raise NotEnoughData("rank does not vary")
    return _rate_figure(rate_table(sub, metric), x="rank", xlabel="rank r", metric=metric, title=title,
                        logx=True)


@style.styled
def rate_vs_lambda_figure(df: pd.DataFrame, *, metric: str | None = None, title: str | None = None):
    r"""Empirical linear rate against :math:`\lambda_{\min}^p` (the theory's rate
    is linear in it), every configuration a point; points that differ only in the
    rank are joined. Needs a ``lambda_min_p`` column with two values or more."""
    sub, metric = _ranked(df, metric)
    if "lambda_min_p" not in sub.columns or sub["lambda_min_p"].nunique() < 2:
        raise NotEnoughData("lambda_min_p does not vary")
    return _rate_figure(rate_table(sub, metric), x="lambda_min_p", xlabel=r"$\lambda_{\min}^p$",
                        metric=metric, title=title, along=("rank",))


rate_vs_p = writer(rate_vs_p_figure)
rate_vs_rank = writer(rate_vs_rank_figure)
rate_vs_lambda = writer(rate_vs_lambda_figure)
