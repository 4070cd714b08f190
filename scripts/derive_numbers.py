r"""Every derived number that README.md and paper_repro.md quote, computed from raw files.

    python scripts/derive_numbers.py [--root paper_results] [-o paper_results/derived_numbers.csv]
        reads the raw outputs under paper_results/ (logs, timing and benchmark JSONs,
        summaries, verdicts, median curves, splits, spectrum) and writes one CSV row per
        number: section, quantity, value, source (the file(s) it comes from). A quantity
        whose raw file is absent is not written.

Helpers that write the raw files (used by scripts/gpu_sweeps.sh and scripts/reproduce.sh):

    python scripts/derive_numbers.py curves TABLE -o CSV     median / 10% / 90% over seeds of
        grad_norm_sq and f_gap per configuration (config_hash) and iteration
    python scripts/derive_numbers.py rates TABLE -o CSV      figures.data.rate_table: per
        configuration, the median over seeds of the fitted linear rate
    python scripts/derive_numbers.py spectrum --size paper [--device cuda] -o CSV
        the paper linreg problem at W0: max |x_j|, range of r''(x_j), eigenvalues of Q above
        0.01 lambda (builds the problem, or loads it from the cache)
    python scripts/derive_numbers.py splits [--mnist-dir DIR] -o CSV
        sizes of the real-model train/validation/test splits and steps per epoch
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the window of the median-curve log-rate fit, and the threshold of "first below"
FIT_HI, FIT_LO, FIRST_BELOW = 1e2, 1e-12, 1e-10
#: values at or below this are rounding noise in the CPU-vs-GPU comparison of summaries
AGREE_FLOOR = 1e-3


class Rows:
    def __init__(self, root: Path):
        self.root, self.rows = root, []

    def add(self, section, quantity, value, *sources):
        if isinstance(value, float):
            value = f"{value:.6g}"
        self.rows.append(dict(section=section, quantity=quantity, value=value,
                              source="; ".join(str(Path(s)) for s in sources)))

    def path(self, rel):
        p = self.root / rel
        return p if p.exists() else None


def _json(p):
    return json.loads(Path(p).read_text())


def _last_line(p):
    return Path(p).read_text().strip().splitlines()[-1]


def _group_times(log):
    """(jobs, runs, steps, seconds) of each 'N jobs, R runs, S steps: Xs on dev' line of a sweep log."""
    pat = re.compile(r"(\d+) jobs, (\d+) runs, (\d+) steps: ([\d.]+)s on")
    return [tuple(float(g) for g in m.groups()) for m in pat.finditer(Path(log).read_text())]


# --------------------------------------------------------------------------- linreg (section A)

def linreg_constants(r: Rows, log="h200/sweeps/log.txt"):
    p = r.path(log)
    if not p:
        return
    text = p.read_text()
    for key in ("lam", "L", "L_avg", "L_max", "pre_steps", "pre_grad_norm_sq"):
        m = re.search(rf"\b{key}=([-\d.e+]+)", text)
        if m:
            r.add("A1 linreg", key, float(m.group(1)), log)
    m = re.search(r"f\(W0\)=([\d.e+-]+) \|\|grad f\(W0\)\|\|\^2=([\d.e+-]+)", text)
    if m:
        r.add("A1 linreg", "f(W0)", float(m.group(1)), log)
        r.add("A1 linreg", "||grad f(W0)||^2", float(m.group(2)), log)


def predicted_rates(r: Rows, ranks=(1, 2, 4, 8, 16, 32), n=64):
    """ln(1 - (2 g h - g^2 h^2) r/n) per iteration, with h = (2/3) L (the regulariser's curvature at W0):
    8/9 for both gamma = 1/L and 2/L (paper_repro.md A1)."""
    for factor in (1.0, 2.0):
        c = 2 * factor * (2 / 3) - factor**2 * (2 / 3) ** 2
        r.add("A1 linreg", f"2 gamma h - gamma^2 h^2 at gamma = {factor:g}/L", c, "formula")
    for k in ranks:
        r.add("A1 linreg", f"predicted log-rate ln(1 - (8/9) r/{n}), rank {k}", math.log(1 - (8 / 9) * k / n), "formula")


def final_medians(r: Rows, summary, section, label):
    p = r.path(summary)
    if not p:
        return
    s = pd.read_csv(p)
    for (est, method, factor, rank), g in s.groupby(["estimator", "method", "stepsize", "rank"]):
        v = g["grad_norm_sq_median"]
        r.add(section, f"{label}: final median ||grad||^2, {method} {est} rank {rank} factor {factor:g}, min over p",
              float(v.min()), summary)
        r.add(section, f"{label}: final median ||grad||^2, {method} {est} rank {rank} factor {factor:g}, max over p",
              float(v.max()), summary)
    r.add(section, f"{label}: diverged runs", int(s["diverged"].sum()), summary)


def curve_numbers(r: Rows, curves, section):
    """Log-rate of the median curve (least squares of ln median on [FIT_LO, FIT_HI]) and the
    first iteration with median < FIRST_BELOW, per configuration."""
    p = r.path(curves)
    if not p:
        r.add(section, "median curves", "not in the repository: log-rates and first-below not derived", curves)
        return
    c = pd.read_csv(p)
    for _, g in c.groupby("config_hash"):
        g = g.sort_values("iteration")
        it, med = g["iteration"].to_numpy(float), g["grad_norm_sq_median"].to_numpy(float)
        win = (med <= FIT_HI) & (med >= FIT_LO)
        first = g.iloc[0]
        label = " ".join(f"{k} {first[k]:g}" if isinstance(first[k], float) else f"{k} {first[k]}"
                         for k in ("problem", "method", "estimator", "stepsize", "rank", "p") if k in g)
        if win.sum() >= 3:
            slope = np.polyfit(it[win], np.log(med[win]), 1)[0]
            r.add(section, f"log-rate of the median, {label}", float(slope), curves)
        below = it[med < FIRST_BELOW]
        r.add(section, f"first iteration with median < {FIRST_BELOW:g}, {label}",
              int(below[0]) if below.size else "never", curves)


def verdict_numbers(r: Rows, verdicts_txt, verdicts_csv, section):
    if r.path(verdicts_txt):
        r.add(section, "verdict counts", _last_line(r.root / verdicts_txt), verdicts_txt)
    p = r.path(verdicts_csv) if verdicts_csv else None
    if not p:
        return
    v = pd.read_csv(p)
    for (est, verdict), g in v.groupby(["estimator", "verdict"]):
        if verdict == "holds":
            r.add(section, f"tightness of the {est} groups that hold, min", float(g["tightness"].min()), verdicts_csv)
            r.add(section, f"tightness of the {est} groups that hold, max", float(g["tightness"].max()), verdicts_csv)
        else:
            reasons = sorted(set(g["reason"].astype(str)))
            r.add(section, f"{est} groups '{verdict}'", f"{len(g)}: {reasons[0]}" + (" ..." if len(reasons) > 1 else ""),
                  verdicts_csv)


def sweep_times(r: Rows, log, timing, section, label):
    if r.path(log):
        for jobs, runs, steps, sec in _group_times(r.root / log):
            r.add(section, f"{label}: group of {int(jobs)} jobs, {int(runs)} runs, {int(steps)} steps, seconds", sec, log)
    if r.path(timing):
        t = _json(r.root / timing)
        r.add(section, f"{label}: engine seconds", t["engine_s"], timing)
        r.add(section, f"{label}: wall seconds", t["wall_s"], timing)


def cpu_vs_gpu(r: Rows, cpu="cpu/linreg_gd_summary.csv", gpu="h200/sweeps/linreg_gd_summary.csv",
               cpu_v="cpu/linreg_gd_verdicts.csv", gpu_v="h200/sweeps/linreg_gd_verdicts.csv"):
    if not (r.path(cpu) and r.path(gpu)):
        return
    a, b = pd.read_csv(r.root / cpu), pd.read_csv(r.root / gpu)
    j = a.merge(b, on="config_hash", suffixes=("_cpu", "_gpu"))
    r.add("A1 CPU vs H200", "jobs in both summaries", len(j), cpu, gpu)
    for col in ("grad_norm_sq_median", "grad_norm_sq_q10", "grad_norm_sq_q90"):
        x, y = j[f"{col}_cpu"].to_numpy(float), j[f"{col}_gpu"].to_numpy(float)
        rel = np.abs(x - y) / np.maximum(np.abs(y), np.finfo(float).tiny)
        big = np.abs(y) > AGREE_FLOOR
        r.add("A1 CPU vs H200", f"{col} at T = 4000: max relative difference where > {AGREE_FLOOR:g} "
              f"({int(big.sum())} jobs)", float(rel[big].max()) if big.any() else "none", cpu, gpu)
        r.add("A1 CPU vs H200", f"{col} at T = 4000: max relative difference, all jobs "
              "(values near 1e-21..1e-31 are rounding noise)", float(rel.max()), cpu, gpu)
    if r.path(cpu_v) and r.path(gpu_v):
        va, vb = pd.read_csv(r.root / cpu_v), pd.read_csv(r.root / gpu_v)
        v = va.merge(vb, on="config_hash", suffixes=("_cpu", "_gpu"))
        r.add("A1 CPU vs H200", "groups with the same verdict", f"{int((v.verdict_cpu == v.verdict_gpu).sum())} of {len(v)}",
              cpu_v, gpu_v)
        d = (v.tightness_cpu - v.tightness_gpu).abs()
        r.add("A1 CPU vs H200", "max |tightness difference|", float(d.max()), cpu_v, gpu_v)


def cpu_gemm_budget(r: Rows, bench="cpu/bench_gradient_cpu.json", log="cpu/linreg_gd_log.txt"):
    """The fp64 GEMM work of the paper GD sweep against the CPU's measured rates."""
    if not r.path(bench):
        return
    b = _json(r.root / bench)
    d, runs = b["gradient"]["d"], b["gradient"]["runs"]
    step_flop = 2.0 * runs * d * d
    groups = [g for g in _group_times(r.root / log) if g[1] == runs] if r.path(log) else []
    steps = sum(g[2] for g in groups)
    peak, grad = b["gemm_peak"]["tflops"] * 1e12, b["gradient"]["tflops"] * 1e12
    r.add("A1 CPU", "GEMM steps of 320 runs in the sweep", int(steps), log)
    r.add("A1 CPU", "fp64 TFLOP in the gradients", steps * step_flop / 1e12, log, bench)
    r.add("A1 CPU", "minutes at the dense GEMM peak", steps * step_flop / peak / 60, log, bench)
    r.add("A1 CPU", "minutes at the measured gradient rate", steps * step_flop / grad / 60, log, bench)
    for jobs, n, k, sec in groups:
        r.add("A1 CPU", f"seconds over the gradient floor, group of {int(n)} runs taking {sec:g} s",
              sec - k * step_flop / grad, log, bench)


# --------------------------------------------------------------------------- real model (section B)

def real_model_numbers(r: Rows, log="h200/real_model/log.txt"):
    p = r.path(log)
    if p:
        walls = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+) wall ([\d.]+) s", p.read_text(), re.M)}
        for k, v in walls.items():
            r.add("B real model", f"wall seconds, table {k}", v, log)
        if walls:
            r.add("B real model", "wall minutes, all tables", sum(walls.values()) / 60, log)
    for rel in ("h200/real_model/bench_20seeds.json", "h200/fused/bench_real_model_20seeds.json",
                "h200/real_model/bench_1seed.json"):
        if not r.path(rel):
            continue
        ms = {k: v["ms_per_step"] for k, v in _json(r.root / rel)["methods"].items()}
        lora = next((v for k, v in ms.items() if str(k).startswith("lora")), None)
        bern = next((v for k, v in ms.items() if str(k).startswith("bernoulli")), None)
        if lora and bern:
            r.add("B real model", f"Bernoulli-LoRA step time over LoRA's, {rel}", bern / lora - 1, rel)
    table = "h200/real_model/mnist_matched/summary.csv"
    if r.path(table):
        t = pd.read_csv(r.root / table)
        t = t[t["paper"].notna()]
        for row in t.itertuples():
            paper = float(str(row.paper).split("+-")[0])
            r.add("B real model", f"ours - paper, points, {row.label}", float(row.acc_median) - paper, table)
    b20, b1 = "h200/real_model/bench_20seeds.json", "h200/real_model/bench_1seed.json"
    if r.path(b20) and r.path(b1):
        m20, m1 = _json(r.root / b20)["methods"], _json(r.root / b1)["methods"]
        key = next(k for k in m20 if k.startswith("bernoulli"))
        ratio = m20[key]["ms_per_step"] / m1[key]["ms_per_step"]
        r.add("B real model", "Bernoulli-LoRA step, 20 seeds batched / 1 seed", ratio, b20, b1)
        r.add("B real model", "throughput of 20 seeds batched over 1 seed at a time", 20 / ratio, b20, b1)
    splits = r.path("real_model_splits.csv")
    if splits:
        for row in pd.read_csv(splits).itertuples():
            r.add("B real model", f"{row.data} {row.task} {row.part} images", int(row.images), "real_model_splits.csv")
            if row.part == "train":
                r.add("B real model", f"{row.data} {row.task} steps per epoch at batch 128", int(row.steps_per_epoch_128),
                      "real_model_splits.csv")


def spectrum_numbers(r: Rows, rels=("cpu/linreg_spectrum.csv", "h200/sweeps/linreg_spectrum.csv")):
    for rel in rels:
        if r.path(rel):
            for row in pd.read_csv(r.root / rel).itertuples():
                r.add("A1 linreg", row.quantity, row.value, rel)


def derive(root: Path) -> pd.DataFrame:
    r = Rows(root)
    linreg_constants(r)
    spectrum_numbers(r)
    predicted_rates(r)
    final_medians(r, "h200/sweeps/linreg_gd_summary.csv", "A1 linreg", "H200")
    curve_numbers(r, "h200/sweeps/linreg_gd_median_curves.csv", "A1 linreg")
    verdict_numbers(r, "h200/sweeps/linreg_gd_verdicts.txt", "h200/sweeps/linreg_gd_verdicts.csv", "A1 linreg")
    verdict_numbers(r, "h200/fused/linreg_gd_verdicts.txt", None, "A1 linreg, fused")
    sweep_times(r, "h200/sweeps/log.txt", "h200/sweeps/linreg_gd_timing.json", "A1 time", "H200 loop")
    sweep_times(r, "h200/fused/log.txt", "h200/fused/linreg_gd_timing.json", "A1 time", "H200 fused")
    sweep_times(r, "cpu/linreg_gd_log.txt", "cpu/linreg_gd_timing.json", "A1 time", "2-core CPU")
    cpu_vs_gpu(r)
    cpu_gemm_budget(r)
    final_medians(r, "h200/sweeps/linreg_finite_sum_summary.csv", "A2 finite sum", "H200")
    verdict_numbers(r, "h200/sweeps/linreg_finite_sum_verdicts.txt", "h200/sweeps/linreg_finite_sum_verdicts.csv",
                    "A2 finite sum")
    if r.path("h200/sweeps/linreg_finite_sum_timing.json"):
        t = _json(root / "h200/sweeps/linreg_finite_sum_timing.json")
        r.add("A2 finite sum", "engine seconds", t["engine_s"], "h200/sweeps/linreg_finite_sum_timing.json")
        r.add("A2 finite sum", "wall seconds", t["wall_s"], "h200/sweeps/linreg_finite_sum_timing.json")
    real_model_numbers(r)
    verdict_numbers(r, "cpu_ci/verdicts.txt", "cpu_ci/verdicts.csv", "C reproduce.sh (ci)")
    curve_numbers(r, "cpu_ci/median_curves.csv", "C reproduce.sh (ci)")
    if r.path("cpu_ci/rates.csv"):
        rates = pd.read_csv(root / "cpu_ci/rates.csv")
        for row in rates.itertuples():
            label = f"{row.m}x{row.n} {row.sketch} p {row.p:g} rank {row.rank}"
            r.add("C rates", f"median fitted rate, {label}", float(row.rate), "cpu_ci/rates.csv")
            r.add("C rates", f"PL bound's rate, {label}", float(row.theory_rate), "cpu_ci/rates.csv")
            r.add("C rates", f"lambda_min_p, {label}", float(row.lambda_min_p), "cpu_ci/rates.csv")
        for (m, n, sk), g in rates.groupby(["m", "n", "sketch"]):
            ratio = g["rate"] / g["lambda_min_p"]
            r.add("C rates", f"rate / lambda_min_p, {m}x{n} {sk}, min .. max", f"{ratio.min():.3g} .. {ratio.max():.3g}",
                  "cpu_ci/rates.csv")
            r.add("C rates", f"rate, {m}x{n} {sk}, min .. max", f"{g['rate'].min():.3g} .. {g['rate'].max():.3g}",
                  "cpu_ci/rates.csv")
    if r.path("cpu_ci/timing.txt"):
        r.add("C reproduce.sh (ci)", "total time", _last_line(root / "cpu_ci/timing.txt"), "cpu_ci/timing.txt")
    return pd.DataFrame(r.rows, columns=["section", "quantity", "value", "source"])


# --------------------------------------------------------------------------- raw-file helpers

def median_curves(table: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ("config_hash", "problem", "method", "estimator", "sketch", "p", "rank", "stepsize")
            if k in table.columns]
    g = table.groupby(keys + ["iteration"], dropna=False)
    out = {}
    for col in ("grad_norm_sq", "f_gap"):
        if col in table.columns and table[col].notna().any():
            out[f"{col}_median"] = g[col].median()
            out[f"{col}_q10"] = g[col].quantile(0.1)
            out[f"{col}_q90"] = g[col].quantile(0.9)
    return pd.DataFrame(out).reset_index()


def linreg_spectrum(size: str, device: str) -> pd.DataFrame:
    import torch

    from experiments.problems.linreg import make_linreg

    prob = make_linreg(size=size, device=device)
    x = prob.W0.reshape(-1).double().cpu().numpy()
    lam = float(prob.lam)
    r2 = 2 * (1 - 3 * x**2) / (1 + x**2) ** 3
    eig = torch.linalg.eigvalsh(prob.Q.double()).cpu().numpy()
    # r'' is within 1e-5 of its maximum 2 here: its distance to 2 is what 6 digits can show
    rows = [("max |x_j| at W0", float(np.abs(x).max())), ("2 - min r''(x_j) at W0", float((2 - r2).max())),
            ("2 - max r''(x_j) at W0", float((2 - r2).min())), ("lambda = lambda_max(Q)", lam),
            ("eigenvalues of Q", int(eig.size)), ("eigenvalues of Q above 0.01 lambda", int((eig > 0.01 * lam).sum()))]
    return pd.DataFrame(rows, columns=["quantity", "value"])


def split_sizes(mnist_dir) -> pd.DataFrame:
    from experiments.real_model.data import load_bundle

    rows = []
    for name in ("digits", "mnist"):
        if name == "mnist" and mnist_dir is None:
            continue
        b = load_bundle(name, mnist_dir=mnist_dir)
        for task in ("pretrain", "finetune"):
            t = getattr(b, task)
            for part in ("train", "val", "test"):
                n = len(getattr(t, part))
                rows.append(dict(data=name, task=task, part=part, images=n, steps_per_epoch_128=-(-n // 128)))
    return pd.DataFrame(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python scripts/derive_numbers.py", description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="derive", choices=["derive", "curves", "rates", "spectrum", "splits"])
    ap.add_argument("table", nargs="?", help="results table (parquet file or results folder) for curves / rates")
    ap.add_argument("--root", default=str(ROOT / "paper_results"))
    ap.add_argument("-o", "--out", default=None)
    ap.add_argument("--size", default="paper")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mnist-dir", default=None)
    a = ap.parse_args(argv)
    if a.command in ("curves", "rates"):
        if not a.table or not a.out:
            ap.error(f"{a.command}: needs TABLE and -o CSV")
        from experiments.results import load_results

        table = load_results(a.table)
        if a.command == "curves":
            out = median_curves(table)
        else:
            from figures.data import rate_metric, rate_table

            out = pd.concat([rate_table(g, rate_metric(g)) for _, g in table.groupby("problem") if rate_metric(g)])
    elif a.command == "spectrum":
        out = linreg_spectrum(a.size, a.device)
    elif a.command == "splits":
        out = split_sizes(a.mnist_dir)
    else:
        out = derive(Path(a.root))
        a.out = a.out or str(Path(a.root) / "derived_numbers.csv")
    if a.out:
        from resultstore.files import atomic_write

        atomic_write(Path(a.out), lambda tmp: out.to_csv(tmp, index=False, float_format="%.6g"))
        print(f"{len(out)} rows -> {a.out}")
    else:
        print(out.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
