"""Config hashes and results columns that must not move: a change here would strand
every stored result (a complete job is found by its hash) or rename a column of
every table. The pinned values were computed before the components described
themselves (issue 12) and are unchanged since."""
import json
from pathlib import Path

import pytest

from experiments.conf.schema import job_config
from experiments.results import config_hash

DATA = Path(__file__).resolve().parent / "data" / "preset_hashes.json"

PINNED = {
    "e2060b273c711a28f8bd868a782b1ce17b09504b7b82a64381adbef59f537a2e": {},
    "ee6b5db3758eedd1a9b0703b6c58aed1d3b593a1090d7620a8946dde19d93f37":
        dict(problem="logistic", estimator="page", **{"estimator.batch": 6, "problem.n_samples": 60}),
    "2e173a0ee120ff3a33244b7f14ab501a5769f90e51eccdf0e55f3212feac455c":
        dict(problem="logistic", estimator="marina", compressor="randk", **{"problem.n_clients": 4, "compressor.k": 3}),
    "8f3d65de13b73aaa17c49c23202a7fc880b85af2267d6b863f734f407b4a44fc":
        dict(problem="logistic", estimator="qgd", **{"problem.n_clients": 4, "estimator.transmit": "factor"}),
    "67a7b6fbcd9f954dab46ab2cc14b169777ae5d81d925d92af5db98ced4370891":
        dict(problem="linreg", estimator="sgd", **{"stepsize.factor": 0.0625, "method.p": 1}),
    "1feae581b03ac87be8fbfd54e6f5658a4ba8951ab22c281c396b5b247e532d40":
        dict(problem="l1", estimator="subgradient", sketch="weighted_column",
             **{"stepsize.rule": "polyak", "sketch.left_decay": 0.7}),
    "3c093c0067e6f815a9a03d09f861096903880f6a2edc620f00cf0f767e8b3f37": dict(method="cola", **{"method.merge_every": 5}),
    "a1127c5124d5ec79be4065c697d1495015a38f7524600554af352dd81d5fc9d0":
        dict(problem="quadratic", method="fpft", estimator="mvr", **{"estimator.noise": 0.1, "estimator.batch": None}),
}


@pytest.mark.parametrize("expected", list(PINNED))
def test_pinned_config_hashes(expected):
    assert config_hash(job_config(**PINNED[expected])) == expected


def test_pinned_hash_catches_a_changed_default():
    """The pin is sensitive: one value moved (PAGE's batch 6 -> 7) changes the hash."""
    cfg = job_config(**PINNED["ee6b5db3758eedd1a9b0703b6c58aed1d3b593a1090d7620a8946dde19d93f37"])
    cfg["estimator"]["batch"] = 7
    assert config_hash(cfg) != "ee6b5db3758eedd1a9b0703b6c58aed1d3b593a1090d7620a8946dde19d93f37"


def test_default_columns_in_order():
    from experiments.conf.check import config_columns

    assert list(config_columns(job_config())) == [
        "problem", "problem_m", "problem_n", "problem_mu", "problem_L", "problem_seed", "problem_n_samples",
        "problem_noise", "problem_n_clients", "problem_heterogeneity", "method", "p", "rank", "estimator", "sketch",
        "compressor", "stepsize_rule", "stepsize_factor", "steps", "eval_every", "track_every_step", "size"]


@pytest.mark.parametrize("preset", ["linreg_finite_sum", "pl_page", "pl_marina", "nonisotropic_p_nonsmooth"])
def test_preset_hashes_and_columns_unchanged_at_size_ci(preset):
    from tests.preset_hashes import preset_table

    expected = json.loads(DATA.read_text())
    assert preset_table([preset], ["ci"]) == {f"{preset}/ci": expected[f"{preset}/ci"]}


@pytest.mark.slow
def test_every_preset_at_every_size_unchanged():
    from tests.preset_hashes import preset_table

    expected = json.loads(DATA.read_text())
    got = preset_table()
    assert sorted(got) == sorted(expected)
    moved = [k for k in got if got[k] != expected[k]]
    assert not moved, moved
