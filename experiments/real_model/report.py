"""Tables and the accuracy-vs-p figure from a real-model ``results.parquet``.

One row per (configuration, seed) in; out: ``summary.csv`` / ``summary.md`` (median and
std of test accuracy over seeds per configuration, trainable parameters, wall time of the
batched run) and ``accuracy_vs_p.{pdf,png}``, as writers (:func:`report_files`) so that
the CLI writes them atomically under its completion marker. A configuration is one
``config_hash`` (the column written by the CLI); the display columns only label it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

# display columns of a configuration (constant within one config_hash)
LABELS = ["data", "method", "p", "rank", "switch", "optimizer", "epochs"]

# The RAC-LoRA paper's MNIST table (rank 1, %, single runs) and the Bernoulli-LoRA
# authors' best (median +- std of 20 seeds); trained on the 60k MNIST training set.
PAPER_MNIST_RANK1 = {
    "fpft": "98.0", "lora_a": "83.8", "cola_a": "92.6", "asymm_lora_a": "62.3", "rac_lora_a": "92.0",
    "lora_b": "87.0", "cola_b": "96.2", "asymm_lora_b": "81.6", "rac_lora_b": "96.1",
    "bernoulli_lora(p=0.99)": "96.46 +- 0.17",
}
PAPER_TRAINABLE_RANK1 = {"rac_lora_a": 133, "rac_lora_b": 912}


def _key(method, p) -> str:
    """The identifier of a configuration's method: ``rac_lora_b``, ``bernoulli_lora(p=0.99)``."""
    return f"{method}(p={p:g})" if p is not None and not (isinstance(p, float) and math.isnan(p)) else method


def _label(method, p) -> str:
    """The display name (figures.style: both factors' roles, e.g. "RAC-LoRA (B sampled, A trained)")."""
    from figures.style import method_label

    return method_label(method, p, None, rac_names=False)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Median / std (ddof=1) of test accuracy per configuration (``config_hash``), in percent."""
    # a configuration is a config_hash; tables written before the hash column (one command each) by their labels
    keys = ["config_hash"] * ("config_hash" in df.columns) + [k for k in LABELS if k in df.columns]
    g = df.assign(p=df["p"].fillna(-1.0)).groupby(keys, sort=False, dropna=False)
    out = g.agg(
        seeds=("seed", "count"),
        acc_median=("test_acc", "median"),
        acc_std=("test_acc", "std"),
        acc_mean=("test_acc", "mean"),
        trainable_params=("trainable_params", "first"),
        trainable_params_max=("trainable_params_max", "first"),
        opt_state_bytes=("opt_state_bytes", "first"),
        wall_s=("wall_s", "first"),
        diverged=("diverged", "sum"),
    ).reset_index()
    out["p"] = out["p"].where(out["p"] >= 0, np.nan)
    for c in ("acc_median", "acc_std", "acc_mean"):
        out[c] = 100.0 * out[c]
    out.insert(1, "label", [_label(m, p) for m, p in zip(out["method"], out["p"])])
    if "data" in out and "rank" in out:
        out["paper"] = [PAPER_MNIST_RANK1.get(_key(m, p), "") if d == "mnist" and r == 1 else ""
                        for m, p, d, r in zip(out["method"], out["p"], out["data"], out["rank"])]
    return out


def _markdown(table: pd.DataFrame) -> str:
    cols = ["label", "seeds", "acc_median", "acc_std", "trainable_params", "wall_s", "diverged", "paper"]
    cols = [c for c in cols if c in table.columns]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    rows = []
    for _, r in table[cols].iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in ("acc_median", "acc_std"):
                cells.append("nan" if pd.isna(v) else f"{v:.2f}")
            elif c == "trainable_params":
                cells.append(f"{v:g}")
            elif c == "wall_s":
                cells.append(f"{v:.1f}")
            else:
                cells.append(str(v))
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def summary_markdown(df: pd.DataFrame, table: pd.DataFrame) -> str:
    """``summary.md``: a header describing the run and the table of :func:`summarize`."""
    first = df.iloc[0]
    lines = [
        f"# Real-model fine-tuning: {first['data']}, rank {first['rank']}, {first['epochs']} epochs, "
        f"{first['optimizer']}, switch every {first['switch']}\n",
        "Test accuracy (%) over seeds: median and std (ddof 1). trainable_params: parameters trained per step "
        "and seed (Bernoulli-LoRA: expected count p*|A| + (1-p)*|B|). wall_s: wall time of the batched run of "
        "all seeds of a configuration (fine-tuning only; the Bernoulli-LoRA p values run as one batch and each "
        "gets an equal share of its time), on " + str(first["device"]) + ".\n",
        "Counts: a rank-r adapter of a layer n -> m has r*n entries in A (input side) and r*m in B; "
        "biases are frozen. For MNIST 784-64-64-5 at rank 1, |A| = 784+64+64 = 912 and |B| = 64+64+5 = 133, "
        "the paper's 912 and 133.\n",
    ]
    if first["data"] == "mnist":
        lines.append("The paper column is the RAC-LoRA / Bernoulli-LoRA papers' number, trained on the 60k MNIST "
                     "training set; here train/val/test are a 60/20/20 stratified split of the 10k test set, so "
                     "the numbers are comparable in trend, not to the decimal.\n")
    return "\n".join(lines) + "\n" + _markdown(table)


def accuracy_vs_p_figure(df: pd.DataFrame, table: pd.DataFrame):
    """:func:`figures.real_model.accuracy_vs_p` titled with the run's data, rank, seeds and switch."""
    from figures.real_model import accuracy_vs_p

    first = df.iloc[0]
    return accuracy_vs_p(table, title=f"{first['data']}, rank {first['rank']}, {int(table['seeds'].max())} seeds, "
                                      f"switch per {first['switch']}")


def report_files(df: pd.DataFrame) -> dict:
    """{file name: writer(path)} for summary.csv, summary.md and accuracy_vs_p.{pdf,png}.

    The figure is drawn once and closed after the last writer ran."""
    import matplotlib.pyplot as plt

    table = summarize(df)
    text = summary_markdown(df, table)
    fig = accuracy_vs_p_figure(df, table)

    def figure(fmt, last):
        def write(path):
            try:
                fig.savefig(path, dpi=150, format=fmt)
            finally:
                if last:
                    plt.close(fig)
        return write

    def text_file(path):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    return {"summary.csv": lambda path: table.to_csv(path, index=False), "summary.md": text_file,
            "accuracy_vs_p.pdf": figure("pdf", False), "accuracy_vs_p.png": figure("png", True)}
