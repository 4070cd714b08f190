"""Counter-based RNG: distribution, independence of streams, batch invariance."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from solvers import hashing, rng


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


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**40), st.integers(1, 6), st.integers(1, 4), st.integers(1, 5), st.integers(0, 3))
def test_block_of_steps_equals_per_step_draws(first, K, a, b, sub):
    """A block draw (step = range) is, element [:, k], bitwise the draw of step first + k
    (bits, uniforms, normals), including steps past 2**32 (the high step word)."""
    seeds = torch.tensor([0, 7, 2**31 + 5])
    steps = range(first, first + K)
    for draw in (rng.random_bits, rng.uniform, rng.normal):
        block = draw(seeds, rng.Stream.SKETCH, steps, (a, b), sub=sub)
        assert block.shape == (3, K, a, b)
        for k, t in enumerate(steps):
            assert torch.equal(block[:, k], draw(seeds, rng.Stream.SKETCH, t, (a, b), sub=sub))
    coins = rng.uniform(seeds, rng.Stream.COIN, list(steps), ())
    assert coins.shape == (3, K)
    assert torch.equal(coins[:, -1], rng.uniform(seeds, rng.Stream.COIN, first + K - 1, ()))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**40), min_size=3, max_size=3), min_size=1, max_size=4),
       st.integers(1, 3), st.integers(0, 3))
def test_per_run_steps_equal_per_step_draws(rows, a, sub):
    """An (R, K) array of per-run steps gives, element [r, k], bitwise run r's draw at step
    steps[r, k] alone (bits, uniforms, normals, coins), whatever the other rows hold."""
    steps = np.array(rows, dtype=np.int64)
    seeds = torch.arange(len(rows)) * 7 + 1
    for draw in (rng.random_bits, rng.uniform, rng.normal):
        block = draw(seeds, rng.Stream.SKETCH, steps, (a, 2), sub=sub)
        assert block.shape == (len(rows), 3, a, 2)
        for r in range(len(rows)):
            for k in range(3):
                one = draw(seeds[r:r + 1], rng.Stream.SKETCH, int(steps[r, k]), (a, 2), sub=sub)[0]
                assert torch.equal(block[r, k], one)
    coins = rng.bernoulli(seeds, rng.Stream.COIN, steps, 0.5)
    assert coins.shape == steps.shape
    assert coins[0, 1] == rng.bernoulli(seeds[:1], rng.Stream.COIN, int(steps[0, 1]), 0.5)[0]


def test_per_run_steps_of_another_run_count_are_refused():
    with pytest.raises(ValueError, match="steps: an array of per-run steps needs 3 rows"):
        rng.normal(torch.arange(3), rng.Stream.SKETCH, np.zeros((1, 4), dtype=np.int64), (2,))


def test_empty_block_fails_clearly():
    with pytest.raises(ValueError, match="steps"):
        rng.normal(torch.tensor([1]), rng.Stream.SKETCH, range(3, 3), (2,))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12), st.integers(1, 70), st.booleans())
def test_cpu_words_in_uint32_are_the_int64_words(keys, count, block):
    """The CPU draws hash in numpy's uint32 (rng._words_numpy); the other devices hash in
    int64 with split products (rng._words_tensor): the same integers, for any keys,
    including the extremes 0 and 2**32 - 1, for one step (R,) and a block (R, K)."""
    k = torch.tensor(keys + [0, 2**32 - 1], dtype=torch.int64)
    if block:
        k = k.reshape(1, -1).expand(2, -1).contiguous()
    a, b = rng._words_numpy(k, count), rng._words_tensor(k, count)
    assert a.dtype == b.dtype == torch.int64 and a.shape == b.shape == (*k.shape, count)
    assert torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) <= 2**32 - 1


def _check_cpu_uniforms(seeds, count, step):
    seeds = torch.tensor(seeds, dtype=torch.int64)
    for consts in (rng._key_constants(2, step, 1), rng._key_constants_steps(2, [step, step + 3], 1, "cpu")):
        k = rng._run_keys(seeds, *consts)
        words = rng._words_tensor(k, 2 * count).reshape(*k.shape, count, 2)
        a, b = (words[..., 0] >> 5).to(torch.float64), (words[..., 1] >> 6).to(torch.float64)
        ref = (a * 2.0**26 + b + 0.5) / 2.0**53  # written out here, not read from rng
        got = rng._uniform_core(seeds, *consts, count)
        assert got.dtype == torch.float64 and torch.equal(got, ref)
        assert bool((got > 0).all() and (got < 1).all())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8), st.integers(1, 40), st.integers(0, 2**40))
def test_cpu_uniforms_from_uint32_words_are_the_tensor_paths(seeds, count, step):
    """On a CPU the words become uniforms in numpy (rng._uniform_core); the other devices
    convert int64 tensors: the same doubles, bitwise (each is one IEEE operation), for
    one step and a block of steps; the normals built on them are therefore the same too."""
    _check_cpu_uniforms(seeds, count, step)


def test_cpu_uniform_conversion_slip_is_caught(monkeypatch):
    """The check above fails when the numpy conversion divides by the next double after
    2**53 (a last-bits slip)."""
    monkeypatch.setattr(hashing, "_TWO_53", float(np.nextafter(2.0**53, np.inf)))
    with pytest.raises(AssertionError):
        _check_cpu_uniforms([0, 7, 2**32 - 1], 5, 3)


def test_cpu_draws_take_the_uint32_path_and_a_wrong_one_is_caught(monkeypatch):
    seeds = torch.tensor([0, 5, 2**31 + 3])
    ref = rng.normal(seeds, rng.Stream.SKETCH, 17, (4, 3))
    monkeypatch.setattr(rng, "_words_tensor", lambda k, count: (_ for _ in ()).throw(AssertionError("int64 path")))
    assert torch.equal(rng.normal(seeds, rng.Stream.SKETCH, 17, (4, 3)), ref)  # never reached the int64 path

    hash_ = hashing._hash32_numpy
    def off_by_one(x, tmp=None):  # a slip flipping the lowest bit (in place, as the hash works)
        hash_(x, tmp)
        x ^= np.uint32(1)
        return x

    monkeypatch.setattr(hashing, "_hash32_numpy", off_by_one)
    assert not torch.equal(rng.normal(seeds, rng.Stream.SKETCH, 17, (4, 3)), ref)
