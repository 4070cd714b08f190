"""Hydra-free sweep entry point: same configs (and hashes) as the Hydra app,
per-run p/stepsize batching equals separate jobs, resume by skipping."""
import numpy as np
import pytest
from hydra import compose, initialize_config_module

import experiments.run  # noqa: F401  (registers the structured configs and resolvers)
from experiments.conf.schema import job_config
from experiments.presets import expand
from experiments.results import config_hash, load_results


def _hydra_plain(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return experiments.run.job_config(cfg)


@pytest.mark.parametrize("overrides,kwargs", [
    ([], {}),
    (["method.p=0.3", "method.rank=1"], {"method.p": 0.3, "method.rank": 1}),
    (["problem=linreg", "method=fpft", "stepsize.factor=2"], {"problem": "linreg", "method": "fpft", "stepsize.factor": 2.0}),
    (["estimator=page", "estimator.batch=5"], {"estimator": "page", "estimator.batch": 5}),
    (["problem=logistic", "problem.n_clients=4", "estimator=qgd", "compressor=randk", "compressor.k=2"],
     {"problem": "logistic", "problem.n_clients": 4, "estimator": "qgd", "compressor": "randk", "compressor.k": 2}),
])
def test_job_config_hash_equals_hydra_composition(overrides, kwargs):
    assert config_hash(job_config(**kwargs)) == config_hash(_hydra_plain(overrides))


def test_sweep_batches_configs_exactly_and_resumes(tmp_path):
    from experiments.job import execute
    from experiments.sweep import run_sweep

    small = ["device=cpu", "seeds=2", "steps=15", "stepsize.factor=1.0"]
    cfgs = [c for c, _ in expand(["experiment=linreg_gd_fpft", *small])
            + expand(["experiment=linreg_gd", "method.rank=2", *small])[:4]]
    run_sweep(cfgs, str(tmp_path), log=lambda *a: None)
    table = load_results(tmp_path)
    assert table["config_hash"].nunique() == len(cfgs)
    # a batched job equals the same job run alone through the job layer, bitwise on CPU
    for cfg in cfgs[:3]:
        alone, _ = execute(cfg)
        mine = table[table["config_hash"] == config_hash(cfg)].sort_values(["seed", "iteration"])
        alone = alone.sort_values(["seed", "iteration"])
        for col in ("grad_norm_sq", "loss", "avg_grad_norm_sq", "bound"):
            np.testing.assert_array_equal(mine[col].to_numpy(), alone[col].to_numpy())
    # rerun: everything complete, nothing run again
    lines = []
    run_sweep(cfgs, str(tmp_path), log=lines.append)
    assert f"{len(cfgs)} already complete" in lines[0]
    assert len(load_results(tmp_path)) == len(table)


def test_sweep_and_hydra_paths_write_the_same_table(tmp_path):
    import pandas as pd

    from experiments.job import run_job
    from experiments.sweep import run_sweep

    plain = _hydra_plain(["problem.L=20", "method.p=0.3", "steps=6", "seeds=2", "eval_every=3", "device=cpu"])
    cfg = job_config(**{"problem.L": 20.0, "method.p": 0.3}, steps=6, seeds=2, eval_every=3, device="cpu")
    assert config_hash(cfg) == config_hash(plain)
    run_job(plain, tmp_path / "hydra")
    run_sweep([cfg], str(tmp_path / "sweep"), log=lambda *a: None)
    hydra, sweep = load_results(tmp_path / "hydra"), load_results(tmp_path / "sweep")
    assert list(hydra.columns) == list(sweep.columns) and "problem_L" in hydra
    pd.testing.assert_frame_equal(hydra.drop(columns="time_s"), sweep.drop(columns="time_s"))


def test_sweep_batches_each_job_with_its_own_stepsize_rule(tmp_path):
    from experiments.job import execute
    from experiments.sweep import run_sweep

    common = dict(steps=6, seeds=2, eval_every=3, device="cpu")
    cfgs = [job_config(**common, **{"stepsize.rule": rule, "method.p": p, "stepsize.factor": f})
            for rule, p, f in (("polyak", 0.2, 1.0), ("polyak", 0.8, 0.5), ("constant", 0.5, 1.0))]
    run_sweep(cfgs, str(tmp_path), log=lambda *a: None)
    table = load_results(tmp_path)
    for cfg in cfgs:
        alone, _ = execute(cfg)
        mine = table[table["config_hash"] == config_hash(cfg)].sort_values(["seed", "iteration"])
        np.testing.assert_array_equal(mine["grad_norm_sq"].to_numpy(),
                                      alone.sort_values(["seed", "iteration"])["grad_norm_sq"].to_numpy())


@pytest.mark.parametrize("key", ["seeds", "steps"])
def test_sweep_cli_refuses_zero_before_any_work(tmp_path, capsys, key):
    from experiments.sweep import main

    out = tmp_path / "out"
    assert main(["linreg_gd", f"{key}=0", "device=cpu", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {key}: must be an integer >= 1, got 0\n"
    assert not out.exists()


def test_sweep_help_gives_every_option_and_its_default():
    from experiments.presets import preset_names
    from experiments.sweep import parser

    ap = parser()
    for action in ap._actions:
        if action.option_strings and action.dest != "help":
            assert "(default: " in action.help, action.dest
    text = ap.format_help()
    assert all(f"  {name}: " in text for name in preset_names())


@pytest.mark.parametrize("preset", sorted(p.stem for p in (
    __import__("pathlib").Path(experiments.run.__file__).parent / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_preset_passes_the_schema(preset):
    from experiments.conf.check import check_config

    check_config(_hydra_plain([f"experiment={preset}"]))


def test_sweep_leaves_a_job_claimed_by_another_process_alone(tmp_path):
    """A job claimed elsewhere (a live Hydra job or another batched sweep) is not run
    twice: the batched sweep skips it and runs the rest."""
    from experiments.claims import try_claim
    from experiments.sweep import run_sweep

    cfgs = [c for c, _ in expand(["experiment=linreg_gd", "device=cpu", "seeds=2", "steps=5", "method.rank=1",
                                  "stepsize.factor=1.0"])][:3]
    held = config_hash(cfgs[0])
    lines = []
    with try_claim(tmp_path, held, out_dir=tmp_path / "elsewhere"):
        run_sweep(cfgs, str(tmp_path), log=lines.append)
    done = set(load_results(tmp_path)["config_hash"])
    assert done == {config_hash(c) for c in cfgs[1:]}
    assert any("being run by another process" in line for line in lines)
    run_sweep(cfgs, str(tmp_path), log=lines.append)  # released: now it runs, the rest are skipped
    assert set(load_results(tmp_path)["config_hash"]) == {config_hash(c) for c in cfgs}


def test_sweep_overrides_reach_every_job_and_refuse_what_the_schema_does_not_declare(tmp_path, capsys):
    """KEY=VALUE reaches every job exactly as a Hydra override would (the finite-sum
    sweep with problem.variant=authors is experiment=linreg_finite_sum_authors, hash for
    hash), and a bad item is refused with one line before any work."""
    from experiments.sweep import main

    for bad, field in ((["problem.variant"], "experiment:"), (["problem.foo=1"], "problem.foo:")):
        out = tmp_path / "refused"
        assert main(["linreg_finite_sum", "device=cpu", *bad, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {field}") and not out.exists()
    out = tmp_path / "authors"
    small = ["device=cpu", "steps=2", "seeds=1", "method.p=0.5"]
    assert main(["linreg_finite_sum", *small, "problem.variant=authors", "--out", str(out)]) == 0
    table = load_results(out)
    assert set(table["problem_variant"]) == {"authors"}
    (cfg, _), = expand(["experiment=linreg_finite_sum_authors", *small])
    assert set(table["config_hash"]) == {config_hash(cfg)}
