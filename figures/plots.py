"""Convergence and tightness figures. Each figure has a drawing function
``*_figure(df, ...) -> matplotlib Figure`` (for inspection and tests) and a
writer ``fn(df, stem, ...) -> [stem.pdf, stem.png]``. A figure whose columns or
variation are absent raises :class:`figures.data.NotEnoughData`.

Every curve is one configuration (``config_hash``); configurations that share
the method, p and estimator are told apart by the settings in which they differ
(e.g. ``L = 10`` vs ``L = 100``), shown in the panel titles (one panel per
combination, at most :data:`figures.style.MAX_PANELS` panels) or else in the
line labels.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D

from figures import style
from figures.data import (FINAL_RATIO, NotEnoughData, config_ids, configs, curves, has_values, is_missing,
                          label_columns, n_distinct, sort_key, stepsize_column, summarize, tightness_table)
from figures.layout import (METHOD_KEYS, bound_handle, clip_log_ylim, diverged_handle, grid, legend,
                            line_label, n_cols, save, settings)
from figures.style import plt

STEPSIZE = "stepsize"  # the row facet's default: whichever stepsize-factor column the table has


def writer(draw):
    """``fn(df, stem, **kw)``: draw with ``draw(df, **kw)`` and save as stem.pdf and stem.png."""
    @functools.wraps(draw)
    def write(df, stem, **kw):
        with plt.rc_context(style.RC):
            return save(draw(df, **kw), stem)
    write.__name__ = write.__qualname__ = draw.__name__.removesuffix("_figure")
    return write


# --------------------------------------------------------------------------- panels

def _matches(v, want, *, zero_joins: bool) -> bool:
    if want is None:
        return True
    if is_missing(v) or (zero_joins and v == 0):  # n/a (or full rank): the same in every panel
        return True
    return v == want


def _panel_values(cf: pd.DataFrame, col: str | None) -> list:
    if col is None:
        return [None]
    vals = [v for v in cf[col].drop_duplicates() if not is_missing(v) and not (col == "rank" and v == 0)]
    return sorted(vals, key=sort_key) or [None]


def _combos(cf: pd.DataFrame, cols: list[str]) -> list[dict]:
    """The combinations of ``cols`` that get a panel: those of the configurations
    where every one applies; a configuration with an n/a setting joins them all."""
    if not cols:
        return [{}]
    recs = cf[cols].to_dict("records")
    out = []
    for rec in sorted(recs, key=lambda r: [sort_key(r[c]) for c in cols]):
        if not any(is_missing(v) for v in rec.values()) and rec not in out:
            out.append(rec)
    for rec in recs:  # n/a in some but not all: a panel of its own unless it joins one
        if not any(all(_matches(rec[c], o[c], zero_joins=False) for c in cols) for o in out):
            out.append(rec)
    return out


def panels(cf: pd.DataFrame, *, facet: str | None, row: str | None):
    """Lay the configurations ``cf`` out in panels. Returns (panels, extra,
    per_row): ``panels`` a list of (title settings dict, configuration dicts),
    ``extra`` the settings left for the line labels, ``per_row`` the panels per
    row that keep one row per setting (the facet's number of values)."""
    fcol = facet if facet in cf.columns and n_distinct(cf, [facet]) > 1 else None
    rcol = row if row in cf.columns and n_distinct(cf, [row]) > 1 else None
    given = [c for c in (*METHOD_KEYS, fcol, rcol) if c]
    extra = label_columns(cf, given)
    fvals, rvals = _panel_values(cf, fcol), _panel_values(cf, rcol)
    combos = _combos(cf, extra)
    per_row = len(fvals) if fcol and len(fvals) > 1 else None
    recs = cf.to_dict("records")

    def lay_out(combos):
        out = []
        for rv in rvals:
            for combo in combos:
                for fv in fvals:
                    members = [kv for kv in recs
                               if _matches(kv.get(rcol), rv, zero_joins=False)
                               and _matches(kv.get(fcol), fv, zero_joins=fcol == "rank")
                               and all(_matches(kv[c], combo[c], zero_joins=False) for c in combo)]
                    if members:
                        title = {**({rcol: rv} if rcol else {}), **combo, **({fcol: fv} if fcol else {})}
                        out.append((title, members))
        return out

    if len(fvals) * len(rvals) * len(combos) <= style.MAX_PANELS:
        out = lay_out(combos)
        # a configuration that joins a panel (n/a setting) must not meet its twin there
        if all(n_distinct(pd.DataFrame(m), [c for c in given if c != fcol]) == len(m) for _, m in out):
            return out, [], per_row
    return lay_out([{}]), extra, per_row


def line_looks(panel_list, extra) -> tuple[dict, dict]:
    """({config_hash: label}, {label: plot kwargs}): colour from method and p, style
    from the estimator (:func:`figures.style.line_style`); when two lines of a panel
    would still look alike, one palette colour per label instead."""
    labels = {kv["config_hash"]: line_label(kv, extra) for _, members in panel_list for kv in members}
    kws = {}
    for _, members in panel_list:
        for kv in members:
            kws.setdefault(labels[kv["config_hash"]], style.line_style(kv))
    clash = any(len({style.look(kws[labels[kv["config_hash"]]]) for kv in m})
                < len({labels[kv["config_hash"]] for kv in m}) for _, m in panel_list)
    if clash:
        for lab, color in zip(list(kws), style.palette(len(kws))):
            kws[lab]["color"] = color
    return labels, kws


# --------------------------------------------------------------------------- convergence

@style.styled
def convergence_figure(df: pd.DataFrame, *, metric: str = "grad_norm_sq", x: str = "iteration",
                       facet: str | None = "rank", row: str | None = STEPSIZE, bound: bool = True,
                       title: str | None = None):
    """Median and 10-90% band over seeds of ``metric`` (log scale) against ``x``
    (iteration, epochs or bits) per configuration, one panel per ``facet`` value
    (rank; full-parameter rows, rank 0, join every rank panel, as in the paper),
    ``row`` value (the stepsize factor) and combination of the other settings that
    differ; the theorem's bound dotted in the curve's colour where the table's
    ``bound_metric`` is ``metric``. The y-range is clipped (see
    :func:`figures.layout.clip_log_ylim`), and the figure says so when it is."""
    for col in ("iteration", x, metric):
        if col not in df.columns:
            raise NotEnoughData(f"no column {col!r}")
    if not has_values(df, metric):
        raise NotEnoughData(f"{metric} has no finite positive values")
    if x != "iteration" and df[x].nunique() < 2:
        raise NotEnoughData(f"{x} does not vary")
    row = stepsize_column(df) if row == STEPSIZE else row
    ids = config_ids(df)
    cf = configs(df, ids=ids)
    panel_list, extra, per_row = panels(cf, facet=facet, row=row)
    labels, kws = line_looks(panel_list, extra)
    rows_of = {kv["config_hash"]: rows for kv, rows in curves(df, cf, ids=ids)}
    bounded = bound and "bound_metric" in df.columns and \
        (df["bound_metric"].astype(str).eq(metric) & df["bound"].gt(0)).any()
    diverged = "diverged" in df.columns and df["diverged"].astype(bool).any()
    n_entries = len(kws) + int(bool(bounded)) + int(bool(diverged))
    ncols = n_cols(len(panel_list), per_row)
    fig, axes, loc = grid(len(panel_list), ncols, legend_entries=n_entries)
    drawn, starts, marks = [], [], []
    for k, (ax, (ptitle, members)) in enumerate(zip(axes, panel_list)):
        for kv in members:
            s = summarize(rows_of[kv["config_hash"]], metric, x)
            if not s["median"].notna().any():
                continue
            kw = kws[labels[kv["config_hash"]]]
            ax.plot(s["x"], s["median"], markevery=style.MARK_EVERY, markersize=3.5, **kw)
            drawn += [s["median"], s["lo"], s["hi"]]
            starts.append(s["median"].dropna().iloc[0])
            if (s["hi"] > s["lo"]).any():
                ax.fill_between(s["x"], s["lo"], s["hi"], color=kw["color"], alpha=0.18, linewidth=0)
            if bounded and s["bound"].notna().any():
                ax.plot(s["x"], s["bound"], color=kw["color"], **style.BOUND_STYLE)
                drawn.append(s["bound"])
            rows = rows_of[kv["config_hash"]]
            if "diverged" in rows.columns and rows["diverged"].astype(bool).any():
                last = s[s["median"].notna()].iloc[-1]
                marks.append((ax, last["x"], last["median"], kw["color"]))
        ax.set_yscale("log")
        if ptitle:
            ax.set_title(settings(ptitle, list(ptitle)))
        if k + ncols >= len(panel_list):
            ax.set_xlabel(style.x_label(x))
        if k % ncols == 0:
            ax.set_ylabel(style.metric_label(metric))
    if not drawn:
        plt.close(fig)
        raise NotEnoughData(f"no curve of {metric} to draw")
    note = clip_log_ylim(axes, np.concatenate([np.asarray(d, dtype=float) for d in drawn]), starts)
    top = axes[0].get_ylim()[1]
    for ax, xv, yv, color in marks:  # a diverged run's last point, on the cap when above it
        ax.plot([xv], [min(yv, top)], marker="x", markersize=7, color=color, linestyle="none", clip_on=False)
    hs = [Line2D([], [], markersize=3.5, **kw) for kw in kws.values()]
    ls = list(kws)
    if bounded:
        hs.append(bound_handle())
        ls.append("theorem bound (dotted)")
    if marks:
        hs.append(diverged_handle())
        ls.append("some seeds diverged")
    legend(fig, hs, ls, loc, ncols)
    if note:
        fig.supxlabel(note, fontsize=7, color="0.3")
    if title:
        fig.suptitle(title)
    return fig


convergence = writer(convergence_figure)


# --------------------------------------------------------------------------- tightness

@style.styled
def tightness_figure(df: pd.DataFrame, *, title: str | None = None, max_panels: int = 12):
    """Heatmap over (p, rank) of the mean measured value over the bound at the
    final iteration (:data:`figures.data.FINAL_RATIO`; <= 1 means the bound holds
    there; ``experiments.verify``'s *tightness* is instead the largest such ratio
    over the iterations), one panel per combination of the other settings that
    differ (one configuration per cell)."""
    for col in ("p", "rank", "bound", "bound_metric"):
        if col not in df.columns:
            raise NotEnoughData(f"no column {col!r}")
    tt = tightness_table(df[df["p"].notna()])
    if tt.empty:
        raise NotEnoughData("no finite bound")
    if len(tt[["p", "rank"]].drop_duplicates()) < 2:
        raise NotEnoughData("p and rank do not vary")
    out_cols = ["metric", "iteration", "measured", "bound", "ratio"]
    cf = tt.drop(columns=out_cols)
    panel_keys = label_columns(cf, ("p", "rank"))
    tt = tt.assign(**{c: cf[c] for c in panel_keys if c not in tt.columns})
    # one panel per combination as it is (n/a included): every configuration in one cell
    combos = [dict(zip(panel_keys, k)) for k in dict.fromkeys(
        tuple(None if is_missing(v) else v for v in r) for r in cf[panel_keys].itertuples(index=False, name=None))]
    combos.sort(key=lambda c: [sort_key(c[k]) for k in panel_keys])
    if len(combos) > max_panels:
        raise NotEnoughData(f"{len(combos)} panels (settings {panel_keys}) exceed {max_panels}")
    ratios = tt["ratio"].to_numpy(dtype=float)
    finite = ratios[np.isfinite(ratios) & (ratios > 0)]
    span = max(1.0, float(np.max(np.abs(np.log10(finite))))) if finite.size else 1.0
    norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
    nc = min(len(combos), 3)
    nr = math.ceil(len(combos) / nc)
    fig, axes = plt.subplots(nr, nc, figsize=(min(3.1 * nc + 1.0, style.MAX_WIDTH_IN - 0.25), 2.6 * nr + 0.6),
                             squeeze=False, layout="constrained")
    im = None
    for ax, combo in zip(axes.flat, combos):
        sel = np.ones(len(tt), dtype=bool)
        for c, v in combo.items():
            sel &= tt[c].map(lambda u, v=v: u == v or (is_missing(u) and is_missing(v))).to_numpy()
        sub = tt[sel]
        grid_ = sub.pivot(index="p", columns="rank", values="ratio")  # one configuration per cell
        vals = grid_.to_numpy(dtype=float)
        logv = np.where(vals > 0, np.log10(np.where(vals > 0, vals, 1.0)), np.nan)
        logv = np.where(np.isinf(vals), span, logv)
        im = ax.imshow(logv, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        for (a, b), v in np.ndenumerate(vals):
            if not np.isnan(v):
                dark = np.isinf(v) or abs(logv[a, b]) > 0.6 * span
                ax.text(b, a, "inf" if np.isinf(v) else f"{v:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        ax.set_xticks(range(grid_.shape[1]), [f"{c:g}" for c in grid_.columns])
        ax.set_yticks(range(grid_.shape[0]), [f"{r:g}" for r in grid_.index])
        ax.set_xlabel("rank r")
        ax.set_ylabel("p")
        ax.grid(False)
        ests = sub["estimator"].unique() if "estimator" in sub.columns else []
        est = f"{style.estimator_name(ests[0])}: " if len(ests) == 1 else ""
        head = settings(combo, [c for c in combo if not (est and c == "estimator")])
        its = sorted(sub["iteration"].unique())
        at = f"T = {its[0]}" if len(its) == 1 else f"T = {its[0]}..{its[-1]}"
        ax.set_title(f"{est}bound on {sub['metric'].iloc[0]}, {at}" + (f"\n{head}" if head else ""))
    for ax in list(axes.flat)[len(combos):]:
        ax.axis("off")
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9)
    cb.set_label(r"$\log_{10}$(" + FINAL_RATIO + ")\n(verify's tightness is the max over iterations)")
    if title:
        fig.suptitle(title)
    return fig


tightness = writer(tightness_figure)
