"""Hydra-free sweep entry point: same configs (and hashes) as the Hydra app,
per-run p/stepsize batching equals separate jobs, resume by skipping."""
import numpy as np
import pytest
from hydra import compose, initialize_config_module

import experiments.run  # noqa: F401  (registers the structured configs and resolvers)
from experiments.conf.schema import job_config
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
])
def test_job_config_hash_equals_hydra_composition(overrides, kwargs):
    assert config_hash(job_config(**kwargs)) == config_hash(_hydra_plain(overrides))


def test_sweep_batches_configs_exactly_and_resumes(tmp_path):
    from experiments.job import execute
    from experiments.sweep import run_sweep
    from experiments.sweeps import linreg_gd

    cfgs = linreg_gd(size="ci", device="cpu", seeds=2, steps=15, factors=(1.0,))
    cfgs = [c for c in cfgs if c["method"]["name"] == "fpft" or c["method"]["rank"] == 2][:5]
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
