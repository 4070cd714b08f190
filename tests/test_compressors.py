"""Compressors: Monte Carlo unbiasedness and variance (omega) with confidence
intervals, TopK contraction for every x, Natural's 1/8, exact bit counts,
per-seed determinism, batch and client-count invariance, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers.compressors import make_compressor

DRAWS = 20000
Z = 5.0  # confidence-interval width in standard errors (false alarm ~ 6e-7 per check)
MC = settings(max_examples=25, deadline=None, derandomize=True)


def _vector(m, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64) * torch.exp(torch.randn(m, n, generator=g, dtype=torch.float64))


def _draws(comp, x, step=3, draws=DRAWS):
    """Q(x) for `draws` independent runs (seeds 0..draws-1): (draws, m, n)."""
    X = x.expand(draws, 1, *x.shape).contiguous()
    Y, bits = comp.compress(X, torch.arange(draws), step)
    return Y[:, 0], bits


def _check_unbiased(Y, x):
    mean = Y.mean(0)
    se = Y.std(0) / math.sqrt(Y.shape[0])
    assert bool((torch.abs(mean - x) <= Z * se + 1e-12 * x.abs().max()).all())


def _err_mean_se(Y, x):
    err = ((Y - x) ** 2).sum((-2, -1))
    return float(err.mean()), float(err.std() / math.sqrt(err.shape[0]))


shapes = st.tuples(st.integers(1, 4), st.integers(1, 5))


@MC
@given(shape=shapes, kfrac=st.floats(0.0, 1.0), seed=st.integers(0, 10 ** 6))
def test_randk_unbiased_with_exact_variance(shape, kfrac, seed):
    m, n = shape
    d = m * n
    k = 1 + int(kfrac * (d - 1))
    x = _vector(m, n, seed)
    comp = make_compressor("randk", k=k)
    Y, _ = _draws(comp, x)
    assert bool(((Y != 0).sum((-2, -1)) <= k).all())
    _check_unbiased(Y, x)
    mean, se = _err_mean_se(Y, x)
    target = (d / k - 1) * float((x ** 2).sum())
    assert comp.omega_at(d) == pytest.approx(d / k - 1)
    assert abs(mean - target) <= Z * se + 1e-12 * target


@MC
@given(shape=shapes, s=st.integers(1, 6), seed=st.integers(0, 10 ** 6))
def test_dither_unbiased_and_variance_below_omega(shape, s, seed):
    m, n = shape
    d = m * n
    x = _vector(m, n, seed)
    comp = make_compressor("dither", s=s)
    Y, _ = _draws(comp, x)
    _check_unbiased(Y, x)
    mean, se = _err_mean_se(Y, x)
    omega = min(d / s ** 2, math.sqrt(d) / s)
    assert comp.omega_at(d) == pytest.approx(omega)
    assert mean <= omega * float((x ** 2).sum()) + Z * se
    # exact variance: (||x||/s)^2 sum_i f_i (1 - f_i), f_i the fraction of s|x_i|/||x||
    norm = float(torch.linalg.norm(x))
    frac = torch.frac(s * x.abs() / norm)
    exact = (norm / s) ** 2 * float((frac * (1 - frac)).sum())
    assert abs(mean - exact) <= Z * se + 1e-9 * norm ** 2
    # values on the grid ||x|| * {0, 1/s, ..., 1} with the sign of x
    levels = Y * s / norm
    assert torch.allclose(levels, torch.round(levels), atol=1e-9)
    assert bool((Y * torch.sign(x) >= 0).all())


@MC
@given(shape=shapes, seed=st.integers(0, 10 ** 6))
def test_natural_unbiased_and_variance_below_one_eighth(shape, seed):
    m, n = shape
    x = _vector(m, n, seed)
    comp = make_compressor("natural")
    Y, _ = _draws(comp, x)
    _check_unbiased(Y, x)
    mean, se = _err_mean_se(Y, x)
    assert mean <= 0.125 * float((x ** 2).sum()) + Z * se
    # every value is sign(x) 2^a or sign(x) 2^(a+1), with 2^a <= |x| < 2^(a+1)
    a = torch.floor(torch.log2(x.abs()))
    lo, hi = torch.sign(x) * 2.0 ** a, torch.sign(x) * 2.0 ** (a + 1)
    assert bool(((Y == lo) | (Y == hi)).all())
    exact = float(((x.abs() - lo.abs()) * (hi.abs() - x.abs())).sum())
    assert abs(mean - exact) <= Z * se + 1e-12


def test_natural_worst_case_attains_one_eighth_and_powers_of_two_are_exact():
    x = torch.tensor([[4 / 3, -8 / 3, 4 / 3 * 2.0 ** -10]], dtype=torch.float64)
    Y, _ = _draws(make_compressor("natural"), x)
    mean, se = _err_mean_se(Y, x)
    assert abs(mean - 0.125 * float((x ** 2).sum())) <= Z * se
    p = torch.tensor([[1.0, -0.5, 2.0 ** 20, 0.0]], dtype=torch.float64)
    Yp, _ = _draws(make_compressor("natural"), p, draws=50)
    assert torch.equal(Yp, p.expand_as(Yp))


@settings(max_examples=200, deadline=None)
@given(shape=shapes, kfrac=st.floats(0.0, 1.0),
       values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=20, max_size=20))
def test_topk_contraction_for_every_x(shape, kfrac, values):
    m, n = shape
    d = m * n
    k = 1 + int(kfrac * (d - 1))
    x = torch.tensor(values[:d], dtype=torch.float64).reshape(1, 1, m, n)
    comp = make_compressor("topk", k=k)
    C, _ = comp.compress(x, torch.tensor([0]), 0)
    assert int((C != 0).sum()) <= k
    assert float(((C - x) ** 2).sum()) <= (1 - k / d) * float((x ** 2).sum()) * (1 + 1e-12)
    assert comp.alpha_at(d) == k / d
    # the kept entries are the k largest magnitudes, untouched
    kept = C != 0
    assert torch.equal(C[kept], x[kept])
    if bool(kept.any()) and bool((~kept).any()):
        assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())


def test_identity_exact():
    X = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    comp = make_compressor("identity")
    Y, bits = comp.compress(X, torch.arange(3), 7)
    assert torch.equal(Y, X)
    assert torch.equal(bits, torch.full((3, 2), 32.0 * 20, dtype=torch.float64))
    assert comp.omega == 0 and comp.alpha == 1 and comp.unbiased
    _, bits64 = make_compressor("identity", float_bits=64).compress(X, torch.arange(3), 7)
    assert float(bits64[0, 0]) == 64 * 20


@pytest.mark.parametrize("name", ["randk", "topk"])
@pytest.mark.parametrize("m,n,k,expected", [
    (6, 5, 5, 5 * (32 + 5)),   # d = 30, ceil(log2 30) = 5
    (4, 8, 3, 3 * (32 + 5)),   # d = 32, exactly 5 index bits
    (3, 11, 1, 1 * (32 + 6)),  # d = 33, 6 index bits
    (1, 1, 1, 32),             # d = 1, no index
    (2, 2, 4, 4 * (32 + 2)),
])
def test_bits_by_hand(name, m, n, k, expected):
    X = torch.randn(2, 3, m, n, dtype=torch.float64)
    _, bits = make_compressor(name, k=k).compress(X, torch.arange(2), 0)
    assert bits.dtype == torch.float64 and bits.shape == (2, 3)
    assert bool((bits == expected).all())
    _, bits64 = make_compressor(name, k=k, float_bits=64).compress(X, torch.arange(2), 0)
    assert bool((bits64 == expected + 32 * k).all())


def test_bits_dither_and_natural():
    X = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    _, b = make_compressor("dither", s=3).compress(X, torch.arange(2), 0)
    assert bool((b == 32 + 30 * (1 + 2)).all())  # s = 3: levels 0..3 in 2 bits
    _, b = make_compressor("dither", s=4).compress(X, torch.arange(2), 0)
    assert bool((b == 32 + 30 * (1 + 3)).all())  # levels 0..4 in 3 bits
    _, b = make_compressor("natural").compress(X, torch.arange(2), 0)
    assert bool((b == 9 * 30).all())
    _, b = make_compressor("natural", float_bits=64).compress(X, torch.arange(2), 0)
    assert bool((b == 12 * 30).all())


RANDOMIZED = [("randk", {"k": 4}), ("dither", {"s": 2}), ("natural", {}), ("topk", {"k": 4}), ("identity", {})]


@pytest.mark.parametrize("name,params", RANDOMIZED)
def test_determinism_batch_and_client_invariance(name, params):
    comp = make_compressor(name, **params)
    X = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    seeds = torch.tensor([5, 9, 11, 2, 7, 100])
    Y, bits = comp.compress(X, seeds, 4)
    Y2, _ = comp.compress(X.clone(), seeds.clone(), 4)
    assert torch.equal(Y, Y2)
    for r in range(6):  # alone vs in the batch
        Yr, br = comp.compress(X[r:r + 1], seeds[r:r + 1], 4)
        assert torch.equal(Yr[0], Y[r]) and torch.equal(br[0], bits[r])
    # client j's output depends on its own index, not on how many clients there are
    Y1, _ = comp.compress(X[:, :1], seeds, 4)
    assert torch.equal(Y1[:, 0], Y[:, 0])
    # other leading layouts: (R, m, n) and (R, 2, 3, m, n)
    Yflat, _ = comp.compress(X[:, 0], seeds, 4)
    assert torch.equal(Yflat, Y[:, 0])
    Y23, b23 = comp.compress(torch.stack([X, X], 1), seeds, 4)
    assert Y23.shape == (6, 2, 3, 4, 5) and b23.shape == (6, 2, 3)
    assert torch.equal(Y23[:, 0], Y)


@pytest.mark.parametrize("name,params", RANDOMIZED[:3])
def test_randomness_per_client_step_and_sub(name, params):
    comp = make_compressor(name, **params)
    X = torch.randn(1, 1, 4, 5, dtype=torch.float64).expand(1, 2, 4, 5).contiguous()
    Y, _ = comp.compress(X, [3], 0)
    assert not torch.equal(Y[:, 0], Y[:, 1])  # the two clients draw independently
    assert not torch.equal(Y, comp.compress(X, [3], 1)[0])
    assert not torch.equal(Y, comp.compress(X, [3], 0, sub=1)[0])
    assert not torch.equal(Y, comp.compress(X, [4], 0)[0])


def test_randk_selects_each_subset_uniformly():
    # d = 4, k = 2: each of the 6 subsets with probability 1/6
    comp = make_compressor("randk", k=2)
    Y, _ = _draws(comp, torch.ones(2, 2, dtype=torch.float64), draws=12000)
    code = ((Y != 0).reshape(-1, 4).to(torch.int64) * torch.tensor([1, 2, 4, 8])).sum(-1)
    counts = torch.bincount(code, minlength=16)[[3, 5, 6, 9, 10, 12]].to(torch.float64)
    assert int(counts.sum()) == 12000
    se = math.sqrt(12000 * (1 / 6) * (5 / 6))
    assert bool((torch.abs(counts - 2000) <= Z * se).all())


def test_zero_block_and_float32():
    X = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    for name, params in RANDOMIZED:
        Y, _ = make_compressor(name, **params).compress(X, torch.arange(2), 0)
        assert torch.equal(Y, X)
    X32 = torch.randn(2, 2, 3, 3, dtype=torch.float32)
    for name, params in RANDOMIZED:
        Y, bits = make_compressor(name, **params).compress(X32, torch.arange(2), 0)
        assert Y.dtype == torch.float32 and bits.dtype == torch.float64


def test_constants_with_bound_dimension():
    assert make_compressor("randk", k=5, d=30).omega == pytest.approx(5.0)
    assert make_compressor("topk", k=5).bind(30).alpha == pytest.approx(1 / 6)
    assert make_compressor("dither", s=2, d=16).omega == pytest.approx(2.0)  # min(4, 2)
    assert math.isnan(make_compressor("randk", k=5).omega)  # unknown until d is known
    assert make_compressor("topk", k=5).omega is None and make_compressor("randk", k=2).alpha is None
    assert not make_compressor("topk", k=1).unbiased and make_compressor("natural").unbiased


@pytest.mark.parametrize("name,params,field", [
    ("randk", {"k": 0}, "compressor.k"),
    ("topk", {"k": -1}, "compressor.k"),
    ("randk", {"k": 2.5}, "compressor.k"),
    ("randk", {}, "compressor.k"),
    ("dither", {"s": 0}, "compressor.s"),
    ("dither", {"s": True}, "compressor.s"),
    ("dither", {"k": 3, "s": 2}, "compressor.k"),
    ("natural", {"float_bits": 8}, "compressor.float_bits"),
    ("identity", {"float_bits": 0}, "compressor.float_bits"),
    ("topk", {"k": 40, "d": 30}, "compressor.k"),
    ("lowrank", {}, "compressor"),
])
def test_bad_parameters(name, params, field):
    with pytest.raises(ValueError, match=field) as info:
        make_compressor(name, **params)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["randk", "topk"])
def test_k_larger_than_block_fails_at_call(name):
    comp = make_compressor(name, k=31)
    with pytest.raises(ValueError, match=r"compressor\.k: .*d = 30"):
        comp.compress(torch.zeros(1, 2, 6, 5, dtype=torch.float64), [0], 0)


def test_bad_seeds_shape():
    with pytest.raises(ValueError, match="seeds"):
        make_compressor("natural").compress(torch.zeros(3, 2, 2, 2), [0, 1], 0)


def test_make_compressor_refuses_bad_names_and_parameters():
    """The names and parameters come from the registered configurations (CompressorConf
    fields): every built-in builds with its own keys; an unknown name, a key it does not
    take and a missing one are refused with one line naming the field."""
    for name, params in (("identity", {}), ("randk", {"k": 2}), ("randk_unscaled", {"k": 2}), ("topk", {"k": 2}),
                         ("dither", {"s": 2}), ("natural", {})):
        assert make_compressor(name, **params) is not None
    with pytest.raises(ValueError, match=r"^compressor: unknown name 'randq'"):
        make_compressor("randq")
    with pytest.raises(ValueError, match=r"^compressor\.s: not a parameter of topk"):
        make_compressor("topk", k=2, s=3)
    with pytest.raises(ValueError, match=r"^compressor\.k: required by randk"):
        make_compressor("randk")
