"""Known answers that must not move.

Every published number comes from the counter-based random streams
(:mod:`solvers.rng`), and every stored result is found again by its
``config_hash`` (:mod:`experiments.confighash`). A change to either (a new hash
constant, a reordered key derivation, a renamed or re-defaulted config key) would
silently change every figure or strand every stored job; these fixed values make
it fail here instead. If a change is intended, say so in the commit and update
the values together with the stored results and paper_repro.md.
"""
from __future__ import annotations

import torch

from experiments.conf.schema import job_config
from experiments.confighash import config_hash
from solvers import rng
from solvers.rng import Stream

SEEDS = torch.tensor([0, 1, 12345], dtype=torch.int64)


def _hex(t: torch.Tensor):
    return [[float.hex(float(x)) for x in row] for row in t.tolist()]


def test_random_bits_known_values():
    got = rng.random_bits(SEEDS, Stream.SKETCH, 7, (3,), sub=1).tolist()
    assert got == [[3533151773, 3084080862, 1803505625], [68974257, 2973245705, 2588256273],
                   [980631693, 2027031407, 1256236490]]


def test_uniform_known_values_bitwise():
    assert _hex(rng.uniform(SEEDS, Stream.NOISE, 0, (2,))) == [
        ["0x1.7f6e3075e4390p-1", "0x1.5a802e2ae9520p-1"],
        ["0x1.0e41ce9591aa8p-1", "0x1.3277f2a98c2a8p-5"],
        ["0x1.7ca8f3c36dc4fp-2", "0x1.1a6a6812362b6p-3"]]


def test_normal_known_values_bitwise():
    assert _hex(rng.normal(SEEDS, Stream.SKETCH, 3, (2,), sub=0)) == [
        ["-0x1.5c58b9cd03b15p-2", "0x1.edba6131e3c4ap+0"],
        ["-0x1.42fbb75b6bc36p-1", "-0x1.880dfbdc5128ap-2"],
        ["-0x1.07af197998057p+0", "-0x1.910e9eca1d453p-2"]]


def test_discrete_draws_known_values():
    assert rng.subset(SEEDS, Stream.MINIBATCH, 2, 10, 3).tolist() == [[6, 2, 4], [6, 8, 3], [9, 8, 0]]
    assert rng.integers(SEEDS, Stream.MINIBATCH, 9, 100, (4,)).tolist() == [
        [5, 18, 63, 46], [5, 94, 68, 86], [95, 55, 26, 66]]
    assert rng.signs(SEEDS, Stream.COMPRESSOR, 1, (4,)).tolist() == [
        [-1.0, -1.0, -1.0, -1.0], [-1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, 1.0]]


def test_bernoulli_coin_is_the_uniform_below_p():
    """The coin (Stream.COIN) is ``uniform < p`` on the same counter: pinned through
    the pinned uniform, at thresholds on both sides of each run's value."""
    u = rng.uniform(SEEDS, Stream.COIN, 5, ())
    assert _hex(u[:, None]) == [["0x1.ea41a5c82503fp-2"], ["0x1.764dc9dfd585ep-3"], ["0x1.72c25debca0c4p-4"]]
    assert rng.bernoulli(SEEDS, Stream.COIN, 5, 0.5).tolist() == [True, True, True]
    assert rng.bernoulli(SEEDS, Stream.COIN, 5, 0.1).tolist() == [False, False, True]
    assert rng.bernoulli(SEEDS, Stream.COIN, 5, 0.2).tolist() == [False, True, True]


def test_config_hash_of_plain_data():
    cfg = {"a": 1, "b": [1.0, 2.5, None], "c": {"d": "x", "e": None}, "f": float("inf")}
    assert config_hash(cfg) == "56df247bb1678f2e6b4ba583abed3200e3011e4254900b7c6568f7eae35810da"
    # spelling that must not matter: key order, 1 vs 1.0, None vs absent, non-result keys
    same = {"f": float("inf"), "c": {"d": "x"}, "b": [1, 2.5, None], "a": 1.0, "device": "cuda", "results_root": "x"}
    assert config_hash(same) == config_hash(cfg)


def test_config_hash_of_job_configurations():
    """The defaults of the job schema are part of every stored job's name."""
    assert config_hash(job_config()) == "e2060b273c711a28f8bd868a782b1ce17b09504b7b82a64381adbef59f537a2e"
    assert config_hash(job_config(problem="quadratic", method="bernoulli_lora", **{"method.p": 0.2, "seeds": 3})) \
        == "b3388c7a2e5cf54791b7f147943bfbae60950356220d2e3971225405ad8763aa"
    assert config_hash(job_config(estimator="page")) == \
        "008c456f02ca8f11815b1a0f3f914cde5e2d9eba4419247f9ba59435c6bdc8b2"


def test_config_hash_of_real_model_configurations(tmp_path):
    """The real-model section names its finished configurations by these hashes
    (resume and skip depend on them); method identifiers are part of them."""
    from experiments.real_model import methods as mt
    from experiments.real_model.table import make_plan
    from experiments.real_model.train import TrainConfig

    specs = mt.parse_methods("rac_lora,bernoulli_lora", [0.5])
    plan = make_plan(out=tmp_path, data="digits", seeds=[0, 1], dtype=torch.float32, cfg=TrainConfig(), specs=specs)
    assert plan.hash == "8002bd116ae0b5d6ab6dcc8b35fdc9825cfb48633c42f1e2125c39df2d28fc47"
    assert plan.pretrain_hash == "72853f6a7989b4d058e387f77ecee7bfc5249761524cb9e0841f290d9ca7cbb7"
    assert [(j.spec.label, j.hash) for j in plan.jobs] == [
        ("rac_lora_a", "c8eea631babbf142b141f882442cf8998af7b05ee8a434cd246c70d54de82198"),
        ("rac_lora_b", "ba8844b505e9a68bf63780b3f4c714452c6e7ebe1305e4770c0c765a8a4706d5"),
        ("bernoulli_lora(p=0.5)", "3076643363c7125ca59510e52916283696e31e51c2a60e171e841915b43af907")]
