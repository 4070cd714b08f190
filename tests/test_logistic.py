"""Logistic fine-tuning problem: oracles vs autograd, constants vs dense Hessians,
certified minimisers, clients (equal shards, bitwise mean, heterogeneity),
batch invariance, .to(), bad input."""
import math

import numpy as np
import pytest
import torch

from experiments.problems import make_problem
from experiments.problems.logistic import _sample_minima, _solve, make_logistic

TOL = dict(rtol=1e-11, atol=1e-12)


@pytest.fixture(scope="module")
def prob():
    return make_logistic(m=3, n=4, n_samples=60, lam=0.05, seed=1)


@pytest.fixture(scope="module")
def fed():
    return make_logistic(m=3, n=4, n_samples=62, lam=0.05, n_clients=6, heterogeneity=0.5, seed=2)


def _points(prob, R, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return prob.W_star + scale * torch.randn(R, *prob.shape, generator=g, dtype=torch.float64)


def _autograd(fn, W):
    W = W.clone().requires_grad_(True)
    fn(W).sum().backward()
    return W.grad


def test_interface_and_constants(prob):
    C, d = prob.shape
    assert prob.name == "logistic" and (C, d) == (3, 4) and prob.n_samples == 60
    assert prob.W0.shape == (C, d) and prob.W_star.shape == (C, d) and prob.W0.dtype == torch.float64
    assert prob.mu == prob.lam == 0.05 and prob.f_inf == prob.f_star
    assert prob.L0 is None and prob.sigma2 is None and prob.n_clients is None
    X = prob.X
    Li = 0.5 * (X * X).sum(1) + prob.lam
    assert prob.L == pytest.approx(0.5 * torch.linalg.eigvalsh(X.T @ X / 60)[-1].item() + 0.05, rel=1e-14)
    assert prob.L_max == pytest.approx(Li.max().item()) and prob.L_avg == pytest.approx(Li.pow(2).mean().sqrt().item())
    assert prob.L <= prob.L_avg <= prob.L_max
    assert not torch.equal(prob.W0, prob.W_star)  # the shift moves the minimiser


def test_registry_builds_it():
    p = make_problem("logistic", m=2, n=3, n_samples=20)
    assert p.shape == (2, 3) and p.n_samples == 20


def test_grad_and_minibatch_grad_match_autograd(prob):
    W = _points(prob, 4, 0)
    torch.testing.assert_close(prob.grad(W), _autograd(prob.loss, W), **TOL)
    loss, grad = prob.loss_and_grad(W)
    assert torch.equal(loss, prob.loss(W)) and torch.equal(grad, prob.grad(W))
    idx = torch.tensor([[0, 5, 7], [3, 3, 59], [1, 2, 4], [10, 20, 30]])

    def minibatch_loss(W):
        out = []
        for r in range(W.shape[0]):
            Z = prob.X[idx[r]] @ W[r].T
            ce = torch.logsumexp(Z, -1) - Z[torch.arange(3), prob.y[idx[r]]]
            out.append(ce.mean() + 0.5 * prob.lam * (W[r] ** 2).sum())
        return torch.stack(out)

    torch.testing.assert_close(prob.minibatch_grad(W, idx), _autograd(minibatch_loss, W), **TOL)
    full = prob.minibatch_grad(W, torch.arange(60).expand(4, 60))
    torch.testing.assert_close(full, prob.grad(W), **TOL)


def test_loss_matches_reference(prob):
    W = _points(prob, 3, 1)
    ref = torch.nn.functional.cross_entropy(torch.einsum("rcd,nd->rnc", W, prob.X).reshape(-1, 3),
                                            prob.y.repeat(3), reduction="none").reshape(3, -1).mean(1)
    torch.testing.assert_close(prob.loss(W), ref + 0.5 * prob.lam * (W ** 2).sum((1, 2)), **TOL)


def _hessian(prob, W):
    C, d = prob.shape
    return torch.autograd.functional.hessian(lambda w: prob.loss(w.reshape(1, C, d))[0], W.reshape(-1))


def test_L_and_mu_bound_the_hessian(prob):
    for W in list(_points(prob, 4, 2, scale=3.0)) + [torch.zeros(prob.shape, dtype=torch.float64), prob.W_star]:
        eig = torch.linalg.eigvalsh(_hessian(prob, W))
        assert eig[-1].item() <= prob.L * (1 + 1e-12)
        assert eig[0].item() >= prob.mu * (1 - 1e-9)


def test_softmax_hessian_norm_at_most_half():
    g = torch.Generator().manual_seed(0)
    for C in (2, 3, 7):
        z = 4 * torch.randn(200, C, generator=g, dtype=torch.float64)
        s = torch.softmax(z, -1)
        A = torch.diag_embed(s) - s[:, :, None] * s[:, None, :]
        eig = torch.linalg.eigvalsh(A)
        assert eig.max().item() <= 0.5 + 1e-15 and eig.min().item() >= -1e-15
    s = torch.tensor([0.5, 0.5], dtype=torch.float64)  # attained with two equiprobable classes
    assert torch.linalg.eigvalsh(torch.diag(s) - torch.outer(s, s))[-1].item() == pytest.approx(0.5)


def test_minimisers_are_certified(prob):
    g = prob.grad(prob.W_star[None])[0]
    assert torch.linalg.norm(g).item() < 1e-10 and prob.grad_norm_star < 1e-10
    assert prob.loss(prob.W_star[None])[0].item() == prob.f_star
    W = _points(prob, 20, 3, scale=0.3)
    assert (prob.loss(W) >= prob.f_star).all()
    # W0 minimises the pretraining task, not the fine-tuning one
    assert torch.linalg.norm(prob.grad(prob.W0[None])).item() > 1e-3
    # f_star - f(W) <= ||grad||^2 / (2 mu) (PL) at every point
    gap = prob.loss(W) - prob.f_star
    assert (gap <= (prob.grad(W) ** 2).sum((1, 2)) / (2 * prob.mu) + 1e-12).all()


def test_sample_minima_match_newton(prob):
    X, y = prob.X.numpy(), prob.y.numpy()
    exact = _sample_minima(X, y, prob.lam, 3)
    for i in (0, 7, 31):
        _, f_i, g_i = _solve(X[i:i + 1], y[i:i + 1], prob.lam, 3)
        assert g_i < 1e-10 and f_i == pytest.approx(exact[i], rel=1e-12, abs=1e-14)
    assert prob.delta_inf == prob.delta_inf_samples > 0


def test_clients_equal_shards_and_autograd(fed):
    C, d = fed.shape
    assert fed.n_clients == 6 and fed.n_samples == 60  # 62 samples: 2 dropped
    W = _points(fed, 3, 4)
    G = fed.client_grads(W)
    assert G.shape == (3, 6, C, d) and fed.client_losses(W).shape == (3, 6)
    torch.testing.assert_close(G, torch.stack([_autograd(lambda w: fed.client_losses(w)[:, k], W) for k in range(6)], 1),
                               **TOL)
    torch.testing.assert_close(G.mean(1), _autograd(fed.loss, W), **TOL)
    assert torch.equal(fed.grad(W), G.mean(1))  # bitwise: distributed estimators equal GD
    assert torch.equal(fed.loss(W), fed.client_losses(W).mean(1))
    Xk, yk = fed.X[10:20], fed.y[10:20]  # client 1 owns rows 10..19
    Z = W @ Xk.T
    ref = (torch.logsumexp(Z, 1) - Z[:, yk, torch.arange(10)]).mean(1) + 0.5 * fed.lam * (W ** 2).sum((1, 2))
    torch.testing.assert_close(fed.client_losses(W)[:, 1], ref, **TOL)


def test_client_deltas(fed):
    assert 0 < fed.delta_inf == fed.delta_inf_clients <= fed.delta_inf_samples
    assert fed.L_max_clients <= fed.L_max and fed.L_avg_clients <= fed.L_avg
    assert all(f_k <= fed.client_losses(fed.W_star[None])[0, k].item() + 1e-14 for k, f_k in enumerate(fed.client_minima))
    # one sample per client: the clients' minima are the samples' minima
    one = make_logistic(m=3, n=4, n_samples=30, lam=0.05, n_clients=30, seed=3)
    assert one.delta_inf_clients == pytest.approx(one.delta_inf_samples, rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("K", [3, 6])
def test_heterogeneity_one_gives_single_class_clients(K):
    p = make_logistic(m=3, n=2, n_samples=60, n_clients=K, heterogeneity=1.0, seed=5)
    labels = p.client_labels()
    assert all(len(torch.unique(row)) == 1 for row in labels)
    assert sorted(torch.unique(labels).tolist()) == [0, 1, 2]


def test_heterogeneity_interpolates():
    def n_classes(h):
        p = make_logistic(m=4, n=2, n_samples=160, n_clients=8, heterogeneity=h, seed=6)
        return np.mean([len(torch.unique(row)) for row in p.client_labels()])

    counts = [n_classes(h) for h in (0.0, 0.5, 1.0)]
    assert counts[0] == 4 and counts[-1] == 1 and counts[0] >= counts[1] >= counts[2]
    # h = 0: the same samples as the problem without clients (only reordered)
    a, b = make_logistic(n_samples=40, n_clients=4, seed=7), make_logistic(n_samples=40, seed=7)
    assert a.f_star == pytest.approx(b.f_star, rel=1e-13)


def test_batch_equals_single_runs_bitwise(fed):
    W = _points(fed, 7, 5)
    idx = torch.randint(0, fed.n_samples, (7, 5), generator=torch.Generator().manual_seed(0))
    outputs = {"loss": fed.loss(W), "grad": fed.grad(W), "cl": fed.client_losses(W), "cg": fed.client_grads(W),
               "mb": fed.minibatch_grad(W, idx)}
    for r in range(7):
        w = W[r:r + 1]
        single = {"loss": fed.loss(w), "grad": fed.grad(w), "cl": fed.client_losses(w), "cg": fed.client_grads(w),
                  "mb": fed.minibatch_grad(w, idx[r:r + 1])}
        for key, val in single.items():
            assert torch.equal(val[0], outputs[key][r]), key


def test_batch_invariance_without_clients(prob):
    W = _points(prob, 9, 6)
    L, G = prob.loss(W), prob.grad(W)
    for r in range(9):
        assert torch.equal(prob.loss(W[r:r + 1])[0], L[r]) and torch.equal(prob.grad(W[r:r + 1])[0], G[r])


def test_determinism_and_to(prob):
    again = make_logistic(m=3, n=4, n_samples=60, lam=0.05, seed=1)
    assert torch.equal(again.X, prob.X) and torch.equal(again.W_star, prob.W_star) and again.f_star == prob.f_star
    other = make_logistic(m=3, n=4, n_samples=60, lam=0.05, seed=2)
    assert not torch.equal(other.X, prob.X)
    p32 = prob.to("cpu", torch.float32)
    assert p32.X.dtype == torch.float32 and p32.y.dtype == torch.int64 and p32.W0.dtype == torch.float32
    assert p32.L == prob.L and prob.X.dtype == torch.float64
    W = _points(prob, 2, 7).float()
    torch.testing.assert_close(p32.grad(W), prob.grad(W.double()).float(), rtol=1e-4, atol=1e-5)


def test_shift_zero_keeps_means():
    a = make_logistic(m=3, n=4, n_samples=300, shift=0.0, seed=8)
    b = make_logistic(m=3, n=4, n_samples=300, shift=3.0, seed=8)
    dist = lambda p: torch.linalg.norm(p.W_star - p.W0).item()  # noqa: E731
    assert dist(a) < dist(b)


@pytest.mark.parametrize("kw,field", [
    (dict(m=1), "problem.m"), (dict(m=2.5), "problem.m"), (dict(n=0), "problem.n"),
    (dict(n_samples=3), "problem.n_samples"), (dict(lam=-1), "problem.lam"), (dict(lam=0.0), "problem.lam"),
    (dict(lam=float("nan")), "problem.lam"), (dict(n_clients=0), "problem.n_clients"),
    (dict(n_clients=201), "problem.n_clients"), (dict(heterogeneity=1.5), "problem.heterogeneity"),
    (dict(heterogeneity=-0.1), "problem.heterogeneity"), (dict(shift=float("inf")), "problem.shift"),
    (dict(seed=-1), "problem.seed"), (dict(lam="x"), "problem.lam")])
def test_bad_parameters(kw, field):
    with pytest.raises(ValueError, match=f"^{field}:") as info:
        make_logistic(**kw)
    assert "\n" not in str(info.value)


def test_no_clients_errors(prob):
    with pytest.raises(ValueError, match="^problem.n_clients"):
        prob.client_grads(prob.W0[None])
    assert math.isfinite(prob.delta_inf)


def test_ef21_identity_equals_gd_bitwise_and_gd_decreases(fed):
    from solvers.compressors import Identity
    from solvers.distributed import EF21, QGD
    from solvers.engine import run
    from solvers.estimators import GD
    from solvers.methods import BernoulliLoRA

    kw = dict(p=0.5, rank=1, stepsize=1.0 / fed.L)
    gd = run(BernoulliLoRA(estimator=GD(), **kw), fed, fed.W0, range(4), steps=40, eval_every=10)
    for est in (EF21(compressor=Identity()), QGD(compressor=Identity())):
        other = run(BernoulliLoRA(estimator=est, **kw), fed, fed.W0, range(4), steps=40, eval_every=10)
        assert torch.equal(other.W, gd.W) and np.array_equal(other["loss"], gd["loss"])
    gap = gd["f_gap"]
    assert (gap >= -1e-15).all() and (np.diff(gap, axis=1) <= 1e-15).all() and (gap[:, -1] < gap[:, 0]).all()
