"""Panels, labels, legends and axis limits shared by the figure functions.

Sizes and limits come from :mod:`figures.style`; nothing here reads files.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from figures import style
from figures.data import CONFIG, is_missing, stepsize_column
from figures.style import plt

METHOD_KEYS = ("method", "p", "estimator")


# --------------------------------------------------------------------------- text

def fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if math.isnan(v) else f"{v:g}"
    return str(v)


def setting(col: str, val, *, full: bool = False) -> str:
    """One setting as text: ``rank r = 2``, ``gamma = 1/L``, ``L = 10`` (a prefixed
    column ``problem.L`` is shown by its last part unless ``full``)."""
    if col == "rank":
        return f"rank r = {fmt(val)}" if val != 0 else "full rank"
    if col == stepsize_column([col]):
        return rf"$\gamma$ = {fmt(val)}/L"
    if col == "estimator":
        return f"{style.estimator_name(val)}"
    if col == CONFIG:
        return f"config {val}"
    return f"{col if full else str(col).rsplit('.', 1)[-1]} = {fmt(val)}"


def settings(kv: dict, cols) -> str:
    """The settings ``cols`` of ``kv`` that apply (NaN: not applicable, left out);
    prefixed columns by their last part unless two of them share it."""
    cols = [c for c in cols if c in kv and not is_missing(kv[c])]
    last = [str(c).rsplit(".", 1)[-1] for c in cols]
    return ", ".join(setting(c, kv[c], full=last.count(s) > 1) for c, s in zip(cols, last))


def line_label(kv: dict, extra=()) -> str:
    """The paper's method name, then the settings ``extra`` (those that apply)."""
    parts = []
    if "method" in kv:
        parts.append(style.method_label(kv["method"], kv.get("p"), kv.get("estimator", "gd")))
    rest = settings(kv, [k for k in extra if k not in METHOD_KEYS])
    if rest:
        parts.append(rest.replace("rank r", "r"))
    return ", ".join(parts) if parts else "all runs"


# --------------------------------------------------------------------------- grid

def n_cols(n_panels: int, per_row: int | None = None) -> int:
    """Columns of the grid: ``per_row`` when it fits (one row per setting, e.g. the
    ranks side by side), else ``per_row`` split evenly over as few rows as
    :data:`style.MAX_COLS` allows, else ``n_panels`` so split."""
    if per_row and per_row >= 1:  # 6 ranks -> 3 columns, 2 rows per setting
        return math.ceil(per_row / math.ceil(per_row / style.MAX_COLS))
    rows = math.ceil(n_panels / style.MAX_COLS)
    return max(1, math.ceil(n_panels / rows))


def grid(n_panels: int, ncols: int, *, legend_entries: int, sharey: bool = True, panel_size=None):
    """A figure of ``n_panels`` axes in ``ncols`` columns (unused slots removed) with
    room for a legend of ``legend_entries`` (right of the panels when short, else
    below). Returns (fig, axes list, legend location)."""
    nrows = math.ceil(n_panels / ncols)
    right = legend_entries <= style.LEGEND_RIGHT_MAX
    pw, ph = panel_size or style.PANEL_SIZE
    legend_w = 2.6 if right else 0.0
    legend_h = 0.0 if right else 0.2 * math.ceil(legend_entries / max(ncols, 2)) + 0.3
    # leave room for the 0.1 in pad of savefig's bbox_inches='tight' on either side
    width = min(style.MAX_WIDTH_IN - 0.25, pw * ncols + legend_w + 0.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, ph * nrows + legend_h + 0.7), squeeze=False,
                             sharex=True, sharey=sharey, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        fig.delaxes(ax)
    for k, ax in enumerate(flat[:n_panels]):
        # a panel shows its x tick labels when no panel sits below it
        if k + ncols < n_panels:
            ax.tick_params(labelbottom=False)
        else:
            ax.tick_params(labelbottom=True)
    return fig, flat[:n_panels], ("outside right upper" if right else "outside lower center")


def legend(fig, handles, labels, loc: str, ncols: int):
    if loc == "outside lower center":
        return fig.legend(handles, labels, loc=loc, ncols=max(2, min(ncols, 4)))
    return fig.legend(handles, labels, loc=loc)


def bound_handle():
    return Line2D([], [], color="gray", **style.BOUND_STYLE)


def diverged_handle():
    return Line2D([], [], color="gray", marker="x", linestyle="none")


# --------------------------------------------------------------------------- y range

def clip_log_ylim(axes, values, starts) -> str | None:
    """Set a common log y-range spanning the drawn ``values`` (medians, bands,
    bounds), but at least :data:`style.Y_FLOOR_REL` and at most
    :data:`style.Y_CAP_REL` times the largest of ``starts`` (the curves' first
    values). Returns a note saying what was clipped (to show in the figure), or None."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    s = np.asarray(starts, dtype=float).ravel()
    s = s[np.isfinite(s) & (s > 0)]
    if not v.size:
        return None
    scale = float(s.max()) if s.size else float(np.median(v))
    floor, cap = style.Y_FLOOR_REL * scale, style.Y_CAP_REL * scale
    lo, hi = max(float(v.min()), floor), min(float(v.max()), cap)
    lo, hi = min(lo, hi), max(lo, hi, lo * 10)
    pad = 10 ** min(0.03 * np.log10(hi / lo), 0.5)
    for ax in axes:
        ax.set_ylim(lo / pad, hi * pad)
    notes = []
    if float(v.max()) > cap:
        notes.append(f"capped at {style.Y_CAP_REL:.0e} x the largest start (diverging runs)")
    if float(v.min()) < floor:
        notes.append(f"floored at {style.Y_FLOOR_REL:.1e} x the largest start (float64 round-off)")
    return "y-axis " + ",\n".join(notes) if notes else None


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
