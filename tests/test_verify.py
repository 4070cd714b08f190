"""theory.verify (verdicts on synthetic results tables) and the experiments.verify CLI.

Coverage of the confidence bounds by simulation: tests/test_verify_coverage.py."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.confidence import mean_bounds
from theory.dispatch import Constants, bound_for
from theory.verify import exact_verdict, format_table, verify

NAN = float("nan")
ITS = np.arange(0, 41)


def _table(values, bound, *, metric="f_gap", status="ok", config_hash="h1", its=ITS, diverged=None, **config):
    """Long table: values (n_seeds, n_points) of ``metric``; every other metric column NaN."""
    values = np.asarray(values, float)
    S, P = values.shape
    rows = {
        "method": "bernoulli_lora", "estimator": "gd", "problem": "quadratic", "p": 0.5, "rank": 1,
        "stepsize_factor": 1.0, "sketch": "gaussian",
        "seed": np.repeat(np.arange(S), P), "iteration": np.tile(its, S),
        "epochs": np.tile(its, S).astype(float), "bits": 0.0, "time_s": 0.0,
    }
    for col in ("f_gap", "grad_norm_sq", "dist_sq", "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap"):
        rows[col] = NAN
    rows[metric] = values.reshape(-1)
    rows.update(bound=np.tile(np.broadcast_to(np.asarray(bound, float), (P,)), S), bound_metric=metric,
                bound_status=status, diverged=False if diverged is None else np.asarray(diverged).reshape(-1))
    if config_hash is not None:
        rows["config_hash"] = config_hash
    rows.update(config)
    return pd.DataFrame(rows)


def _exact_gd_group(n_seeds=5, noise=0.05, seed=0, factor=1.0, lam=0.25, Lq=2.0):
    """PL GD on the isotropic quadratic: E f_t exact, per-seed values with mean-zero noise."""
    f0, gamma = 1.0, factor / Lq
    res = bound_for("gd", iterations=ITS, gamma=gamma,
                    c=Constants(L=Lq, mu=Lq, f0_gap=f0, delta0=f0, lmin_p=lam, lmax_p=lam))
    c = gamma * Lq
    mean = (1 - (2 * c - c * c) * lam) ** ITS * f0
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_seeds, len(ITS)))
    z -= z.mean(0)  # sample mean exactly the expectation
    return mean * (1 + noise * z), res


def test_mean_at_the_bound_is_inconclusive_never_holds():
    """E f_T equals the PL bound (gamma = 1/L): no number of seeds can show mean <= bound."""
    vals, res = _exact_gd_group()
    v = verify(_table(vals, res.values, metric=res.metric)).iloc[0]
    assert v["verdict"] == "inconclusive" and np.isinf(v["seeds_needed"])
    assert v["tightness"] == pytest.approx(1.0, rel=1e-9)
    assert v["tightness_lo"] < 1 < v["tightness_hi"]
    assert v["n_seeds"] == 5 and v["n_checked"] == 8  # log-spaced checkpoints among t = 1..40
    assert v["checked_iterations"].split()[0] == "1" and v["checked_iterations"].split()[-1] == "40"


def test_slack_holds_with_enough_seeds_and_says_how_many_otherwise():
    vals, res = _exact_gd_group(factor=0.5, n_seeds=30)
    v = verify(_table(vals, res.values, metric=res.metric)).iloc[0]
    assert v["verdict"] == "holds" and v["tightness_hi"] <= 1 and v["tightness"] < 1
    few = verify(_table(vals[:4], res.values, metric=res.metric)).iloc[0]
    assert few["verdict"] == "inconclusive" and 4 < few["seeds_needed"] <= 100
    assert f"about {int(few['seeds_needed'])} seeds would decide 'holds'" in few["reason"]


def test_bound_over_100_is_violated():
    vals, res = _exact_gd_group()
    v = verify(_table(vals, res.values / 100, metric=res.metric)).iloc[0]
    assert v["verdict"] == "violated" and v["tightness_lo"] > 50
    assert "first at t=1" in v["reason"]


def test_mean_above_the_bound_is_never_holds():
    """Point estimate 1.1 x the bound, large spread: inconclusive (old code: 'holds')."""
    bound = np.ones(3)
    vals = np.array([[1.1, 1.1, 1.1], [0.9, 0.9, 0.9], [1.3, 1.3, 1.3]])
    v = verify(_table(vals, bound, its=np.arange(3))).iloc[0]
    assert v["verdict"] == "inconclusive" and v["tightness"] == pytest.approx(1.1)
    assert "would decide 'violated'" in v["reason"]
    # one seed: no interval, never a verdict from the value alone
    v1 = verify(_table(vals[:1], bound, its=np.arange(3))).iloc[0]
    assert v1["verdict"] == "inconclusive" and v1["n_seeds"] == 1
    # a lower confidence level narrows the interval
    vals2 = np.array([[1.2] * 3, [1.1] * 3, [1.3] * 3, [1.15] * 3])
    assert verify(_table(vals2, bound, its=np.arange(3)), confidence=0.9)["verdict"].iloc[0] == "violated"
    assert verify(_table(vals2, bound, its=np.arange(3)), confidence=0.999999)["verdict"].iloc[0] == "inconclusive"


def test_inadmissible_stepsize_is_not_applicable_never_holds():
    vals, _ = _exact_gd_group(factor=1.0)
    res = bound_for("gd", iterations=ITS, gamma=1.5, c=Constants(L=2.0, mu=2.0, f0_gap=1.0, lmin_p=0.25))
    assert not res.ok
    v = verify(_table(vals, res.values, metric=res.metric, status=res.status))
    assert v["verdict"].iloc[0] == "not applicable"
    assert "exceeds the admissible" in v["reason"].iloc[0]


def test_round_off_floor_and_relative_tolerance():
    bound = np.array([1.0, 1e-20, 1e-40])
    vals = np.array([[1.0, 3e-17, 2e-17], [1.0, 2e-17, 3e-17]])  # round-off floor of converged runs
    v = verify(_table(vals, bound, its=np.arange(3))).iloc[0]
    assert v["verdict"] == "not applicable" and "round-off floor" in v["reason"]
    assert verify(_table(vals, bound, its=np.arange(3)), floor=0.0)["verdict"].iloc[0] == "violated"
    same = np.array([[1.0, 0.5 + 1e-12], [1.0, 0.5 + 1e-12]])  # no spread, within rtol of the bound
    assert verify(_table(same, [1.0, 0.5], its=np.arange(2)), rtol=1e-9)["verdict"].iloc[0] == "holds"


def test_diverged_run_with_ok_bound_is_violated():
    vals, res = _exact_gd_group(n_seeds=3)
    div = np.zeros(vals.shape, bool)
    div[1, 30:] = True
    vals[1, 30:] = np.inf
    v = verify(_table(vals, res.values, metric=res.metric, diverged=div))
    assert v["verdict"].iloc[0] == "violated" and "1 of 3 runs diverged" in v["reason"].iloc[0]


def test_no_finite_bound_is_not_applicable():
    v = verify(_table(np.ones((2, 3)), [NAN, NAN, NAN], its=np.arange(3)))
    assert v["verdict"].iloc[0] == "not applicable"


def _min_table(raw, runmin, bound, its, metric="min_grad_norm_sq"):
    t = _table(runmin, bound, metric=metric, its=its)
    t[{"min_grad_norm_sq": "grad_norm_sq", "min_f_gap": "f_gap"}[metric]] = np.asarray(raw, float).reshape(-1)
    return t


def test_min_metric_uses_min_of_means_not_mean_of_mins():
    """Each seed dips to 0 at its own t, so E[min_t X_t] = 0 but min_t E[X_t] = 9.5 > bound 5."""
    S = 20
    its = np.arange(S)
    raw = np.full((S, S), 10.0)
    raw[np.arange(S), np.arange(S)] = 0.0
    runmin = np.minimum.accumulate(raw, axis=1)
    bound = np.where(its == 0, np.inf, 5.0)
    v = verify(_min_table(raw, runmin, bound, its)).iloc[0]
    assert v["verdict"] == "violated"
    assert v["tightness"] == pytest.approx(9.5 / 5)
    # a bound at or above E X_0 = 9.5 says nothing about min_{t<T} E X_t <= E X_0
    v2 = verify(_min_table(raw, runmin, 2 * bound, its)).iloc[0]
    assert v2["verdict"] == "not applicable" and "vacuous" in v2["reason"]


def test_min_metric_covers_iterates_before_T_only():
    """min_{t<T} E X_t excludes t = T (the theorems; the engine's running minimum at T covers
    iterates 0..T-1). Every seed is ~10 at t < 4 and 0 at t = 4: the min at T = 4 is 10 > 5.
    The old code took the min over t <= 4 (= 0) and said 'holds'."""
    rng = np.random.default_rng(0)
    its = np.arange(5)
    raw = 10 + 0.1 * rng.standard_normal((10, 5))
    raw[:, 4] = 0.0
    runmin = np.minimum.accumulate(np.concatenate([np.full((10, 1), np.inf), raw[:, :-1]], axis=1), axis=1)
    bound = np.array([NAN, NAN, NAN, NAN, 5.0])
    v = verify(_min_table(raw, runmin, bound, its)).iloc[0]
    assert v["verdict"] == "violated", v["reason"]
    assert v["mean_at_worst"] == pytest.approx(raw[:, :4].mean(0).min())


def test_min_metric_column_is_the_engine_running_min_over_t_before_T():
    """The statistic verify uses for min_* agrees with the engine: the recorded running minimum
    at T is the minimum of the raw column over t < T."""
    from experiments.conf.schema import job_config
    from experiments.job import execute

    t, _ = execute(job_config(**{"problem.m": 4, "problem.n": 3, "method.p": 0.5}, steps=6, seeds=2,
                              eval_every=1, device="cpu", progress=False))
    for _, g in t.groupby("seed"):
        g = g.sort_values("iteration")
        raw, rmin = g["grad_norm_sq"].to_numpy(), g["min_grad_norm_sq"].to_numpy()
        assert np.allclose(rmin[1:], np.minimum.accumulate(raw)[:-1])


def test_min_metric_with_sparse_evaluation_is_not_violated():
    """Seed s dips to 0 at t = 2s + 1, only even t are recorded (eval_every = 2): the recorded
    per-t means are all 10, but min_t E[X_t] = 9 < bound 9.9. The verdict must not be 'violated':
    E[running min] <= min_t E[X_t] bounds it from below at sparse points."""
    S = 10
    its = np.arange(2 * S + 1)
    raw = np.full((S, len(its)), 10.0)
    raw[np.arange(S), 2 * np.arange(S) + 1] = 0.0
    runmin = np.minimum.accumulate(np.concatenate([np.full((S, 1), np.inf), raw[:, :-1]], axis=1), axis=1)
    keep = its[::2]
    bound = np.where(keep == 0, np.inf, 9.9)
    t = _min_table(raw[:, keep], runmin[:, keep], bound, keep)
    v = verify(t).iloc[0]
    assert v["verdict"] == "inconclusive", v["reason"]
    assert "running min" in v["reason"]
    t2 = t.copy()
    t2["min_grad_norm_sq"] = NAN  # neither every iterate nor the running min: cannot verify
    assert verify(t2)["verdict"].iloc[0] == "not applicable"


def test_avg_metric_rebuilt_from_raw_column():
    res = bound_for("gd", iterations=ITS, gamma=0.5, c=Constants(L=2.0, delta0=1.0, lmin_p=1.0, lmax_p=1.0))
    raw = np.zeros((2, len(ITS)))
    raw[:, 0] = 2.0  # the first step lands on the minimiser; the bound 2 delta0/(gamma T) = 4/T
    t = _table(np.full_like(raw, NAN), res.values, metric="avg_grad_norm_sq")
    t["grad_norm_sq"] = raw.reshape(-1)
    v = verify(t).iloc[0]
    assert v["verdict"] == "holds" and v["tightness"] == pytest.approx(0.5)
    assert "rebuilt" in v["reason"]


def test_exponentially_growing_bound_is_vacuous_where_uninformative():
    """The ABC bound 4 delta0 (1 + L gamma^2 lambda A)^T / (gamma lambda T) falls, then grows
    exponentially. For a min over t < T the bound at an earlier T already bounds the later
    minima, and past the point where it exceeds the initial value it says nothing: those
    points are not checked and the verdict says from where (not 'holds' on a vacuous bound)."""
    its = np.arange(0, 401)
    res = bound_for("sgd", iterations=its, gamma=0.05,
                    c=Constants(L=1.0, delta0=0.05, A=10.0, B=1.0, C=0.0, lmin_p=0.5, lmax_p=0.5))
    assert res.ok and res.values[-1] > 1.0 > res.values[1:].min()
    rng = np.random.default_rng(1)
    vals = 0.9 ** its[None, :] * (1 + 0.01 * rng.standard_normal((30, len(its))))  # g_0 ~ 1
    runmin = np.minimum.accumulate(np.concatenate([np.full((30, 1), np.inf), vals[:, :-1]], axis=1), axis=1)
    t = _table(runmin, res.values, metric="min_grad_norm_sq", its=its)
    t["grad_norm_sq"] = vals.reshape(-1)
    v = verify(t).iloc[0]
    first = int(its[1 + np.argmin(res.values[1:]) + 1])  # the first T past the bound's minimum
    assert v["vacuous_from"] == first and f"(from t={first})" in v["reason"]
    assert all(int(x) < first for x in v["checked_iterations"].split())
    assert v["verdict"] == "holds"
    # vacuous everywhere (>= the initial value): never 'holds'
    t2 = _table(runmin, np.full(len(its), 10.0), metric="min_grad_norm_sq", its=its)
    t2["grad_norm_sq"] = vals.reshape(-1)
    v2 = verify(t2).iloc[0]
    assert v2["verdict"] == "not applicable" and "vacuous at every point" in v2["reason"]


def test_grouping_by_hash_prints_the_distinguishing_parameters():
    vals, res = _exact_gd_group(factor=0.5, n_seeds=30)
    a = _table(vals, res.values, config_hash="A", rank=1)
    b = _table(vals, res.values / 100, config_hash="B", rank=2)
    v = verify(pd.concat([a, b]))
    assert dict(zip(v["config_hash"], v["verdict"])) == {"A": "holds", "B": "violated"}
    assert list(v["params"]) == ["rank=1", "rank=2"]
    # the same configuration columns but two hashes: never pooled
    v1 = verify(pd.concat([a, _table(vals, res.values / 100, config_hash="C", rank=1)]))
    assert len(v1) == 2 and sorted(v1["verdict"]) == ["holds", "violated"]
    # without a hash: every column but the measured ones (and seed) is the key
    a2 = _table(vals, res.values, config_hash=None, rank=1)
    b2 = _table(vals, res.values / 100, config_hash=None, rank=2)
    v2 = verify(pd.concat([a2, b2]))
    assert len(v2) == 2 and sorted(v2["verdict"]) == ["holds", "violated"]
    # duplicated rows (the same job collected twice) do not change the verdict
    v3 = verify(pd.concat([a, a]))
    assert v3["verdict"].iloc[0] == "holds" and v3["n_seeds"].iloc[0] == 30


def test_exact_column_agrees_and_disagrees_two_sided():
    rng = np.random.default_rng(3)
    mean = 0.8 ** ITS.astype(float)
    vals = mean * np.exp(rng.normal(-0.125, 0.5, (40, len(ITS))))  # E = mean (log-normal noise)
    t = _table(vals, 2 * mean, metric="f_gap")
    t["exact"] = np.tile(mean, 40)
    v = verify(t).iloc[0]
    assert v["exact_verdict"] == "agrees" and v["exact_max_abs_z"] < 4
    for factor in (1.5, 1 / 1.5):  # both sides
        t["exact"] = np.tile(mean * factor, 40)
        w = verify(t).iloc[0]
        assert w["exact_verdict"] == "disagrees" and w["exact_max_abs_z"] > 4 and "max |z|" in w["reason"]
    # exact values agree though the bound itself is violated: two separate statements
    t["exact"] = np.tile(mean, 40)
    t["bound"] = np.tile(mean / 3, 40)
    w = verify(t).iloc[0]
    assert w["verdict"] == "violated" and w["exact_verdict"] == "agrees"
    # no exact column: no exact verdict
    assert verify(t.drop(columns="exact"))["exact_verdict"].isna().all()


def test_exact_verdict_direct_and_simultaneous_level():
    rng = np.random.default_rng(5)
    its = np.arange(1, 101)
    X = rng.standard_normal((8, 100)) + 3.0
    out = exact_verdict(X, np.full(100, 3.0), its, confidence=0.99, checkpoints=100)
    thr = float(__import__("scipy").special.stdtrit(7, 1 - 0.01 / 200))
    assert (out["exact_verdict"] == "disagrees") == (out["exact_max_abs_z"] > thr)
    assert exact_verdict(X[:1], np.full(100, 3.0), its, confidence=0.99)["exact_verdict"] == "not applicable"
    flat = np.ones((3, 4))
    assert exact_verdict(flat, np.ones(4), np.arange(1, 5), confidence=0.99)["exact_verdict"] == "agrees"
    assert exact_verdict(flat, np.full(4, 1.1), np.arange(1, 5), confidence=0.99)["exact_verdict"] == "disagrees"


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.floats(0.05, 3.0), st.floats(0.2, 5.0), st.integers(0, 2 ** 31 - 1))
def test_verdicts_are_consistent_with_the_point_estimate(n, sigma, scale, seed):
    """For any sample: LCB <= mean <= UCB, 'holds' only with every mean <= bound, 'violated'
    only with some mean > bound."""
    rng = np.random.default_rng(seed)
    X = np.exp(rng.normal(0.0, sigma, (n, 5))) * np.linspace(1, 0.2, 5)
    m, lo, hi = mean_bounds(X, alpha=0.01)
    assert np.all(lo <= m * (1 + 1e-12)) and np.all(m <= hi * (1 + 1e-12))
    bound = scale * np.linspace(1, 0.2, 5)
    v = verify(_table(X, bound, its=np.arange(1, 6))).iloc[0]
    ratio = X.mean(0) / bound
    if v["verdict"] == "holds":
        assert ratio.max() <= 1 + 1e-9
    if v["verdict"] == "violated":
        assert ratio.max() > 1
    assert v["tightness"] == pytest.approx(ratio.max())


def test_format_table_and_bad_input():
    vals, res = _exact_gd_group(factor=0.5, n_seeds=30)
    v = verify(pd.concat([_table(vals, res.values, config_hash="A", rank=1),
                          _table(vals, res.values / 100, config_hash="B", rank=2),
                          _table(vals[:3], res.values, config_hash="C", rank=3)]))
    text = format_table(v)
    assert "3 groups: 1 holds, 1 violated, 1 inconclusive, 0 not applicable" in text
    assert "rank=1" in text and "tightness (max mean/bound)" in text and "exact" not in text.split("\n")[0]
    with pytest.raises(ValueError, match="confidence"):
        verify(_table(vals, res.values), confidence=1.0)
    with pytest.raises(ValueError, match="bound"):
        verify(_table(vals, res.values).drop(columns="bound"))
    with pytest.raises(ValueError, match="checkpoints"):
        verify(_table(vals, res.values), checkpoints=0)


# --------------------------------------------------------------------------- CLI

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.verify", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])


def _write_complete(directory, table):
    """Write ``table`` as a complete job (schema columns filled, hash of its own config)."""
    from experiments.results import COLUMNS, config_hash, write_job

    table = table.copy()
    config = {"job": str(table["config_hash"].iloc[0])}
    for col, kind in COLUMNS.items():
        if col not in table:
            table[col] = {"string": "x", "float64": float("nan"), "int64": 0, "bool": False}[kind]
    table["config_hash"] = config_hash(config)
    write_job(directory, table, config)


def test_cli_exit_codes(tmp_path, capsys):
    vals, res = _exact_gd_group(factor=0.5, n_seeds=30)
    good, bad = tmp_path / "good", tmp_path / "bad"
    (good / "job0").mkdir(parents=True)
    (good / "sub" / "job1").mkdir(parents=True)
    (good / "job2").mkdir(parents=True)
    _write_complete(good / "job0", _table(vals, res.values, config_hash="A"))
    _write_complete(good / "sub" / "job1", _table(vals, res.values, config_hash="C", metric="f_gap",
                    status="not applicable: no theorem for cola"))
    _write_complete(good / "job2", _table(vals[:3], res.values, config_hash="D"))  # too few seeds
    # a job killed mid-write (no completion marker) is ignored
    (good / "killed").mkdir()
    _table(vals, res.values / 100, config_hash="K").to_parquet(good / "killed" / "results.parquet")
    r = _cli(good)
    assert r.returncode == 0, r.stderr
    assert "3 groups: 1 holds, 0 violated, 1 inconclusive, 1 not applicable" in r.stdout
    bad.mkdir()
    _write_complete(bad, _table(vals, res.values / 100, config_hash="B"))
    r = _cli(bad, "--confidence", "0.95")
    assert r.returncode == 1 and "violated" in r.stdout
    # a single collected parquet file of any name
    single = tmp_path / "collected.parquet"
    pd.concat([_table(vals, res.values, config_hash="A")]).to_parquet(single)
    out = tmp_path / "verdicts.csv"
    r = _cli(single, "--out", out)
    assert r.returncode == 0 and pd.read_csv(out)["verdict"].tolist() == ["holds"]
    # an exact expectation that disagrees: exit 1 although the bound holds
    mean = vals.mean(axis=0)  # = E f_t exactly (_exact_gd_group)
    ex = _table(vals, res.values, config_hash="E")
    ex["exact"] = np.tile(mean * 1.3, len(vals))
    ex.to_parquet(single)
    from experiments.verify import main  # in-process: the same entry point as the module

    assert main([str(single)]) == 1
    out_text = capsys.readouterr().out
    assert "exact: 0 agrees, 1 disagrees" in out_text and "1 holds" in out_text
    ex["exact"] = np.tile(mean, len(vals))
    ex.to_parquet(single)
    assert main([str(single)]) == 0 and "exact: 1 agrees, 0 disagrees" in capsys.readouterr().out
    # nothing to verify: exit 2 with one line
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "missing"):
        r = _cli(target)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_cli_skips_an_unreadable_or_truncated_job_with_a_warning(tmp_path, capsys):
    """One bad results file never blocks the verdicts of the others: it is skipped with a
    warning naming it (corrupt with its marker intact, or truncated after the marker)."""
    from experiments.conf.schema import job_config
    from experiments.job import execute
    from experiments.results import RESULTS_FILE, write_job
    from experiments.verify import main

    for k, p in enumerate((0.2, 0.5, 0.8)):
        cfg = job_config(**{"method.p": p, "steps": 4, "seeds": 3, "eval_every": 2, "device": "cpu"})
        write_job(tmp_path / f"job{k}", execute(cfg)[0], cfg)
    corrupt, truncated = tmp_path / "job1" / RESULTS_FILE, tmp_path / "job2" / RESULTS_FILE
    corrupt.write_bytes(b"\0" * corrupt.stat().st_size)  # same size: the marker still matches
    truncated.write_bytes(truncated.read_bytes()[:100])
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "1 groups:" in out
    assert f"skipping {corrupt}" in err and f"skipping {truncated.parent}" in err
