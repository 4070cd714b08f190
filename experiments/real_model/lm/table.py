"""Markdown table of the transformer section from the raw files of an ``OUT`` directory.

    python -m experiments.real_model.lm.table OUT [--output FILE]

Reads ``OUT/results.csv`` (only when ``OUT`` is finished: its ``_COMPLETE`` marker
vouches for it), ``OUT/pretrain-*/pretrain.json`` and the newest ``OUT/bench-*/bench.json``
(each vouched for by its directory's marker; the pretrained weights need not be there:
the GPU script's tarball leaves them out). One row per method (and p): mean held-out loss and
accuracy of next-token prediction on the shifted task over the seeds with a 95%
t-interval half-width, trainable parameters per step (expected over the coin), peak
optimiser-state bytes (median over seeds) and its ratio to LoRA's (``lora_a``), step
time from the bench (median over interleaved repetitions, [min, max]) and the per-
repetition ratio to LoRA's step time (median [min, max]).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

from .. import store
from ..store import read_config

LORA = "lora_a"


def _ci(x: pd.Series) -> float:
    n = len(x)
    return float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def _vouched(dirs, name: str) -> list[Path]:
    """Directories whose marker vouches for file ``name`` (present, of the recorded size).

    Only that file is required: the shipped tarball leaves the pretrained weights out."""
    out = []
    for d in dirs:
        info = store.read_marker(d)
        files = info.get("files") if info and info.get("kind") == store.KIND else None
        try:
            if isinstance(files, dict) and (d / name).stat().st_size == files.get(name) and read_config(d) is not None:
                out.append(d)
        except OSError:
            pass
    return out


def load(out: Path):
    """(results DataFrame, pretrain metrics, bench dict or None, bench dir name)."""
    if not store.finished(out):
        raise FileNotFoundError(f"{out}: not finished (no valid _COMPLETE); run the collect stage")
    df = pd.read_csv(out / "results.csv")
    pre = _vouched(sorted(out.glob("pretrain-*")), "pretrain.json")
    if len(pre) != 1:
        raise FileNotFoundError(f"{out}: expected one finished pretrain-* directory, found {len(pre)}")
    pretrain = json.loads((pre[0] / "pretrain.json").read_text())
    benches = sorted(_vouched(out.glob("bench-*"), "bench.json"), key=lambda d: (d / "bench.json").stat().st_mtime)
    bench = json.loads((benches[-1] / "bench.json").read_text()) if benches else None
    return df, pretrain, bench, (benches[-1].name if benches else None)


def markdown(out: Path) -> str:
    df, pre, bench, bench_name = load(out)
    lora_state = df.loc[df["label"] == LORA, "opt_state_bytes"].median() if (df["label"] == LORA).any() else None
    head = ("| method | p | seeds | held-out loss | held-out acc. | trainable params | opt. state (B) | ÷ LoRA "
            "| ms / step | ÷ LoRA step |")
    lines = [head, "|" + "---|" * 10]
    for label, g in df.groupby("label", sort=False):
        p = "" if pd.isna(g["p"].iloc[0]) else f"{g['p'].iloc[0]:g}"
        state = g["opt_state_bytes"].median()
        ratio = f"{state / lora_state:.3f}" if lora_state else ""
        ms = rat = ""
        if bench is not None and label in bench["methods"]:
            b = bench["methods"][label]
            ms = f"{b['ms_per_step']:.2f} [{b['ms_per_step_min']:.2f}, {b['ms_per_step_max']:.2f}]"
            if "over_lora" in b:
                o = b["over_lora"]
                rat = f"{o['median']:.3f} [{o['min']:.3f}, {o['max']:.3f}]"
        div = int(g["diverged"].sum())
        seeds = f"{len(g)}" + (f" ({div} diverged)" if div else "")
        lines.append(f"| {g['method'].iloc[0]} | {p} | {seeds} | {g['test_loss'].mean():.4f} ± {_ci(g['test_loss']):.4f} "
                     f"| {g['test_acc'].mean():.4f} ± {_ci(g['test_acc']):.4f} | {g['trainable_params'].iloc[0]:,.0f} "
                     f"| {state:,.0f} | {ratio} | {ms} | {rat} |")
    notes = [f"Shifted task: true chain (best possible) loss {pre['oracle_finetune_loss']:.4f}, accuracy "
             f"{pre['oracle_finetune_acc']:.4f}; pretrained model before fine-tuning: loss "
             f"{pre['shifted_start_loss']:.4f}, accuracy {pre['shifted_start_acc']:.4f} (pretraining task: loss "
             f"{pre['test_loss']:.4f}, accuracy {pre['test_acc']:.4f}, oracle {pre['oracle_pretrain_loss']:.4f} / "
             f"{pre['oracle_pretrain_acc']:.4f})."]
    if bench is not None:
        notes.append(f"Step time: {bench_name}/bench.json, {bench.get('gpu', bench['device'])}, one seed, "
                     f"{bench['reps']} interleaved repetitions of {bench['steps']} steps, device-synchronised.")
    devices = sorted(set(df["device"]))
    notes.append(f"Runs: results.csv ({len(df)} rows, device {', '.join(devices)}, "
                 f"{int(df['workers'].max())} worker process(es) sharing it); ± is the 95% t-interval half-width.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.real_model.lm.table", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="OUT directory of python -m experiments.real_model.lm")
    ap.add_argument("--output", default=None, help="write the table here (atomically) instead of stdout")
    args = ap.parse_args(argv)
    try:
        text = markdown(Path(args.out))
    except FileNotFoundError as exc:
        print(f"error: out: {exc}", file=sys.stderr)
        return 2
    if args.output:
        store.atomic_write(Path(args.output), store.text_writer(text))
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
