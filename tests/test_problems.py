"""Every problem against the oracle protocol: autograd, finite-sum and client structure,
constants, batch invariance, dtype/device moves, numpy make_regression vs scikit-learn,
and one-line errors for bad input. All at small ('ci') size."""
import math

import numpy as np
import pytest
import torch

from experiments.problems import PROBLEMS, datagen, make_problem
from experiments.problems.quadratic import Quadratic

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny LAPACK/BLAS calls on busy shared cores are far faster single-threaded."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


# (id, name, params): the problems every protocol test runs on
CASES = [
    ("quadratic", "quadratic", dict(m=3, n=4, mu=0.5, L=7.0, seed=2)),
    ("quadratic-linear", "quadratic", dict(m=2, n=5, mu=0.1, L=3.0, seed=4, spectrum="linear")),
    ("isotropic", "isotropic", dict(m=3, n=4, L=2.5, seed=1)),
    ("quadratic-clients", "quadratic", dict(m=3, n=2, mu=0.5, L=4.0, seed=1, n_samples=12, noise=0.5, n_clients=3,
                                            heterogeneity=0.5)),
    ("counterexample", "counterexample", {}),
    ("logistic", "logistic", dict(m=3, n=4, n_samples=60, lam=0.05, seed=1)),
    ("logistic-clients", "logistic", dict(m=3, n=4, n_samples=62, lam=0.05, seed=1, n_clients=4, heterogeneity=0.5)),
    ("linreg", "linreg", dict(size="ci", cache_dir=False)),
    ("l1", "l1", dict(m=3, n=4, n_samples=30, seed=0)),
    ("maxaffine", "maxaffine", dict(m=3, n=4, seed=0)),
]
SMOOTH = {"quadratic", "quadratic-linear", "isotropic", "quadratic-clients", "counterexample", "logistic", "logistic-clients", "linreg"}
_BUILT = {}


def problem(case_id):
    if case_id not in _BUILT:
        _, name, params = next(c for c in CASES if c[0] == case_id)
        _BUILT[case_id] = make_problem(name, **params)
    return _BUILT[case_id]


def ids(subset=None):
    return [c[0] for c in CASES if subset is None or c[0] in subset]


def random_W(prob, R=3, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    m, n = prob.shape
    return prob.W0 + scale * torch.randn(R, m, n, generator=gen, dtype=F64)


# ----------------------------------------------------------- independent per-sample losses

def _ref_sample_losses(prob, W):
    """f_i(W_r) for every run and sample, (R, N), written from the formulas (not the oracle)."""
    R = W.shape[0]
    if prob.name == "logistic":
        Z = torch.einsum("rcd,nd->rnc", W, prob.X)
        ce = torch.logsumexp(Z, -1) - Z.gather(-1, prob.y.expand(R, -1)[..., None])[..., 0]
        return ce + 0.5 * prob.lam * (W * W).sum((-2, -1))[:, None]
    if prob.name == "quadratic":  # least squares: y = A w* + eps
        y = prob.A @ prob.W_star.reshape(-1) + prob.eps
        return 0.5 * (W.reshape(R, -1) @ prob.A.T - y) ** 2
    if prob.name == "linreg":
        x = W.reshape(R, -1)
        res = x @ prob.A.T - prob.b
        return 0.5 * res ** 2 + prob.lam * (x ** 2 / (1 + x ** 2)).sum(-1, keepdim=True)
    if prob.name == "l1":
        return (W.reshape(R, -1) @ prob.A.T - prob.b).abs()
    raise AssertionError(prob.name)


FINITE_SUMS = ["logistic", "logistic-clients", "linreg", "l1", "quadratic-clients"]


# ----------------------------------------------------------------------- protocol tests

@pytest.mark.parametrize("case", ids())
def test_interface_and_dtype(case):
    prob = problem(case)
    m, n = prob.shape
    assert isinstance(prob.name, str) and m >= 1 and n >= 1
    assert prob.W0.shape == (m, n) and prob.W0.dtype == F64
    for attr in ("L", "mu", "L_avg", "L_max", "f_star", "f_inf", "W_star", "L0", "n_samples", "n_clients", "sigma2"):
        assert hasattr(prob, attr), attr
    assert isinstance(prob.f_star, float) and isinstance(prob.f_inf, float)
    if not math.isnan(prob.f_star):
        assert prob.f_inf == prob.f_star
    if prob.W_star is not None:
        assert prob.W_star.shape == (m, n)
    W = random_W(prob)
    assert prob.loss(W).shape == (3,) and prob.grad(W).shape == (3, m, n)
    if hasattr(prob, "loss_and_grad"):
        lo, g = prob.loss_and_grad(W)
        assert torch.equal(lo, prob.loss(W)) and torch.equal(g, prob.grad(W))


@pytest.mark.parametrize("case", ids())
def test_grad_matches_autograd(case):
    prob = problem(case)
    W = random_W(prob, R=4, seed=1).requires_grad_(True)
    prob.loss(W).sum().backward()
    torch.testing.assert_close(prob.grad(W.detach()), W.grad, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("case", FINITE_SUMS)
def test_finite_sum_structure_and_minibatch_grad(case):
    """loss = mean of the f_i written from the formulas; minibatch_grad = mean of the
    autograd gradients of those f_i over idx[r]; the full index set gives grad."""
    prob = problem(case)
    N = prob.n_samples
    W = random_W(prob, R=3, seed=2)
    torch.testing.assert_close(_ref_sample_losses(prob, W).mean(-1), prob.loss(W), rtol=1e-11, atol=1e-11)
    gen = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(N, generator=gen)[:7] for _ in range(3)])
    Wg = W.clone().requires_grad_(True)
    _ref_sample_losses(prob, Wg).gather(1, idx).mean(-1).sum().backward()
    torch.testing.assert_close(prob.minibatch_grad(W, idx), Wg.grad, rtol=1e-10, atol=1e-11)
    full = torch.arange(N).expand(3, N)
    torch.testing.assert_close(prob.minibatch_grad(W, full), prob.grad(W), rtol=1e-10, atol=1e-11)
    with_repeats = torch.tensor([[0, 0, 1], [2, 2, 2], [N - 1, 0, N - 1]])
    Wg.grad = None
    _ref_sample_losses(prob, Wg).gather(1, with_repeats).mean(-1).sum().backward()
    torch.testing.assert_close(prob.minibatch_grad(W, with_repeats), Wg.grad, rtol=1e-10, atol=1e-11)


def test_client_grads_match_autograd_and_average_to_grad():
    prob = problem("logistic-clients")
    K = prob.n_clients
    W = random_W(prob, R=2, seed=4)
    cg = prob.client_grads(W)
    assert cg.shape == (2, K) + prob.shape
    # each client's f_k: the mean of its shard's f_i (the rows it owns), regulariser included
    per_sample = _ref_sample_losses(prob, W.clone().requires_grad_(True))
    shard = prob.n_samples // K
    for k in range(K):
        Wg = W.clone().requires_grad_(True)
        fk = _ref_sample_losses(prob, Wg)[:, k * shard:(k + 1) * shard].mean(-1)
        torch.testing.assert_close(prob.client_losses(W)[:, k], fk.detach(), rtol=1e-11, atol=1e-12)
        fk.sum().backward()
        torch.testing.assert_close(cg[:, k], Wg.grad, rtol=1e-10, atol=1e-11)
    assert per_sample.shape[1] == K * shard
    # the f_k are equally weighted (equal shards): their mean is f and its gradient
    torch.testing.assert_close(cg.mean(1), prob.grad(W), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(prob.client_losses(W).mean(1), prob.loss(W), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("case", ids())
def test_batch_of_runs_equals_runs_one_at_a_time(case):
    prob = problem(case)
    W = random_W(prob, R=5, seed=5)
    loss, grad = prob.loss(W), prob.grad(W)
    extra = []
    if prob.n_samples:
        idx = torch.randint(0, prob.n_samples, (5, 4), generator=torch.Generator().manual_seed(6))
        extra.append((lambda w, k: prob.minibatch_grad(w, idx[k:k + 1]), prob.minibatch_grad(W, idx)))
    if prob.n_clients:
        extra.append((lambda w, k: prob.client_grads(w), prob.client_grads(W)))
    for k in range(5):
        one = W[k:k + 1]
        assert torch.equal(prob.loss(one)[0], loss[k]) and torch.equal(prob.grad(one)[0], grad[k])
        for single, batched in extra:
            assert torch.equal(single(one, k)[0], batched[k])


# ------------------------------------------------------------------------------ constants

def _hessian(prob, W):
    m, n = prob.shape
    return torch.autograd.functional.hessian(lambda x: prob.loss(x.reshape(1, m, n))[0], W.reshape(-1))


@pytest.mark.parametrize("case", ids(SMOOTH))
def test_L_bounds_the_hessian(case):
    prob = problem(case)
    points = [prob.W0, torch.zeros(prob.shape, dtype=F64)] + list(random_W(prob, R=3, seed=7))
    if prob.W_star is not None:
        points.append(prob.W_star)
    if case == "linreg":  # where the regulariser's curvature is largest (x = 0) and smallest (|x| = 1)
        points.append(torch.full(prob.shape, 1.0, dtype=F64))
    top = 0.0
    for P in points:
        eig = torch.linalg.eigvalsh(_hessian(prob, P))
        top = max(top, float(eig.abs().max()))
        if prob.mu is not None:
            assert eig[0].item() >= prob.mu * (1 - 1e-9) - 1e-12
    assert top <= prob.L * (1 + 1e-9)
    if case in ("quadratic", "quadratic-linear", "counterexample", "isotropic"):
        assert top == pytest.approx(prob.L, rel=1e-10)  # exact constants


@pytest.mark.parametrize("case", ids({"quadratic", "quadratic-linear", "isotropic", "counterexample"}))
def test_quadratic_constants_are_exact(case):
    prob = problem(case)
    H = _hessian(prob, prob.W0)
    eig = torch.linalg.eigvalsh(H)
    assert eig[0].item() == pytest.approx(prob.mu, rel=1e-10) and eig[-1].item() == pytest.approx(prob.L, rel=1e-10)
    torch.testing.assert_close(H, prob.hessian(), rtol=1e-12, atol=1e-12)
    if case == "quadratic-linear":
        torch.testing.assert_close(eig, torch.linspace(prob.mu, prob.L, eig.numel(), dtype=F64), rtol=1e-10, atol=1e-12)
    if case == "quadratic":
        ref = torch.logspace(math.log10(prob.mu), math.log10(prob.L), eig.numel(), dtype=F64)
        torch.testing.assert_close(eig, ref, rtol=1e-10, atol=1e-12)
    assert prob.loss(prob.W_star[None]).item() == 0.0 == prob.f_star
    assert prob.grad(prob.W_star[None]).abs().max().item() == 0.0


@pytest.mark.parametrize("case", FINITE_SUMS[:3])
def test_sample_smoothness_constants(case):
    """mean_i ||g_i(W) - g_i(V)||^2 <= L_avg^2 ||W - V||^2 and max_i ||g_i(W) - g_i(V)|| <=
    L_max ||W - V||, on far and near pairs; L_avg <= L_max; f_i's Hessians bounded by L_max."""
    prob = problem(case)
    N = prob.n_samples
    every = torch.arange(N)[:, None]

    def per_sample(W):
        return prob.minibatch_grad(W.expand(N, *prob.shape).contiguous(), every)

    assert prob.L_avg <= prob.L_max * (1 + 1e-12)
    for k, scale in enumerate((3.0, 1.0, 1e-3)):
        W, V = random_W(prob, R=2, seed=10 + k, scale=scale)
        diff = (per_sample(W) - per_sample(V)).reshape(N, -1)
        dist = torch.linalg.norm(W - V)
        assert (diff * diff).sum(-1).mean() <= prob.L_avg ** 2 * dist ** 2 * (1 + 1e-9)
        assert torch.linalg.norm(diff, dim=-1).max() <= prob.L_max * dist * (1 + 1e-9)
    m, n = prob.shape
    for i in (0, N // 2, N - 1):
        H = torch.autograd.functional.hessian(
            lambda x: _ref_sample_losses(prob, x.reshape(1, m, n))[0, i], prob.W0.reshape(-1))
        assert torch.linalg.eigvalsh(H).abs().max() <= prob.L_max * (1 + 1e-9)


@pytest.mark.parametrize("case", ["logistic", "logistic-clients"])
def test_logistic_minimiser(case):
    prob = problem(case)
    assert torch.linalg.norm(prob.grad(prob.W_star[None])).item() < 1e-9
    assert prob.loss(prob.W_star[None]).item() == pytest.approx(prob.f_star, rel=1e-14, abs=1e-15)
    assert prob.mu == prob.lam and prob.L == pytest.approx(
        0.5 * torch.linalg.eigvalsh(prob.X.T @ prob.X / prob.n_samples)[-1].item() + prob.lam, rel=1e-12)
    W = random_W(prob, R=6, seed=8, scale=0.3)
    assert (prob.loss(W) >= prob.f_star).all()
    # strong convexity: f(W) - f* >= mu/2 ||W - W*||^2 (and PL: ||grad||^2 >= 2 mu (f - f*))
    gap = prob.loss(W) - prob.f_star
    assert (gap >= 0.5 * prob.mu * ((W - prob.W_star) ** 2).sum((-2, -1)) * (1 - 1e-9)).all()
    assert ((prob.grad(W) ** 2).sum((-2, -1)) >= 2 * prob.mu * gap * (1 - 1e-9)).all()


def test_linreg_constants_and_lower_bound():
    prob = problem("linreg")
    A = prob.A
    N = prob.n_samples
    lam = torch.linalg.eigvalsh(A.T @ A / N)[-1].item()
    assert prob.lam == pytest.approx(lam, rel=1e-12) and prob.L == pytest.approx(3 * lam, rel=1e-12)
    assert prob.mu is None and math.isnan(prob.f_star) and prob.W_star is None
    assert prob.shape == (8, 8) and A.shape == (200, 64) and N == 200
    W = torch.cat([random_W(prob, R=4, seed=9), prob.W0[None]])
    assert (prob.loss(W) >= prob.f_inf).all()
    # the Gram-matrix loss equals the residual form of f
    ref = _ref_sample_losses(prob, W).mean(-1)
    torch.testing.assert_close(prob.loss(W), ref, rtol=1e-11, atol=1e-11)


def test_nonsmooth_subgradients_bounded_by_L0():
    for case in ("l1", "maxaffine"):
        prob = problem(case)
        W = random_W(prob, R=8, seed=11, scale=3.0)
        assert torch.linalg.norm(prob.grad(W).reshape(8, -1), dim=-1).max() <= prob.L0 * (1 + 1e-12)
        assert prob.loss(prob.W_star[None]).item() == pytest.approx(prob.f_star, abs=1e-12)
        assert (prob.loss(W) >= prob.f_star - 1e-12).all()


# ---------------------------------------------------------------------- quadratic specifics

def test_quadratic_seeding_init_and_isotropic_at_scale():
    a, b = make_problem("quadratic", m=3, n=4, seed=5), make_problem("quadratic", m=3, n=4, seed=5)
    assert torch.equal(a.W0, b.W0) and torch.equal(a.W_star, b.W_star) and torch.equal(a.Q, b.Q)
    assert not torch.equal(a.W0, a.W_star) and a.W0.abs().min() > 0  # random from the seed
    c = make_problem("quadratic", m=3, n=4, seed=6)
    assert not torch.equal(a.W_star, c.W_star)
    z = make_problem("quadratic", m=3, n=4, seed=5, init="zeros")
    assert torch.equal(z.W0, torch.zeros(3, 4, dtype=F64)) and torch.equal(z.W_star, a.W_star)
    big = make_problem("isotropic", m=400, n=300, L=3.0)
    assert big.Q is None and big.mu == big.L == 3.0 and big.name == "isotropic"
    W = torch.randn(2, 400, 300, dtype=F64)
    torch.testing.assert_close(big.loss(W), 1.5 * ((W - big.W_star) ** 2).sum((-2, -1)), rtol=1e-13, atol=0)
    torch.testing.assert_close(big.grad(W), 3.0 * (W - big.W_star), rtol=0, atol=0)


def test_counterexample_is_rac_loras():
    prob = problem("counterexample")
    assert prob.shape == (3, 3) and prob.L == 10.0 and prob.mu == 1.0
    torch.testing.assert_close(prob.Q, torch.diag(torch.tensor([10.0] + [1.0] * 8, dtype=F64)))
    assert torch.equal(prob.W0, torch.zeros(3, 3, dtype=F64))
    assert torch.linalg.matrix_rank(prob.W_star).item() == 3
    # every rank-1 point is at least 16 above f*: the best rank-1 approximation of W*
    u = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    best_rank1 = (prob.W_star @ u)[:, None] * u[None, :]
    assert prob.loss(best_rank1[None]).item() >= 16.0


# --------------------------------------------------------------------------- moves, copies

@pytest.mark.parametrize("case", ids())
def test_to_returns_a_new_problem(case):
    prob = problem(case)
    p32 = prob.to("cpu", torch.float32)
    assert p32 is not prob and p32.W0.dtype == torch.float32 and prob.W0.dtype == F64
    W = random_W(prob, R=2, seed=12)
    assert p32.grad(W.float()).dtype == torch.float32
    torch.testing.assert_close(p32.loss(W.float()).double(), prob.loss(W), rtol=2e-4, atol=2e-4)
    for attr in ("L", "mu", "L_avg", "L_max", "f_star", "f_inf", "L0", "n_samples", "n_clients"):
        a, b = getattr(p32, attr), getattr(prob, attr)
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), attr
    assert p32.shape == prob.shape


# ----------------------------------------------------------- scikit-learn's generators

@pytest.mark.parametrize("kw", [
    dict(n_samples=40, n_features=12, n_informative=12, noise=20.0, bias=0.0, tail_strength=0.8,
         effective_rank=4, random_state=42),
    dict(n_samples=12, n_features=30, n_informative=15, noise=50.0, bias=10.0, tail_strength=0.9,
         effective_rank=3, random_state=84),
    dict(n_samples=25, n_features=10, n_informative=4, noise=1.5, bias=-2.0, random_state=0),
])
def test_numpy_make_regression_equals_sklearn(kw):
    sk = pytest.importorskip("sklearn.datasets")
    X, y, coef = sk.make_regression(coef=True, **kw)
    Xn, yn, cn = datagen.make_regression(coef=True, **kw)
    assert np.array_equal(X, Xn) and np.array_equal(y, yn) and np.array_equal(coef, cn)
    Xt, yt, ct = datagen.make_regression(coef=True, device="cpu", **kw)  # the torch path
    assert np.abs(Xt.numpy() - X).max() <= 1e-12 * np.abs(X).max()
    assert np.abs(yt.numpy() - y).max() <= 1e-12 * np.abs(y).max() and np.array_equal(ct.numpy(), coef)


# ------------------------------------------------------------------------------ bad input

BAD = [
    ("nonexistent", {}, "problem"),
    ("quadratic", dict(m=0), "problem.m"),
    ("quadratic", dict(n=2.5), "problem.n"),
    ("quadratic", dict(mu=3.0, L=2.0), "problem.mu"),
    ("quadratic", dict(mu=0.0), "problem.mu"),
    ("quadratic", dict(L=float("nan")), "problem.L"),
    ("quadratic", dict(spectrum="cubic"), "problem.spectrum"),
    ("quadratic", dict(init="ones"), "problem.init"),
    ("quadratic", dict(m=80, n=80, mu=1.0, L=2.0), "problem.m"),
    ("quadratic", dict(bogus=1), "problem.quadratic"),
    ("isotropic", dict(L=-1.0), "problem.L"),
    ("counterexample", dict(scale=0.0), "problem.scale"),
    ("logistic", dict(m=1), "problem.m"),
    ("logistic", dict(lam=0.0), "problem.lam"),
    ("logistic", dict(n_samples=60, n_clients=61), "problem.n_clients"),
    ("logistic", dict(n_clients=0), "problem.n_clients"),
    ("logistic", dict(heterogeneity=1.5), "problem.heterogeneity"),
    ("logistic", dict(shift=float("inf")), "problem.shift"),
    ("linreg", dict(size="huge"), "problem.size"),
    ("linreg", dict(m=0), "problem.m"),
    ("linreg", dict(ft_noise=float("nan")), "problem.ft_noise"),
    ("linreg", dict(nope=1), "problem.nope"),
    ("l1", dict(m=0), "problem.m"),
]


@pytest.mark.parametrize("name,params,field", BAD, ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_fails_early_with_one_line_naming_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}[:. ]") as err:
        make_problem(name, **params)
    assert "\n" not in str(err.value)


def test_non_finite_data_rejected():
    good = torch.zeros(2, 3, dtype=F64)
    bad = good.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="^problem.W0"):
        Quadratic(name="q", W_star=bad, W0=good, L=1.0, mu=1.0)
    with pytest.raises(ValueError, match="^problem.W0"):
        Quadratic(name="q", W_star=good, W0=torch.zeros(3, 2, dtype=F64), L=1.0, mu=1.0)


def test_registry_names():
    assert {"quadratic", "counterexample", "logistic", "linreg", "l1", "maxaffine", "isotropic"} <= set(PROBLEMS)
    assert make_problem("l1").name == "l1" and make_problem("maxaffine").name == "maxaffine"
