"""One look for every figure: rcParams, the paper's method names, colours.

Naming convention (docs/design.md#factors, the one statement): p is the
probability of the left sketch, B sampled and frozen, A trained; a display
label always says both factors, and a side suffix in an identifier
(``rac_lora_b``, ``lora_a``, the keys of :data:`FIXED_COLORS`) names the factor
that is SAMPLED (random). So

    p = 1, rac_lora_b  ->  "RAC-LoRA-GD (B sampled, A trained)"
    p = 0, rac_lora_a  ->  "RAC-LoRA-GD (A sampled, B trained)"
    0 < p < 1          ->  "Bernoulli-LoRA-GD (p=0.2)"

The estimator suffix follows the paper (GD, SGD, PAGE, MVR, QGD, MARINA, EF21).

How a line looks is decided here and nowhere else (:func:`line_style`): the
method and p give the colour, the estimator the line style and marker, so that
two estimators at the same p never look alike; the theorem's bound is a thin
dotted line in its curve's colour (:data:`BOUND_STYLE`, a style no estimator
uses). Figure sizes obey :data:`MAX_WIDTH_IN` (panels wrap into a grid of at
most :data:`MAX_COLS` columns) and log y-axes are clipped to
[:data:`Y_FLOOR_REL`, :data:`Y_CAP_REL`] times the largest starting value.
"""
from __future__ import annotations

import functools
import math
import zlib

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps

def use_file_backend() -> None:
    """Select matplotlib's Agg backend unless ``MPLBACKEND`` names one: for commands
    that only write files (``figures.make``, the real-model CLI). Called by their
    entry points, never at import, so that importing :mod:`figures` from a notebook
    or another program leaves its backend alone."""
    import os

    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")


RC = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,   # embed TrueType: editable text in the PDF
    "legend.frameon": False,
}

ESTIMATOR_NAMES = {
    "gd": "GD", "sgd": "SGD", "page": "PAGE", "mvr": "MVR", "qgd": "QGD",
    "marina": "MARINA", "ef21": "EF21", "subgradient": "SubGD",
}

FIXED_COLORS = {
    "fpft": "black",
    "rac_lora_b": "tab:red",      # p = 1: B sampled, A trained
    "rac_lora_a": "tab:orange",   # p = 0: A sampled, B trained
    "lora": "tab:brown",
    "cola": "tab:pink",
    "asymm_lora": "tab:purple",
}

METRIC_LABELS = {
    "grad_norm_sq": r"$\|\nabla f(W_t)\|_F^2$",
    "avg_grad_norm_sq": r"$\frac{1}{t}\sum_{s<t}\|\nabla f(W_s)\|_F^2$",
    "min_grad_norm_sq": r"$\min_{s<t}\|\nabla f(W_s)\|_F^2$",
    "f_gap": r"$f(W_t) - f^\star$",
    "avg_f_gap": r"$\frac{1}{t}\sum_{s<t} f(W_s) - f^\star$",
    "min_f_gap": r"$\min_{s<t} f(W_s) - f^\star$",
    "dist_sq": r"$\|W_t - W^\star\|_F^2$",
    "loss": r"$f(W_t)$",
}

#: line style and marker of each estimator (the colour is the method's and p's)
ESTIMATOR_STYLES = {
    "gd": {"linestyle": "-", "marker": None},
    "sgd": {"linestyle": (0, (6, 2)), "marker": "o"},
    "page": {"linestyle": "-.", "marker": "s"},
    "mvr": {"linestyle": (0, (3, 1, 1, 1, 1, 1)), "marker": "^"},
    "qgd": {"linestyle": (0, (8, 2, 2, 2)), "marker": "v"},
    "marina": {"linestyle": (0, (4, 1)), "marker": "D"},
    "ef21": {"linestyle": (0, (2, 1, 6, 1)), "marker": "P"},
    "subgradient": {"linestyle": "-", "marker": "x"},
}
#: looks for estimators not listed above (picked by a hash of the name: stable across figures)
SPARE_STYLES = ({"linestyle": (0, (1, 1, 4, 1)), "marker": "*"}, {"linestyle": (0, (10, 3)), "marker": "h"},
                {"linestyle": (0, (5, 1, 1, 1, 1, 1, 1, 1)), "marker": "<"})
#: the theorem's bound: dotted, thin, in its curve's colour
BOUND_STYLE = {"linestyle": ":", "linewidth": 1.1, "alpha": 0.9}
#: markers are spaced at this fraction of the axes' diagonal
MARK_EVERY = 0.12

#: layout: one panel's size (inches), columns before wrapping, the widest figure,
#: the most panels before extra settings move from panels into the line labels,
#: the most legend entries placed right of the panels (more go below, in columns)
PANEL_SIZE = (2.5, 2.0)
RATE_PANEL_SIZE = (4.2, 3.0)
MAX_COLS = 4
MAX_WIDTH_IN = 11.0
MAX_PANELS = 16
LEGEND_RIGHT_MAX = 12

#: log y-axes show at most [Y_FLOOR_REL, Y_CAP_REL] x the largest starting value:
#: squared quantities of float64 iterates (f - f*, gradient norms squared) are
#: round-off below about eps^2 times their scale, and a diverged run's values
#: above the cap only squash the rest of the figure
Y_FLOOR_REL = float(np.finfo(np.float64).eps) ** 2
Y_CAP_REL = 1e4

X_LABELS = {"iteration": "iterations", "epochs": "epochs", "bits": "communicated bits",
            "time_s": "time (s)"}


def apply_style() -> None:
    """Set the suite's rcParams (idempotent)."""
    plt.rcParams.update(RC)


def styled(fn):
    """Run a figure function under the suite's rcParams (without changing the caller's)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return fn(*args, **kwargs)
    return wrapper


def _is_nan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return x is None


def estimator_name(estimator) -> str:
    return ESTIMATOR_NAMES.get(str(estimator), str(estimator).upper())


#: the factor sampled (random, frozen) when the coin is 1 (probability p) and when it is 0
SAMPLED = {1: "B", 0: "A"}
FAMILY_NAMES = {"fpft": "FPFT", "lora": "LoRA", "cola": "COLA", "asymm_lora": "AsymmLoRA",
                "rac_lora": "RAC-LoRA", "bernoulli_lora": "Bernoulli-LoRA"}


def split_side(method) -> tuple[str, str | None]:
    """``"rac_lora_b"`` -> ``("rac_lora", "B")`` (the sampled factor); other names -> ``(name, None)``."""
    method = str(method)
    if method[-2:] in ("_a", "_b") and method[:-2] in FAMILY_NAMES:
        return method[:-2], method[-1].upper()
    return method, None


def sides_label(family: str, sampled: str) -> str:
    """What the two factors do, e.g. ``"B sampled, A trained"``; LoRA and COLA train
    both factors from a sampled and a zero one: ``"A sampled, B zero"``."""
    other = "A" if sampled == "B" else "B"
    return f"{sampled} sampled, {other} zero" if family in ("lora", "cola") else f"{sampled} sampled, {other} trained"


def method_label(method, p=None, estimator="gd", *, rac_names: bool = True) -> str:
    """The paper's name of a method, with both factors' roles (module docstring).

    ``estimator=None`` (the real-model section, trained by an optimiser) gives no
    estimator suffix; ``rac_names=False`` keeps Bernoulli-LoRA's name at p = 0 and 1
    (a table that also lists ``rac_lora_a`` / ``rac_lora_b`` themselves)."""
    family, side = split_side(method)
    est = "" if estimator is None else "-" + estimator_name(estimator)
    if family == "bernoulli_lora":
        if _is_nan(p):
            return f"Bernoulli-LoRA{est}"
        p = float(p)
        if rac_names and p in (0.0, 1.0):
            return f"RAC-LoRA{est} ({sides_label('rac_lora', SAMPLED[int(p)])})"
        return f"Bernoulli-LoRA{est} (p={p:g})"
    if family == "fpft":
        return f"FPFT{est}"
    name = FAMILY_NAMES.get(family, str(method))
    name = name if estimator in (None, "gd") else f"{name}{est}"
    return f"{name} ({sides_label(family, side)})" if side else name


def method_color(method, p=None):
    """Fixed colours for baselines and RAC-LoRA; Bernoulli-LoRA follows a colormap in p."""
    method = str(method)
    if method == "bernoulli_lora" and not _is_nan(p):
        p = float(p)
        if p in (0.0, 1.0):
            return FIXED_COLORS["rac_lora_" + SAMPLED[int(p)].lower()]
        return colormaps["viridis"](0.15 + 0.75 * p)
    if method == "bernoulli_lora":
        return "tab:cyan"
    return FIXED_COLORS.get(method, FIXED_COLORS.get(split_side(method)[0], "tab:gray"))


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def x_label(x: str) -> str:
    return X_LABELS.get(x, x)


def palette(n: int):
    """n distinct colours for lines that are not methods (ranks, shapes)."""
    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def estimator_style(estimator) -> dict:
    """Line style and marker of an estimator (:data:`ESTIMATOR_STYLES`)."""
    name = str(estimator)
    if name in ESTIMATOR_STYLES:
        return dict(ESTIMATOR_STYLES[name])
    return dict(SPARE_STYLES[zlib.crc32(name.encode()) % len(SPARE_STYLES)])


def line_style(kv: dict, color=None) -> dict:
    """Keyword arguments of ``ax.plot`` for a configuration: colour from the method
    and p (unless ``color`` is given), line style and marker from the estimator."""
    out = estimator_style(kv.get("estimator", "gd"))
    out["color"] = method_color(kv.get("method"), kv.get("p")) if color is None else color
    return out


def look(kw: dict) -> tuple:
    """What the eye tells apart: colour, line style, marker (for collision checks)."""
    from matplotlib.colors import to_hex

    return to_hex(kw["color"]), repr(kw.get("linestyle")), repr(kw.get("marker"))
