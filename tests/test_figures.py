"""Figures: labels, reductions, and figures.make on synthetic results tables."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from figures import data, files, plots, rates, style
from figures import make as figmake

ROOT = Path(__file__).resolve().parents[1]
M, N, MU, GAMMA = 8, 6, 0.5, 1.0


@pytest.fixture(autouse=True)
def fast_output(monkeypatch):
    # Type 3 fonts and a lower dpi only make the files cheaper to write (2-core CI)
    monkeypatch.setitem(style.RC, "pdf.fonttype", 3)
    monkeypatch.setitem(style.RC, "savefig.dpi", 80)


def _rows(problem, method, estimator, p, rank, seeds, iterations, *, lam, bound=True, f_known=True, rng):
    h = f"{problem}-{method}-{estimator}-{p}-{rank}"
    out = []
    for s in seeds:
        noise = rng.normal(0, 0.02, len(iterations)).cumsum()
        for k, t in enumerate(iterations):
            gap = 4.0 * (1 - GAMMA * MU * lam) ** t * math.exp(noise[k])
            out.append(dict(
                method=method, estimator=estimator, problem=problem, p=p, rank=rank, stepsize=1.0,
                gamma=GAMMA, sketch="gaussian", compressor="none", seed=s, iteration=t, epochs=0.1 * t,
                bits=0.0, time_s=1e-3 * t, loss=gap + 1.0, f_gap=gap if f_known else np.nan,
                grad_norm_sq=2 * MU * gap, dist_sq=np.nan, avg_grad_norm_sq=np.nan, min_grad_norm_sq=np.nan,
                avg_f_gap=np.nan, min_f_gap=np.nan,
                bound=4.0 * 1.1 * (1 - GAMMA * MU * lam) ** t if bound else np.nan,
                bound_metric="f_gap" if bound else "none", bound_status="ok" if bound else "none",
                config_hash=h, diverged=False, m=M, n=N, lambda_min_p=lam, device="cpu"))
    return out


def synthetic(seeds=(0, 1, 2), iterations=tuple(range(0, 61, 5))):
    rng = np.random.default_rng(0)
    rows = []
    for rank in (1, 2, 4):
        for p in (0.0, 0.25, 0.5, 1.0):
            lam = p * rank / M + (1 - p) * rank / N
            rows += _rows("quadratic", "bernoulli_lora", "gd", p, rank, seeds, iterations, lam=lam, rng=rng)
    rows += _rows("quadratic", "fpft", "gd", np.nan, 0, seeds, iterations, lam=1.0, rng=rng)
    # a second problem without variation, bound or f*: only its convergence figures can be drawn
    rows += _rows("logistic", "bernoulli_lora", "sgd", 0.5, 1, seeds, iterations, lam=0.1, bound=False,
                  f_known=False, rng=rng)
    df = pd.DataFrame(rows)
    df["group_wall_s"] = np.arange(len(df)) // 7 * 0.1  # a timing label column: never a curve key
    df.loc[(df["problem"] == "quadratic") & (df["rank"] == 4) & (df["p"] == 0.0) & (df["seed"] == 2)
           & (df["iteration"] >= 50), "diverged"] = True
    return df


# --------------------------------------------------------------------------- style

def test_method_labels_say_both_factors():
    """docs/design.md#factors: p = 1 samples B and trains A (solvers.methods: the coin
    picks the left sketch), and real_model's rac_lora_b is that method."""
    assert style.method_label("bernoulli_lora", 1.0, "gd") == "RAC-LoRA-GD (B sampled, A trained)"
    assert style.method_label("bernoulli_lora", 0.0, "sgd") == "RAC-LoRA-SGD (A sampled, B trained)"
    assert style.method_label("rac_lora_b", None, None) == "RAC-LoRA (B sampled, A trained)"
    assert style.method_label("rac_lora_a", None, None) == "RAC-LoRA (A sampled, B trained)"
    assert style.method_label("asymm_lora_b", None, None) == "AsymmLoRA (B sampled, A trained)"
    assert style.method_label("lora_a", None, None) == "LoRA (A sampled, B zero)"
    assert style.method_label("bernoulli_lora", 1.0, None, rac_names=False) == "Bernoulli-LoRA (p=1)"
    assert style.method_color("rac_lora_b") == style.method_color("bernoulli_lora", 1.0)
    assert style.method_color("rac_lora_a") == style.method_color("bernoulli_lora", 0.0)
    assert style.method_label("bernoulli_lora", 0.2, "gd") == "Bernoulli-LoRA-GD (p=0.2)"
    assert style.method_label("bernoulli_lora", 0.5, "page") == "Bernoulli-LoRA-PAGE (p=0.5)"
    assert style.method_label("fpft", np.nan, "gd") == "FPFT-GD"
    assert [style.method_label(m) for m in ("lora", "cola", "asymm_lora")] == ["LoRA", "COLA", "AsymmLoRA"]
    assert style.method_color("bernoulli_lora", 1.0) != style.method_color("bernoulli_lora", 0.0)


# --------------------------------------------------------------------------- reductions

def test_fit_log_slope_recovers_rate_and_stops_at_floor():
    t = np.arange(0, 200)
    v = 3.0 * 0.9 ** t
    v[v < 1e-14] = 1e-14  # float floor
    rate, r2 = data.fit_log_slope(t, v)
    assert rate == pytest.approx(-math.log(0.9), rel=1e-6) and r2 > 0.9999
    assert all(math.isnan(x) for x in data.fit_log_slope([0, 1], [1.0, 0.5]))


def test_rate_table_and_tightness_table():
    df = synthetic()
    q = df[df["problem"] == "quadratic"]
    rt = data.rate_table(q, "f_gap")
    row = rt[(rt["p"] == 0.5) & (rt["rank"] == 2)].iloc[0]
    lam = 0.5 * 2 / M + 0.5 * 2 / N
    assert row["theory_rate"] == pytest.approx(-math.log(1 - GAMMA * MU * lam), rel=1e-6)
    assert row["rate"] == pytest.approx(row["theory_rate"], rel=0.1)
    assert row["n_runs"] == 3
    assert rt[(rt["p"] == 0.0) & (rt["rank"] == 4)].iloc[0]["n_diverged"] == 1
    tt = data.tightness_table(q)
    assert len(tt) == 13
    assert np.isinf(tt[(tt["p"] == 0.0) & (tt["rank"] == 4)]["ratio"]).all()
    ok = tt[np.isfinite(tt["ratio"])]["ratio"]
    assert ((ok > 0.5) & (ok < 1.2)).all()


def test_summarize_band_and_bound_only_for_its_metric():
    df = synthetic()
    curve = df[(df["problem"] == "quadratic") & (df["p"] == 0.5) & (df["rank"] == 1)]
    s = data.summarize(curve, "f_gap")
    assert (s["lo"] <= s["median"]).all() and (s["median"] <= s["hi"]).all() and s["bound"].notna().all()
    assert data.summarize(curve, "grad_norm_sq")["bound"].isna().all()


# --------------------------------------------------------------------------- figures

def _check(paths):
    assert len(paths) == 2
    pdf, png = paths
    assert pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_make_writes_every_figure_and_skips_the_rest(tmp_path, capsys):
    src = tmp_path / "all.parquet"
    synthetic().to_parquet(src)
    assert figmake.main([str(src), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    figs = tmp_path / "figs"
    expected = ["convergence_quadratic_grad_norm_sq_iteration", "convergence_quadratic_f_gap_iteration",
                "rate_vs_p_quadratic", "rate_vs_rank_quadratic", "rate_vs_lambda_quadratic", "tightness_quadratic",
                "convergence_logistic_grad_norm_sq_iteration", "convergence_logistic_grad_norm_sq_epochs"]
    for stem in expected:
        _check([figs / f"{stem}.pdf", figs / f"{stem}.png"])
        assert str(figs / f"{stem}.pdf") in out
    for stem in ("rate_vs_p_logistic", "rate_vs_rank_logistic", "rate_vs_lambda_logistic", "tightness_logistic"):
        assert f"skip {stem}:" in out and not (figs / f"{stem}.pdf").exists()
    assert len(list(figs.glob("*.pdf"))) == len(expected)


def test_make_reads_job_directories(tmp_path, capsys):
    from experiments.results import write_job

    df = synthetic(seeds=(0, 1), iterations=(0, 5, 10, 15))
    q = df[(df["problem"] == "quadratic") & (df["rank"] <= 2)]
    for k, (h, sub) in enumerate(q.groupby("config_hash")):
        cfg = {"job": h}
        sub = sub.drop(columns=["config_hash"])
        write_job(tmp_path / "sweep" / str(k), sub, cfg)
    (tmp_path / "sweep" / "broken").mkdir()
    df.head(3).to_parquet(tmp_path / "sweep" / "broken" / "results.parquet")  # no marker: ignored
    assert len(files.load(tmp_path / "sweep")) == len(q)
    assert figmake.main([str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "figures" / "tightness_quadratic.png").stat().st_size > 1000


def test_figures_skip_without_variation(tmp_path):
    df = synthetic()
    one = df[(df["problem"] == "logistic")]
    with pytest.raises(data.NotEnoughData, match="p does not vary"):
        rates.rate_vs_p(one, tmp_path / "a")
    with pytest.raises(data.NotEnoughData):
        rates.rate_vs_rank(one, tmp_path / "b")
    with pytest.raises(data.NotEnoughData, match="bound"):
        plots.tightness(one, tmp_path / "c")
    with pytest.raises(data.NotEnoughData, match="f_gap"):
        plots.convergence(one, tmp_path / "d", metric="f_gap")
    with pytest.raises(data.NotEnoughData, match="bits"):
        plots.convergence(one, tmp_path / "e", x="bits")
    assert list(tmp_path.iterdir()) == []
    _check(plots.convergence(one, tmp_path / "f"))


def test_convergence_with_stepsize_rows_and_extra_keys(tmp_path):
    df = synthetic(iterations=(0, 10, 20))
    q = df[df["problem"] == "quadratic"]
    other = q.assign(stepsize=2.0, sketch="orthonormal", config_hash=q["config_hash"] + "-2")
    two = pd.concat([q, other], ignore_index=True)
    _check(plots.convergence(two, tmp_path / "grid", metric="f_gap"))


def test_make_no_results_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "figures.make", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no results found" in r.stderr and r.stderr.count("\n") == 1


def test_figures_import_no_solvers_or_experiments():
    code = ("import sys, figures.make; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('solvers', 'experiments', 'theory', 'torch')]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_make_all_in_two_processes_draws_the_same_figures(tmp_path):
    """--jobs 2 (forked workers): the same files, PNG bytes and log lines as one process."""
    df = synthetic()
    logs = {1: [], 2: []}
    for jobs in (1, 2):
        written, skipped = figmake.make_all(df, tmp_path / f"j{jobs}", log=logs[jobs].append, jobs=jobs)
        assert written and skipped
    assert [line.replace("/j1/", "/jX/") for line in logs[1]] == [line.replace("/j2/", "/jX/") for line in logs[2]]
    for png in sorted((tmp_path / "j1").glob("*.png")):
        assert png.read_bytes() == (tmp_path / "j2" / png.name).read_bytes(), png.name
    with pytest.raises(ValueError, match="jobs: must be an integer >= 1"):
        figmake.make_all(df, tmp_path / "j0", jobs=0)
