"""Counter-based RNG: distribution, independence of streams, batch invariance."""
import numpy as np
import pytest
import torch
from scipy import stats

from solvers import rng


def test_uniform_is_uniform_ks():
    u = rng.uniform(torch.arange(20), rng.Stream.SKETCH, 3, (500,)).flatten().numpy()
    assert 0.0 < u.min() and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_normal_is_standard_normal_ks():
    z = rng.normal(torch.arange(20), rng.Stream.NOISE, 0, (500,)).flatten().numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_draws_depend_only_on_the_runs_seed():
    alone = rng.normal(torch.tensor([17]), rng.Stream.SKETCH, 5, (4, 3))
    batch = rng.normal(torch.arange(50), rng.Stream.SKETCH, 5, (4, 3))
    assert torch.equal(alone[0], batch[17])


def test_streams_steps_and_substreams_differ():
    s = torch.arange(4)
    a = rng.uniform(s, rng.Stream.SKETCH, 1, (8,))
    assert not torch.equal(a, rng.uniform(s, rng.Stream.COIN, 1, (8,)))
    assert not torch.equal(a, rng.uniform(s, rng.Stream.SKETCH, 2, (8,)))
    assert not torch.equal(a, rng.uniform(s, rng.Stream.SKETCH, 1, (8,), sub=1))
    assert torch.equal(a, rng.uniform(s, rng.Stream.SKETCH, 1, (8,)))


def test_consecutive_steps_uncorrelated():
    s = torch.arange(4000)
    a = rng.normal(s, rng.Stream.SKETCH, 1, ()).numpy()
    b = rng.normal(s, rng.Stream.SKETCH, 2, ()).numpy()
    c = rng.normal(s + 1, rng.Stream.SKETCH, 1, ()).numpy()
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(4000)
    assert abs(np.corrcoef(a, c)[0, 1]) < 4 / np.sqrt(4000)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_bernoulli_frequency(p):
    n = 20000
    c = rng.bernoulli(torch.arange(n), rng.Stream.COIN, 0, p).numpy()
    half = 4 * np.sqrt(p * (1 - p) / n)
    assert abs(c.mean() - p) <= half + 1e-12


def test_subset_distinct_and_uniform():
    idx = rng.subset(torch.arange(3000), rng.Stream.MINIBATCH, 0, 10, 4)
    assert all(len(set(row.tolist())) == 4 for row in idx)
    counts = np.bincount(idx.flatten().numpy(), minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_subset_rejects_bad_size():
    with pytest.raises(ValueError, match="batch size"):
        rng.subset(torch.arange(2), rng.Stream.MINIBATCH, 0, 5, 6)


def test_signs_balanced():
    s = rng.signs(torch.arange(100), rng.Stream.SKETCH, 0, (100,)).numpy()
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert abs(s.mean()) < 4 / 100
