"""Paper linreg problem: numpy/torch generators equal scikit-learn's, the factored
pretraining moments equal the explicit ones, oracle vs autograd, L bounds the Hessian,
W0 stationary for the pretraining problem, batch invariance, cache, bad input."""
import math
import os

import numpy as np
import pytest
import torch

from experiments.problems import datagen, linreg, linreg_build
from experiments.problems.linreg import LinReg, make_linreg

sk_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small LAPACK calls on busy shared cores are far faster single-threaded."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prob():
    return make_linreg("ci", cache_dir=False)


REGRESSION_CASES = [
    dict(n_samples=50, n_features=20, n_informative=10, noise=3.0, bias=2.0, effective_rank=4,
         tail_strength=0.7, random_state=3),
    dict(n_samples=15, n_features=30, n_informative=40, noise=1.0, random_state=5),  # no effective_rank
    dict(n_samples=15, n_features=30, n_informative=12, effective_rank=3, noise=0.5, random_state=7, n_targets=2),
    dict(n_samples=40, n_features=16, n_informative=16, noise=0.0, effective_rank=2, tail_strength=0.0,
         random_state=11, shuffle=False),
]


def _relerr(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("kw", REGRESSION_CASES)
def test_numpy_make_regression_equals_sklearn(kw):
    X, y, coef = sk_datasets.make_regression(**kw, coef=True)
    Xn, yn, cn = datagen.make_regression(**kw, coef=True)
    assert np.array_equal(X, Xn) and np.array_equal(y, yn) and np.array_equal(coef, cn)


def test_numpy_make_low_rank_matrix_equals_sklearn():
    for kw in [dict(n_samples=30, n_features=20, effective_rank=5, tail_strength=0.3, random_state=1),
               dict(n_samples=10, n_features=25, effective_rank=2, tail_strength=0.9, random_state=2)]:
        ref = sk_datasets.make_low_rank_matrix(**kw)
        assert np.array_equal(ref, datagen.make_low_rank_matrix(**kw))
        assert _relerr(datagen.make_low_rank_matrix(**kw, device="cpu").numpy(), ref) < 1e-13
    rs = np.random.RandomState(9)  # a RandomState is consumed, as in scikit-learn
    rs2 = np.random.RandomState(9)
    assert np.array_equal(sk_datasets.make_low_rank_matrix(8, 6, random_state=rs),
                          datagen.make_low_rank_matrix(8, 6, random_state=rs2))
    assert rs.randint(1 << 30) == rs2.randint(1 << 30)


@pytest.mark.parametrize("kw", REGRESSION_CASES)
def test_torch_make_regression_matches_sklearn(kw):
    X, y, coef = sk_datasets.make_regression(**kw, coef=True)
    Xt, yt, ct = datagen.make_regression(**kw, coef=True, device="cpu")
    assert Xt.dtype == torch.float64 and tuple(Xt.shape) == X.shape and tuple(yt.shape) == y.shape
    assert _relerr(Xt.numpy(), X) < 1e-13 and _relerr(yt.numpy(), y) < 1e-13
    assert np.array_equal(ct.numpy(), coef)


@pytest.mark.parametrize("kw", [c for c in REGRESSION_CASES if c.get("effective_rank") and c.get("shuffle", True)])
def test_factored_design_matches_sklearn(kw):
    X, y, coef = sk_datasets.make_regression(**kw, coef=True)
    design, yf, cf = datagen.make_regression_factored(**kw)
    assert _relerr(design.dense().numpy(), X) < 1e-13 and _relerr(yf.numpy(), y) < 1e-13
    assert np.array_equal(cf.numpy(), coef)
    gen = np.random.RandomState(0)
    z, w = gen.randn(X.shape[1], 2), gen.randn(X.shape[0])
    assert _relerr(design.gram().numpy(), X.T @ X) < 1e-13
    assert _relerr(design.matvec(torch.from_numpy(z)).numpy(), X @ z) < 1e-13
    assert _relerr(design.rmatvec(torch.from_numpy(w)).numpy(), X.T @ w) < 1e-13


def _explicit_data(cfg):
    """The authors' pipeline with scikit-learn: make_regression + StandardScaler (pretrain,
    features and target), global rescale to mean/std (fine-tune)."""
    from sklearn.preprocessing import StandardScaler

    d = cfg["m"] * cfg["n"]
    Ap, bp = sk_datasets.make_regression(
        n_samples=cfg["pre_n_samples"], n_features=d, n_informative=cfg["pre_n_informative"],
        noise=cfg["pre_noise"], bias=cfg["pre_bias"], tail_strength=cfg["pre_tail_strength"],
        effective_rank=cfg["pre_effective_rank"], random_state=cfg["pre_seed"])
    Ap = StandardScaler().fit_transform(Ap)
    bp = StandardScaler().fit_transform(bp.reshape(-1, 1)).ravel()
    Af, bf = sk_datasets.make_regression(
        n_samples=cfg["ft_n_samples"], n_features=d, n_informative=cfg["ft_n_informative"],
        noise=cfg["ft_noise"], bias=cfg["ft_bias"], tail_strength=cfg["ft_tail_strength"],
        effective_rank=cfg["ft_effective_rank"], random_state=cfg["ft_seed"])
    Af = (Af - Af.mean()) / Af.std() * cfg["ft_std"] + cfg["ft_mean"]
    bf = (bf - bf.mean()) / bf.std() * cfg["ft_std"] + cfg["ft_mean"]
    return Ap, bp, Af, bf


def test_data_match_the_authors_pipeline(prob):
    cfg = prob.config
    Ap, bp, Af, bf = _explicit_data(cfg)
    N = cfg["pre_n_samples"]
    Q_pre, c_pre, bb_pre = linreg_build.pretrain_moments(cfg, "cpu", Ap.shape[1])
    assert _relerr(Q_pre.numpy(), Ap.T @ Ap / N) < 1e-12
    assert _relerr(c_pre.numpy(), Ap.T @ bp / N) < 1e-12
    assert bb_pre == pytest.approx(bp @ bp / (2 * N), rel=1e-12)
    assert _relerr(prob.A.numpy(), Af) < 1e-13 and _relerr(prob.b.numpy(), bf) < 1e-13
    Nf = cfg["ft_n_samples"]
    assert _relerr(prob.Q.numpy(), Af.T @ Af / Nf) < 1e-12 and _relerr(prob.c.numpy(), Af.T @ bf / Nf) < 1e-12
    assert torch.equal(prob.Q, prob.Q.T)
    assert prob.A.mean().item() == pytest.approx(1.0) and prob.A.std(correction=0).item() == pytest.approx(2.0)


def test_constants(prob):
    eig = torch.linalg.eigvalsh(prob.A.T @ prob.A / prob.n_samples)
    assert prob.lam == pytest.approx(float(eig[-1]), rel=1e-12) and prob.L == 3 * prob.lam
    Li = (prob.A ** 2).sum(-1) + 2 * prob.lam
    assert prob.L_max == pytest.approx(float(Li.max())) and prob.L_avg == pytest.approx(float(Li.pow(2).mean().sqrt()))
    assert prob.L_max >= prob.L_avg >= prob.L  # mean of ||a_i||^2 >= lambda_max(mean a_i a_i^T)
    assert prob.mu is None and math.isnan(prob.f_star) and prob.f_inf == 0.0 and prob.W_star is None
    assert prob.n_samples == 200 and prob.n_clients is None and prob.shape == (8, 8)
    assert prob.W0.shape == (8, 8) and prob.W0.dtype == torch.float64


def _points(prob, R, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return prob.W0 + scale * torch.randn((R,) + prob.shape, generator=g, dtype=torch.float64)


def _f_autograd(prob, x):
    """f at one vector x by the residual form, differentiable."""
    r = prob.A @ x - prob.b
    return 0.5 * (r @ r) / prob.n_samples + prob.lam * (x * x / (1 + x * x)).sum()


def test_oracle_matches_autograd(prob):
    W = _points(prob, 4, seed=1)
    loss, grad = prob.loss_and_grad(W)
    for r in range(W.shape[0]):
        x = W[r].reshape(-1).clone().requires_grad_(True)
        f = _f_autograd(prob, x)
        (g,) = torch.autograd.grad(f, x)
        assert float(loss[r]) == pytest.approx(float(f.detach()), rel=1e-11)
        assert torch.allclose(grad[r].reshape(-1), g, rtol=1e-10, atol=1e-10 * float(g.abs().max()))
    assert torch.equal(prob.grad(W), grad) and torch.equal(prob.loss(W), loss)
    assert torch.allclose(prob.loss_residual(W), loss, rtol=1e-11)
    assert float(prob.loss(prob.W0[None])[0]) >= prob.f_inf


def test_minibatch_grad_matches_autograd(prob):
    W = _points(prob, 3, seed=2)
    g = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(prob.n_samples, generator=g)[:7] for _ in range(3)])
    G = prob.minibatch_grad(W, idx)
    for r in range(3):
        x = W[r].reshape(-1).clone().requires_grad_(True)
        rows = idx[r]
        res = prob.A[rows] @ x - prob.b[rows]
        f = 0.5 * (res @ res) / len(rows) + prob.lam * (x * x / (1 + x * x)).sum()
        (ref,) = torch.autograd.grad(f, x)
        assert torch.allclose(G[r].reshape(-1), ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
    # the mean over all samples is the full gradient (both of the stated f)
    full = torch.arange(prob.n_samples).expand(3, -1)
    assert torch.allclose(prob.minibatch_grad(W, full), prob.grad(W), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="idx"):
        prob.minibatch_grad(W, idx[0])


def test_L_bounds_hessian(prob):
    d = prob.shape[0] * prob.shape[1]
    g = torch.Generator().manual_seed(4)
    points = [torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64),  # r'' = 2 and -1/2
              prob.W0.reshape(-1)] + [3 * torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3)]
    for x in points:
        H = torch.autograd.functional.hessian(lambda v: _f_autograd(prob, v), x)
        eig = torch.linalg.eigvalsh(0.5 * (H + H.T))
        assert float(eig.abs().max()) <= prob.L * (1 + 1e-12)
        assert float(eig[0]) >= -prob.lam / 2 * (1 + 1e-12)
        for i in (0, 17, prob.n_samples - 1):  # per-sample L_i = ||a_i||^2 + 2 lam
            Hi = torch.autograd.functional.hessian(
                lambda v: 0.5 * (prob.A[i] @ v - prob.b[i]) ** 2 + prob.lam * (v * v / (1 + v * v)).sum(), x)
            Li = float(prob.A[i] @ prob.A[i]) + 2 * prob.lam
            assert float(torch.linalg.matrix_norm(Hi, ord=2)) <= Li * (1 + 1e-12) <= prob.L_max * (1 + 1e-12)
    # at x = 0 the bound 3 lam is attained up to the top eigenvector's alignment: L is not loose by > 3/2
    H0 = torch.autograd.functional.hessian(lambda v: _f_autograd(prob, v), points[0])
    assert float(torch.linalg.matrix_norm(H0, ord=2)) >= prob.L / 1.5


def test_W0_is_stationary_for_pretraining(prob):
    cfg = prob.config
    d = prob.shape[0] * prob.shape[1]
    Q, c, _ = linreg_build.pretrain_moments(cfg, "cpu", d)
    lam = float(torch.linalg.eigvalsh(Q)[-1])
    assert lam == pytest.approx(prob.info["pre_lam"], rel=1e-12)
    x = prob.W0.reshape(-1)
    g = Q @ x - c + lam * 2 * x / (1 + x * x) ** 2
    assert float(g @ g) <= cfg["pre_tol"] * (1 + 1e-6)
    assert prob.info["pre_steps"] < cfg["pre_max_steps"]
    x_init = torch.from_numpy(np.random.RandomState(45).randn(d))
    assert not torch.allclose(x, x_init)  # GD moved away from the seed-45 start
    # ... and it is not a fine-tuning stationary point (there is something to fine-tune)
    gf = prob.grad(prob.W0[None])
    assert float((gf * gf).sum()) > 1.0


def test_batch_invariance(prob):
    W = _points(prob, 5, seed=5)
    idx = torch.randint(0, prob.n_samples, (5, 9), generator=torch.Generator().manual_seed(6))
    loss, grad = prob.loss_and_grad(W)
    mb = prob.minibatch_grad(W, idx)
    for r in range(5):
        l1, g1 = prob.loss_and_grad(W[r:r + 1])
        assert torch.equal(l1[0], loss[r]) and torch.equal(g1[0], grad[r])
        assert torch.equal(prob.loss(W[r:r + 1])[0], loss[r]) and torch.equal(prob.grad(W[r:r + 1])[0], grad[r])
        assert torch.equal(prob.minibatch_grad(W[r:r + 1], idx[r:r + 1])[0], mb[r])
        assert torch.equal(prob.loss_residual(W[r:r + 1])[0], prob.loss_residual(W)[r])


def test_build_is_deterministic_and_to(prob):
    again = make_linreg("ci", cache_dir=False)
    for key in ("Q", "c", "A", "b", "W0"):
        assert torch.equal(getattr(again, key), getattr(prob, key))
    p32 = prob.to("cpu", torch.float32)
    assert p32.Q.dtype == torch.float32 and p32.W0.dtype == torch.float32 and prob.Q.dtype == torch.float64
    assert p32.L == prob.L and isinstance(p32.L, float)
    W = _points(prob, 2, seed=7)
    assert torch.allclose(p32.grad(W.float()).double(), prob.grad(W), rtol=1e-3, atol=1e-2)


def test_cache_roundtrip(tmp_path, monkeypatch):
    first = make_linreg("ci", cache_dir=tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".pt") and first.info["cache_path"].endswith(files[0])

    def no_build(*a, **k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(linreg, "build", no_build)
    second = make_linreg("ci", cache_dir=tmp_path)
    for key in ("Q", "c", "A", "b", "W0"):
        assert torch.equal(getattr(first, key), getattr(second, key))
    assert (second.lam, second.L, second.L_avg, second.L_max, second.bb) == (first.lam, first.L, first.L_avg, first.L_max, first.bb)
    assert second.info["pre_steps"] == first.info["pre_steps"]
    monkeypatch.undo()
    path = tmp_path / files[0]
    assert os.stat(path).st_mode & 0o044  # readable by others: a shared cache
    path.write_bytes(b"truncated")  # a broken file is rebuilt and overwritten
    third = make_linreg("ci", cache_dir=tmp_path)
    assert torch.equal(third.W0, first.W0) and path.stat().st_size > 1000
    other = make_linreg("ci", cache_dir=tmp_path, ft_seed=85)  # another key, another file
    assert len(os.listdir(tmp_path)) == 2 and not torch.equal(other.A, first.A)
    monkeypatch.setenv("BLORA_CACHE", str(tmp_path / "env"))
    assert linreg.default_cache_dir() == tmp_path / "env"


@pytest.mark.parametrize("kwargs, field", [
    (dict(size="huge"), "problem.size"),
    (dict(size="ci", lam=3.0), "problem.lam"),
    (dict(size="ci", m=0), "problem.m"),
    (dict(size="ci", m=2.5), "problem.m"),
    (dict(size="ci", pre_tail_strength=1.5), "problem.pre_tail_strength"),
    (dict(size="ci", ft_std=0.0), "problem.ft_std"),
    (dict(size="ci", ft_noise=float("nan")), "problem.ft_noise"),
    (dict(size="ci", pre_seed=True), "problem.pre_seed"),
])
def test_bad_input(kwargs, field):
    with pytest.raises(ValueError) as err:
        make_linreg(cache_dir=False, **kwargs)
    msg = str(err.value)
    assert msg.startswith(field + ":") and "\n" not in msg


def test_registry_and_overrides():
    from experiments.problems import make_problem

    p = make_problem("linreg", size="ci", cache_dir=False, m=4, n=6, pre_n_samples=300, ft_n_samples=90)
    assert isinstance(p, LinReg) and p.shape == (4, 6) and p.A.shape == (90, 24)
    with pytest.raises(ValueError, match="problem.nope"):
        make_problem("linreg", size="ci", nope=1)


def test_datagen_bad_input():
    with pytest.raises(ValueError, match="tail_strength"):
        datagen.make_regression(10, 5, tail_strength=2.0)
    with pytest.raises(ValueError, match="effective_rank"):
        datagen.make_regression_factored(10, 5, effective_rank=None)
    with pytest.raises(ValueError, match="random_state"):
        datagen.check_random_state("seed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_build_matches_sklearn_and_cpu(prob):
    """cuSOLVER/MAGMA Householder QR has LAPACK's signs: same data as scikit-learn's."""
    for kw in REGRESSION_CASES + [dict(n_samples=3000, n_features=256, n_informative=128, noise=5.0, bias=1.0,
                                       effective_rank=16, tail_strength=0.8, random_state=21)]:
        X, y, coef = sk_datasets.make_regression(**kw, coef=True)
        Xt, yt, _ = datagen.make_regression(**kw, coef=True, device="cuda")
        assert _relerr(Xt.cpu().numpy(), X) < 1e-12 and _relerr(yt.cpu().numpy(), y) < 1e-12
        if kw.get("effective_rank") and kw.get("shuffle", True):
            design, yf, _ = datagen.make_regression_factored(**kw, device="cuda")
            assert _relerr(design.dense().cpu().numpy(), X) < 1e-12 and _relerr(yf.cpu().numpy(), y) < 1e-12
            assert _relerr(design.gram().cpu().numpy(), X.T @ X) < 1e-12
    gpu = make_linreg("ci", device="cuda", cache_dir=False)
    assert gpu.Q.is_cuda and gpu.lam == pytest.approx(prob.lam, rel=1e-12)
    assert torch.allclose(gpu.W0.cpu(), prob.W0, rtol=1e-9, atol=1e-11)
    W = _points(prob, 3, seed=8)
    assert torch.allclose(gpu.grad(W.cuda()).cpu(), prob.grad(W), rtol=1e-9, atol=1e-9)
