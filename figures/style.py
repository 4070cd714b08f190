"""One look for every figure: rcParams, the paper's method names, colours.

Naming convention (documented once, used everywhere): RAC-LoRA variants are
named by the factor that is TRAINED. In this suite p is the probability of the
left sketch (B sampled and frozen, A trained), so

    p = 1  ->  "RAC-LoRA-GD (A)"     (B sampled, A trained every step)
    p = 0  ->  "RAC-LoRA-GD (B)"     (A sampled, B trained every step)
    0 < p < 1 -> "Bernoulli-LoRA-GD (p=0.2)"

The estimator suffix follows the paper (GD, SGD, PAGE, MVR, QGD, MARINA, EF21).
"""
from __future__ import annotations

import functools
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colormaps  # noqa: E402

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
    "rac_A": "tab:red",
    "rac_B": "tab:orange",
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


def method_label(method, p=None, estimator="gd") -> str:
    """The paper's name of a method: see the module docstring for RAC-LoRA."""
    method = str(method)
    est = estimator_name(estimator)
    if method == "bernoulli_lora":
        if _is_nan(p):
            return f"Bernoulli-LoRA-{est}"
        p = float(p)
        if p == 1.0:
            return f"RAC-LoRA-{est} (A)"
        if p == 0.0:
            return f"RAC-LoRA-{est} (B)"
        return f"Bernoulli-LoRA-{est} (p={p:g})"
    if method == "fpft":
        return f"FPFT-{est}"
    return {"lora": "LoRA", "cola": "COLA", "asymm_lora": "AsymmLoRA"}.get(method, method)


def method_color(method, p=None):
    """Fixed colours for baselines and RAC-LoRA; Bernoulli-LoRA follows a colormap in p."""
    method = str(method)
    if method == "bernoulli_lora" and not _is_nan(p):
        p = float(p)
        if p == 1.0:
            return FIXED_COLORS["rac_A"]
        if p == 0.0:
            return FIXED_COLORS["rac_B"]
        return colormaps["viridis"](0.15 + 0.75 * p)
    if method == "bernoulli_lora":
        return "tab:cyan"
    return FIXED_COLORS.get(method, "tab:gray")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def x_label(x: str) -> str:
    return X_LABELS.get(x, x)


def palette(n: int):
    """n distinct colours for lines that are not methods (ranks, shapes)."""
    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]
