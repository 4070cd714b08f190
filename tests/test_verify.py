"""theory.verify (verdicts on synthetic results tables) and the experiments.verify CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from theory.dispatch import Constants, bound_for
from theory.verify import format_table, verify

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


def test_exact_case_holds_with_tightness_one():
    vals, res = _exact_gd_group()
    v = verify(_table(vals, res.values, metric=res.metric))
    assert list(v["verdict"]) == ["holds"]
    assert v["tightness"].iloc[0] == pytest.approx(1.0, rel=1e-9)
    assert v["n_seeds"].iloc[0] == 5 and v["n_points"].iloc[0] == len(ITS)


def test_smaller_stepsize_holds_below_one():
    vals, res = _exact_gd_group(factor=0.5)
    v = verify(_table(vals, res.values, metric=res.metric))
    assert v["verdict"].iloc[0] == "holds" and v["tightness"].iloc[0] < 1


def test_bound_over_100_is_violated():
    vals, res = _exact_gd_group()
    v = verify(_table(vals, res.values / 100, metric=res.metric))
    assert v["verdict"].iloc[0] == "violated"
    assert "iteration" in v["reason"].iloc[0] and v["tightness"].iloc[0] > 50


def test_inadmissible_stepsize_is_not_applicable_never_holds():
    vals, _ = _exact_gd_group(factor=1.0)
    res = bound_for("gd", iterations=ITS, gamma=1.5, c=Constants(L=2.0, mu=2.0, f0_gap=1.0, lmin_p=0.25))
    assert not res.ok
    v = verify(_table(vals, res.values, metric=res.metric, status=res.status))
    assert v["verdict"].iloc[0] == "not applicable"
    assert "exceeds the admissible" in v["reason"].iloc[0]


def test_noise_within_confidence_interval_holds():
    bound = np.ones(3)
    vals = np.array([[1.1, 1.1, 1.1], [0.9, 0.9, 0.9], [1.3, 1.3, 1.3]])  # mean 1.1, LCB well below 1
    v = verify(_table(vals, bound, its=np.arange(3)))
    assert v["verdict"].iloc[0] == "holds" and v["tightness"].iloc[0] == pytest.approx(1.1)
    # one seed: no interval, the value itself is compared
    v1 = verify(_table(vals[:1], bound, its=np.arange(3)))
    assert v1["verdict"].iloc[0] == "violated" and v1["n_seeds"].iloc[0] == 1
    # a higher confidence level widens the interval
    vals2 = np.array([[1.2] * 3, [1.1] * 3, [1.3] * 3, [1.15] * 3])
    assert verify(_table(vals2, bound, its=np.arange(3)), confidence=0.9)["verdict"].iloc[0] == "violated"
    assert verify(_table(vals2, bound, its=np.arange(3)), confidence=0.999999)["verdict"].iloc[0] == "holds"


def test_round_off_floor_and_relative_tolerance():
    bound = np.array([1.0, 1e-20, 1e-40])
    vals = np.array([[1.0, 3e-17, 2e-17]])  # round-off floor of a converged run
    assert verify(_table(vals, bound, its=np.arange(3)))["verdict"].iloc[0] == "holds"
    assert verify(_table(vals, bound, its=np.arange(3)), floor=0.0)["verdict"].iloc[0] == "violated"
    assert verify(_table([[1.0 + 1e-12]], [1.0], its=[0]))["verdict"].iloc[0] == "holds"


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
    v = verify(_min_table(raw, runmin, bound, its))
    assert v["verdict"].iloc[0] == "violated"
    assert v["tightness"].iloc[0] == pytest.approx(9.5 / 5)
    # the same numbers, bound 10: holds
    assert verify(_min_table(raw, runmin, 2 * bound, its))["verdict"].iloc[0] == "holds"


def test_min_metric_with_sparse_evaluation_falls_back_to_running_min():
    """Seed s dips to 0 at t = 2s + 1, only even t are recorded (eval_every = 2): the recorded
    per-t means are all 10, but min_t E[X_t] = 9 < bound 9.9. The verdict must not be 'violated':
    E[running min] <= min_t E[X_t] is the valid lower statistic at sparse points."""
    S = 10
    its = np.arange(2 * S + 1)
    raw = np.full((S, len(its)), 10.0)
    raw[np.arange(S), 2 * np.arange(S) + 1] = 0.0
    runmin = np.minimum.accumulate(raw, axis=1)
    keep = its[::2]
    bound = np.where(keep == 0, np.inf, 9.9)
    t = _min_table(raw[:, keep], runmin[:, keep], bound, keep)
    v = verify(t)
    assert v["verdict"].iloc[0] == "holds", v["reason"].iloc[0]
    assert "running min" in v["reason"].iloc[0] and v["tightness"].iloc[0] < 1
    # with every iterate recorded the exact statistic is used: min_t E = 9 <= 9.9
    full = verify(_min_table(raw, runmin, np.where(its == 0, np.inf, 9.9), its))
    assert full["verdict"].iloc[0] == "holds" and full["tightness"].iloc[0] == pytest.approx(9 / 9.9)
    t2 = t.copy()
    t2["min_grad_norm_sq"] = NAN  # neither every iterate nor the running min: cannot verify
    v2 = verify(t2)
    assert v2["verdict"].iloc[0] == "not applicable"


def test_avg_metric_rebuilt_from_raw_column():
    res = bound_for("gd", iterations=ITS, gamma=0.5, c=Constants(L=2.0, delta0=1.0, lmin_p=1.0, lmax_p=1.0))
    raw = np.zeros((2, len(ITS)))
    raw[:, 0] = 4.0  # ||grad f(W0)||^2 = 2 L delta0 and the first step lands on the minimiser
    t = _table(np.full_like(raw, NAN), res.values, metric="avg_grad_norm_sq")
    t["grad_norm_sq"] = raw.reshape(-1)
    v = verify(t)
    assert v["verdict"].iloc[0] == "holds" and v["tightness"].iloc[0] == pytest.approx(1.0)
    assert "rebuilt" in v["reason"].iloc[0]


def test_grouping_by_hash_and_by_config_columns():
    vals, res = _exact_gd_group()
    a = _table(vals, res.values, config_hash="A")
    b = _table(vals, res.values / 100, config_hash="B")
    v = verify(pd.concat([a, b]))
    assert dict(zip(v["config_hash"], v["verdict"])) == {"A": "holds", "B": "violated"}
    # without a hash: every column but the measured ones (and seed) is the key
    a2 = _table(vals, res.values, config_hash=None, rank=1)
    b2 = _table(vals, res.values / 100, config_hash=None, rank=2)
    v2 = verify(pd.concat([a2, b2]))
    assert len(v2) == 2 and sorted(v2["verdict"]) == ["holds", "violated"]
    # duplicated rows (the same job collected twice) do not change the verdict
    v3 = verify(pd.concat([a, a]))
    assert v3["verdict"].iloc[0] == "holds" and v3["n_seeds"].iloc[0] == 5


def test_theory_vs_measurement_helper_example():
    """How a theory-vs-measurement test reads: bound_for -> table columns -> verify."""
    vals, res = _exact_gd_group(n_seeds=8, factor=0.8, lam=0.5)
    t = _table(vals, res.values, metric=res.metric, status=res.status)
    assert verify(t)["verdict"].tolist() == ["holds"]


def test_format_table_and_bad_input():
    vals, res = _exact_gd_group()
    v = verify(pd.concat([_table(vals, res.values, config_hash="A"), _table(vals, res.values / 100, config_hash="B")]))
    text = format_table(v)
    assert "holds" in text and "violated" in text and "2 groups: 1 holds, 1 violated, 0 not applicable" in text
    with pytest.raises(ValueError, match="confidence"):
        verify(_table(vals, res.values), confidence=1.0)
    with pytest.raises(ValueError, match="bound"):
        verify(_table(vals, res.values).drop(columns="bound"))


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


def test_cli_exit_codes(tmp_path):
    vals, res = _exact_gd_group()
    good, bad = tmp_path / "good", tmp_path / "bad"
    (good / "job0").mkdir(parents=True)
    (good / "sub" / "job1").mkdir(parents=True)
    _write_complete(good / "job0", _table(vals, res.values, config_hash="A"))
    _write_complete(good / "sub" / "job1", _table(vals, res.values, config_hash="C", metric="f_gap",
                    status="not applicable: no theorem for cola"))
    # a job killed mid-write (no completion marker) is ignored
    (good / "killed").mkdir()
    _table(vals, res.values / 100, config_hash="K").to_parquet(good / "killed" / "results.parquet")
    r = _cli(good)
    assert r.returncode == 0, r.stderr
    assert "holds" in r.stdout and "not applicable" in r.stdout
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
    # nothing to verify: exit 2 with one line
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "missing"):
        r = _cli(target)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_tightness_ignores_points_below_the_round_off_floor():
    """A geometric bound decays below the round-off floor while the measured values stop at
    rounding level: the group holds (floor) and its tightness is the ratio where the bound
    is still testable (0.5), not rounding noise over a vanishing bound (1e5 at T = 20)."""
    bound = 0.1 ** ITS.astype(float)
    vals = np.maximum(0.5 * bound, 1e-15)[None, :].repeat(3, axis=0)
    v = verify(_table(vals, bound))
    assert list(v["verdict"]) == ["holds"]
    assert v["tightness"].iloc[0] == pytest.approx(0.5, rel=1e-12)
    assert v["worst_iteration"].iloc[0] <= 12  # bound 1e-12 * max bound is the floor
