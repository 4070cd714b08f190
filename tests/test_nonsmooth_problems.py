"""Non-smooth problems: subgradient inequality, f(W*) = f*, f >= f*, L0 bounds,
minibatch subgradients, batch invariance, .to(), bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.problems.nonsmooth import L1Regression, MaxAffine, make_nonsmooth_problem

TOL = 1e-12


def _problems():
    return [make_nonsmooth_problem("l1", m=6, n=5, seed=1),
            make_nonsmooth_problem("maxaffine", m=6, n=5, seed=2),
            make_nonsmooth_problem("l1", m=3, n=2, n_samples=6, seed=3),
            make_nonsmooth_problem("maxaffine", m=2, n=3, n_pieces=7, seed=4, f_star=-2.5)]


PROBLEMS = _problems()
IDS = [f"{p.name}-{p.shape[0]}x{p.shape[1]}" for p in PROBLEMS]


def _points(prob, R, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    m, n = prob.shape
    return prob.W_star + scale * torch.randn(R, m, n, generator=g, dtype=torch.float64)


def _inner(X, Y):
    return (X * Y).sum((-2, -1))


@pytest.mark.parametrize("prob", PROBLEMS, ids=IDS)
def test_constants_and_interface(prob):
    m, n = prob.shape
    assert math.isnan(prob.L) and prob.mu is None and prob.L_avg is None and prob.L_max is None
    assert prob.n_clients is None and prob.sigma2 is None
    assert prob.W_star.shape == (m, n) and prob.W0.shape == (m, n)
    assert prob.f_inf == prob.f_star and prob.L0 > 0
    W = _points(prob, 3, 0)
    assert prob.loss(W).shape == (3,) and prob.subgradient(W).shape == (3, m, n)
    assert torch.equal(prob.grad(W), prob.subgradient(W))


@pytest.mark.parametrize("prob", PROBLEMS, ids=IDS)
def test_optimum_exact(prob):
    assert float(prob.loss(prob.W_star[None])[0]) == prob.f_star
    assert float(prob.loss(prob.W0[None])[0]) > prob.f_star


@pytest.mark.parametrize("prob", PROBLEMS, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31), scale=st.sampled_from([1e-6, 1e-2, 1.0, 100.0]))
def test_subgradient_inequality_and_bounds(prob, seed, scale):
    R = 64
    W = _points(prob, R, seed, scale)
    V = _points(prob, R, seed + 1, scale)
    fW, fV, g = prob.loss(W), prob.loss(V), prob.subgradient(W)
    # f(V) >= f(W) + <g, V - W> (up to rounding relative to the magnitudes involved)
    slack = TOL * (1.0 + fW.abs() + fV.abs() + torch.linalg.norm(g.reshape(R, -1), dim=1)
                   * torch.linalg.norm((V - W).reshape(R, -1), dim=1))
    assert bool((fV >= fW + _inner(g, V - W) - slack).all())
    # at W*: f(V) >= f* + <g*, V - W*> for the returned subgradient at the optimum
    g_star = prob.subgradient(prob.W_star[None])
    assert bool((fV >= prob.f_star + _inner(g_star, V - prob.W_star) - slack).all())
    assert bool((fW >= prob.f_star).all()) and bool((fV >= prob.f_star).all())
    norms = torch.linalg.norm(g.reshape(R, -1), dim=1)
    assert bool((norms <= prob.L0 * (1 + TOL)).all())


def test_l0_bounds():
    l1, ma = PROBLEMS[0], PROBLEMS[1]
    A = l1.A
    assert l1.L0 == pytest.approx(min(float(torch.linalg.norm(A, dim=1).mean()),
                                      float(torch.linalg.matrix_norm(A, ord=2)) / math.sqrt(A.shape[0])))
    # any s in [-1, 1]^N (the whole subdifferential's range) stays below L0
    g = torch.Generator().manual_seed(0)
    s = torch.cat([torch.rand(500, A.shape[0], generator=g, dtype=torch.float64) * 2 - 1,
                   torch.sign(torch.randn(500, A.shape[0], generator=g, dtype=torch.float64))])
    assert float(torch.linalg.norm(s @ A / A.shape[0], dim=1).max()) <= l1.L0
    assert l1.L0_sample == pytest.approx(float(torch.linalg.norm(A, dim=1).max()))
    # max-affine: L0 is attained by the subgradient near the point where the longest piece wins
    j = int(torch.linalg.norm(ma.A, dim=1).argmax())
    W = ma.W_star + 1e3 * ma.A[j].reshape(ma.shape)
    assert float(torch.linalg.norm(ma.subgradient(W[None]))) == pytest.approx(ma.L0)


def test_maxaffine_certificate():
    ma = PROBLEMS[1]
    assert bool((ma.weights > 0).all()) and float(ma.weights.sum()) == pytest.approx(1.0)
    assert float(torch.linalg.norm(ma.weights @ ma.A)) < 1e-12  # 0 in conv{A_j}
    # all pieces active at W*: <A_j, W*> + c_j = f*
    vals = ma.A @ ma.W_star.reshape(-1) + ma.c
    torch.testing.assert_close(vals, torch.full_like(vals, ma.f_star), rtol=0, atol=1e-12)
    # the explicit form max_j(<A_j, W> + c_j) equals loss
    W = _points(ma, 5, 3)
    explicit = (W.reshape(5, -1) @ ma.A.T + ma.c).max(-1).values
    torch.testing.assert_close(ma.loss(W), explicit, rtol=1e-12, atol=1e-12)


def test_l1_planted_data():
    l1 = PROBLEMS[0]
    assert l1.n_samples == 2 * 30 and l1.A.shape == (60, 30)
    W = _points(l1, 4, 9)
    explicit = (W.reshape(4, -1) @ l1.A.T - l1.b).abs().mean(-1)
    torch.testing.assert_close(l1.loss(W), explicit, rtol=1e-12, atol=1e-12)
    assert int(torch.linalg.matrix_rank(l1.A)) == 30  # unique minimiser


@pytest.mark.parametrize("prob", PROBLEMS, ids=IDS)
def test_batch_invariance(prob):
    W = _points(prob, 7, 5)
    f, g = prob.loss(W), prob.subgradient(W)
    for r in range(7):
        assert torch.equal(prob.loss(W[r:r + 1])[0], f[r])
        assert torch.equal(prob.subgradient(W[r:r + 1])[0], g[r])


def test_l1_minibatch_subgradients():
    l1 = PROBLEMS[2]
    N = l1.n_samples
    W = _points(l1, 3, 7)
    full = l1.minibatch_grad(W, torch.arange(N).expand(3, N))
    torch.testing.assert_close(full, l1.subgradient(W), rtol=1e-12, atol=1e-13)
    single = torch.stack([l1.minibatch_grad(W, torch.full((3, 1), i)) for i in range(N)])  # (N, R, m, n)
    torch.testing.assert_close(single.mean(0), l1.subgradient(W), rtol=1e-12, atol=1e-13)
    assert float(torch.linalg.norm(single.reshape(N * 3, -1), dim=1).max()) <= l1.L0_sample * (1 + TOL)
    idx = torch.tensor([[0, 2], [1, 1], [5, 3]])
    mb = l1.minibatch_grad(W, idx)
    for r in range(3):  # batch invariance of the minibatch oracle
        assert torch.equal(l1.minibatch_grad(W[r:r + 1], idx[r:r + 1])[0], mb[r])
    with pytest.raises(ValueError, match="not a finite sum"):
        PROBLEMS[1].minibatch_grad(W, idx)


def test_determinism_and_given_w0():
    a, b = make_nonsmooth_problem("l1", seed=7), make_nonsmooth_problem("l1", seed=7)
    assert torch.equal(a.A, b.A) and torch.equal(a.W_star, b.W_star) and torch.equal(a.W0, b.W0)
    c = make_nonsmooth_problem("l1", seed=8)
    assert not torch.equal(a.A, c.A)
    W0 = torch.zeros(6, 5)
    d = make_nonsmooth_problem("maxaffine", W0=W0)
    assert d.W0.dtype == torch.float64 and torch.equal(d.W0, W0.double())


@pytest.mark.parametrize("prob", PROBLEMS[:2], ids=IDS[:2])
def test_to_dtype_and_device(prob):
    p32 = prob.to("cpu", torch.float32)
    assert p32.A.dtype == torch.float32 and p32.W_star.dtype == torch.float32 and p32.W0.dtype == torch.float32
    assert prob.A.dtype == torch.float64  # the original is untouched
    assert p32.f_star == prob.f_star and p32.L0 == prob.L0
    W = _points(prob, 2, 1)
    torch.testing.assert_close(p32.loss(W.float()).double(), prob.loss(W), rtol=1e-4, atol=1e-4)
    assert prob.to("cpu", torch.float64).loss(W).dtype == torch.float64


@pytest.mark.parametrize("name,params,field", [
    ("l1", {"m": 0}, "problem.m"),
    ("l1", {"n": 2.0}, "problem.n"),
    ("l1", {"n_samples": 29}, "problem.n_samples"),
    ("l1", {"seed": -1}, "problem.seed"),
    ("l1", {"W0": torch.zeros(5, 6)}, "problem.W0"),
    ("l1", {"W0": torch.full((6, 5), float("nan"))}, "problem.W0"),
    ("l1", {"n_pieces": 40}, "problem.n_pieces"),
    ("maxaffine", {"n_pieces": 30}, "problem.n_pieces"),
    ("maxaffine", {"f_star": float("inf")}, "problem.f_star"),
    ("maxaffine", {"m": True}, "problem.m"),
    ("hinge", {}, "problem"),
])
def test_bad_inputs(name, params, field):
    with pytest.raises(ValueError, match=field) as info:
        make_nonsmooth_problem(name, **params)
    assert "\n" not in str(info.value)


def test_classes_directly():
    assert isinstance(make_nonsmooth_problem("l1"), L1Regression)
    assert isinstance(MaxAffine(2, 2, n_pieces=5), MaxAffine)
    assert "maxaffine" in repr(MaxAffine(2, 2))
