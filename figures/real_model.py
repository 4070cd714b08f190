"""The real-model section's figure: test accuracy against Bernoulli-LoRA's p.

Drawn from the per-configuration summary of a real-model table
(``experiments.real_model.report.summarize``: ``method``, ``p``, ``acc_median``,
``acc_std``, ``seeds``) with the suite's names and colours (:mod:`figures.style`),
so that a method looks the same here as in every other figure.
"""
from __future__ import annotations

import pandas as pd

from figures import style
from figures.style import plt

#: line style of a fixed-side baseline by its sampled factor (colour: :func:`figures.style.method_color`)
SIDE_LINESTYLES = {None: "-", "A": "--", "B": ":"}


@style.styled
def accuracy_vs_p(table: pd.DataFrame, *, title: str = ""):
    """Bernoulli-LoRA's median test accuracy against p (error bars: std over seeds),
    every other method as a horizontal line at its median. Returns the figure."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    bern = table[table["method"] == "bernoulli_lora"].sort_values("p")
    if len(bern):
        ax.errorbar(bern["p"], bern["acc_median"], yerr=bern["acc_std"].fillna(0.0), marker="o", capsize=3,
                     color=style.method_color("bernoulli_lora"), label=style.method_label("bernoulli_lora", None, None))
    for _, r in table[table["method"] != "bernoulli_lora"].iterrows():
        family, side = style.split_side(r["method"])
        ax.axhline(r["acc_median"], color=style.method_color(r["method"]), linestyle=SIDE_LINESTYLES[side],
                   linewidth=1.2, label=style.method_label(r["method"], None, None))
    ax.set_xlabel("p  (probability of B sampled and frozen, A trained)")
    ax.set_ylabel("test accuracy (%), median over seeds")
    ax.set_title(title)
    ax.set_xlim(-0.03, 1.03)
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig
