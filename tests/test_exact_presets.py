"""The exact presets (experiment=exact_pairs, experiment=exact_isotropic) and the shipped
contractive compressor they need (randk_unscaled): every job of their sweeps gets its
theorem inside the admissible stepsize range with a bound that is not vacuous from the
start, and the exact expectation applies (computed without any run)."""
import numpy as np
import pytest
import torch

from experiments.build import build_job
from experiments.exact import exact_columns
from experiments.job import theory_constants
from solvers.compressors import RandK, RandKUnscaled, make_compressor
from solvers.distributed import EF21, QGD
from tests import mutants
from theory.dispatch import bound_for

JOBS = [(preset, job) for preset in mutants.PRESETS for job in mutants.preset_jobs(preset)]


def test_randk_unscaled_is_randk_times_k_over_d_and_contractive():
    X = torch.randn(50, 2, 3, 2, dtype=torch.float64)
    seeds = torch.arange(50)
    Y, bits = RandKUnscaled(k=2).compress(X, seeds, 3)
    Z, bits_z = RandK(k=2).compress(X, seeds, 3)
    assert torch.equal(Y, Z * (2 / 6)) and torch.equal(bits, bits_z)
    comp = make_compressor("randk_unscaled", k=2, d=6)
    assert comp.alpha == pytest.approx(2 / 6) and comp.omega is None and not comp.unbiased
    # each draw keeps k coordinates (unchanged up to rounding: times d/k, then k/d) and zeroes the others ...
    kept = Y != 0
    assert torch.equal(kept.sum((-2, -1)), torch.full((50, 2), 2))
    assert torch.allclose(Y[kept], X[kept], rtol=1e-14, atol=0)
    # ... so over the C(6, 2) equally likely draws E||C(x) - x||^2 = (1 - k/d) ||x||^2 (alpha = k/d)
    x = torch.randn(6, dtype=torch.float64)
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    err = np.mean([float(x.pow(2).sum() - x[list(s)].pow(2).sum()) for s in pairs])
    assert err == pytest.approx((1 - comp.alpha) * float(x.pow(2).sum()), rel=1e-12)


def test_ef21_takes_randk_unscaled_and_qgd_refuses_it():
    comp = make_compressor("randk_unscaled", k=2, d=6)
    assert EF21(compressor=comp).compressor is comp
    with pytest.raises(ValueError, match="compressor: qgd needs an unbiased compressor"):
        QGD(compressor=comp)


@pytest.mark.parametrize("preset,job", JOBS, ids=[f"{p}:" + ",".join(o.split("=", 1)[1] for o in j) for p, j in JOBS])
def test_every_job_has_an_admissible_theorem_and_an_exact_reference(preset, job):
    cfg = mutants.preset_config(preset, job)
    built = build_job(cfg)
    # the call experiments.job.attach_bounds makes
    r = bound_for(cfg["estimator"]["name"], iterations=list(range(cfg["steps"] + 1)), gamma=built.gamma,
                  c=theory_constants(built, cfg), method=cfg["method"]["name"])
    assert r.ok, r.status
    assert built.gamma <= r.gamma_max, (built.gamma, r.gamma_max)
    exact = exact_columns(built, np.arange(cfg["steps"] + 1))
    assert np.all(np.isfinite(exact["f_gap"])) and exact["f_gap"][-1] < exact["f_gap"][0]


def test_verdict_table_counts_several_verify_outputs_and_refuses_a_configuration_twice(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    import pandas as pd

    path = Path(__file__).resolve().parents[1] / "scripts" / "verdict_table.py"
    spec = importlib.util.spec_from_file_location("verdict_table", path)
    vt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vt)
    row = dict(method="bernoulli_lora", estimator="gd", stepsize_rule="constant", p=0.2, verdict="holds",
               exact_verdict="agrees")
    pd.DataFrame([dict(row, config_hash="a"), dict(row, config_hash="b", p=1.0, verdict="inconclusive")]) \
        .to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame([dict(row, config_hash="c", exact_verdict=None)]).to_csv(tmp_path / "two.csv", index=False)
    assert vt.main([str(tmp_path / "one.csv"), str(tmp_path / "two.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| bernoulli_lora | gd | constant | 3 | 2 | 0 | 1 | 0 | 2 | 0 |"
    assert vt.main([str(tmp_path / "one.csv"), str(tmp_path / "two.csv"), "--keys", "method,p"]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == ["| bernoulli_lora | 0.2 | 2 | 2 | 0 | 0 | 0 | 1 | 0 |",
                                                        "| bernoulli_lora | 1.0 | 1 | 0 | 0 | 1 | 0 | 1 | 0 |"]
    assert vt.main([str(tmp_path / "one.csv"), str(tmp_path / "one.csv")]) == 2
    assert "error: csv: configuration a is in more than one file" in capsys.readouterr().err
    assert vt.main([str(tmp_path / "one.csv"), "--keys", "method,nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --keys: no column 'nope'")


def test_the_composed_jobs_are_those_of_the_reproduce_run():
    """preset_config composes what the Hydra app ran: the config hashes of both presets'
    jobs are exactly those of their SIZE=ci run (paper_results/cpu_ci_reproduce/exact_presets)."""
    from pathlib import Path

    import pandas as pd

    from experiments.results import config_hash

    csv = Path(__file__).resolve().parents[1] / "paper_results" / "cpu_ci_reproduce" / "exact_presets" / "verdicts.csv"
    assert {config_hash(mutants.preset_config(p, j)) for p, j in JOBS} == set(pd.read_csv(csv)["config_hash"])
