"""The quadratic as a finite sum (n_samples) and split among clients (n_clients,
heterogeneity): the same f, gradients against autograd of losses written from the
formulas, constants, batch invariance, errors; and the exact column of a job."""
import math

import numpy as np
import pytest

from experiments.conf.schema import group_config, job_config
import torch

from experiments.exact import EXACT_COLUMNS, EXACT_METRICS, attach_exact, exact_expectations
from experiments.job import execute
from experiments.problems import make_problem
from solvers.compressors import Identity
from solvers.distributed import EF21, QGD
from solvers.engine import run
from solvers.estimators import GD
from solvers.methods import BernoulliLoRA
from tests.test_problems import _ref_sample_losses  # f_i written from the formulas

F64 = torch.float64
KW = dict(m=3, n=2, mu=0.5, L=4.0, seed=1, n_samples=24, noise=0.7)


def make(**kw):
    return make_problem("quadratic", **dict(KW, **kw))


def test_finite_sum_is_the_same_quadratic():
    prob = make()
    N, d = prob.n_samples, 6
    torch.testing.assert_close(prob.A.T @ prob.A / N, prob.Q, rtol=0, atol=1e-13)
    assert float((prob.A.T @ prob.eps).abs().max()) < 1e-13
    assert prob.f_star == pytest.approx(float((prob.eps ** 2).sum()) / (2 * N), rel=1e-15) and prob.f_star > 0
    eig = torch.linalg.eigvalsh(prob.Q)
    assert eig[0].item() == pytest.approx(0.5, rel=1e-12) and eig[-1].item() == pytest.approx(4.0, rel=1e-12)
    W = prob.W0 + torch.randn(4, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_ref_sample_losses(prob, W).mean(1), prob.loss(W), rtol=1e-12, atol=1e-12)
    plain = make_problem("quadratic", **{k: v for k, v in KW.items() if k not in ("n_samples", "noise")})
    assert torch.equal(plain.Q, prob.Q) and torch.equal(plain.W_star, prob.W_star) and plain.A is None
    assert plain.f_star == 0.0 and plain.n_samples is None and plain.n_clients is None
    assert d == prob.Q.shape[0]


def test_client_gradients_match_autograd():
    prob = make(n_clients=3, heterogeneity=0.5)
    W = (prob.W0 + torch.randn(2, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))).requires_grad_()
    cg = prob.client_grads(W.detach())
    for k in range(3):
        fk = _ref_sample_losses(prob, W)[:, 8 * k:8 * (k + 1)].mean(1).sum()
        torch.testing.assert_close(cg[:, k], torch.autograd.grad(fk, W)[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(prob.grad(W.detach()), cg.mean(1))  # bitwise: identity compression is GD
    full = torch.autograd.grad(prob.loss(W).sum(), W)[0]
    torch.testing.assert_close(prob.grad(W.detach()), full, rtol=1e-12, atol=1e-12)


def test_batch_of_runs_equals_runs_one_at_a_time():
    prob = make(n_clients=2)
    W = torch.randn(6, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    idx = torch.randint(0, 24, (6, 4), generator=torch.Generator().manual_seed(3))
    calls = {"grad": lambda k: prob.grad(W[k]), "loss": lambda k: prob.loss(W[k]),
             "client_grads": lambda k: prob.client_grads(W[k]),
             "minibatch_grad": lambda k: prob.minibatch_grad(W[k], idx[k])}
    for name, call in calls.items():
        full = call(slice(None))
        assert all(torch.equal(call(slice(k, k + 1))[0], full[k]) for k in range(6)), name


def test_heterogeneity_separates_the_clients_gradients_at_the_optimum():
    """zeta^2 = mean_k ||grad f_k(W*)||^2 grows from h = 0 to h = 1; the samples are the same."""
    zeta = {}
    for h in (0.0, 1.0):
        prob = make(n_clients=4, heterogeneity=h)
        zeta[h] = float((prob.client_grads(prob.W_star[None]) ** 2).sum((-2, -1)).mean())
        rows = prob.A[torch.argsort(prob.A[:, 0])]
        zeta[f"rows{h}"] = rows
    assert zeta[1.0] > 2 * zeta[0.0]
    torch.testing.assert_close(zeta["rows0.0"], zeta["rows1.0"], rtol=0, atol=0)


def test_constants():
    prob = make(n_clients=2)  # 12 samples per client > d = 6: the clients' minima are positive
    A, N = prob.A, prob.n_samples
    assert prob.L_max == pytest.approx(float((A * A).sum(1).max()), rel=1e-14)
    v = torch.randn(50, 6, dtype=F64, generator=torch.Generator().manual_seed(4))
    ms = ((v @ A.T) ** 2 * (A * A).sum(1)).mean(1)  # (1/N) sum_i ||a_i a_i^T v||^2
    assert bool((ms <= prob.L_avg ** 2 * (v * v).sum(1) * (1 + 1e-12)).all())
    assert prob.L_avg <= math.sqrt(float(((A * A).sum(1) ** 2).mean()))  # tighter than sqrt(mean L_i^2)
    fk = []
    for k in range(2):
        Ak, ek = A[12 * k:12 * (k + 1)], prob.eps[12 * k:12 * (k + 1)]
        x = torch.linalg.solve(Ak.T @ Ak, Ak.T @ ek)  # normal equations
        fk.append(0.5 * float(((Ak @ x - ek) ** 2).mean()))
    assert prob.delta_inf == pytest.approx(prob.f_star - np.mean(fk), rel=1e-10)
    assert 0 < prob.delta_inf < prob.f_star
    assert make().delta_inf == prob.f_star


@pytest.mark.parametrize("kw,field", [(dict(n_samples=5), "problem.n_samples"),
                                      (dict(n_clients=5), "problem.n_clients"),
                                      (dict(n_samples=None, n_clients=2), "problem.n_clients"),
                                      (dict(noise=-1.0), "problem.noise"),
                                      (dict(n_clients=2, heterogeneity=2.0), "problem.heterogeneity")])
def test_bad_parameters(kw, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        make(**kw)


def test_to_moves_the_samples():
    prob = make(n_clients=2).to("cpu", torch.float32)
    assert prob.A.dtype == prob.eps.dtype == prob.Q.dtype == torch.float32
    assert prob.client_grads(prob.W0[None]).dtype == torch.float32


def test_identity_compressed_estimators_are_gd_bitwise():
    prob = make(n_clients=3)
    runs = {}
    for name, est in (("gd", GD()), ("qgd", QGD(compressor=Identity())), ("ef21", EF21(compressor=Identity()))):
        method = BernoulliLoRA(estimator=est, stepsize=0.1, p=0.5, rank=1)
        runs[name] = run(method, prob, prob.W0, range(3), steps=5, track_every_step=False)["f_gap"]
    assert np.array_equal(runs["gd"], runs["qgd"]) and np.array_equal(runs["gd"], runs["ef21"])


CFG = job_config(
    problem="quadratic", method="bernoulli_lora", estimator="marina", sketch="column", compressor="randk",
    **{"problem.m": 3, "problem.n": 2, "problem.mu": 0.5, "problem.L": 4.0, "problem.seed": 1,
       "problem.n_samples": 8, "problem.n_clients": 2, "problem.heterogeneity": 0.5,
       "method.p": 0.4, "method.rank": 1, "estimator.q": 0.3, "compressor.k": 2,
       "stepsize.rule": "constant", "stepsize.factor": 0.5,
       "steps": 6, "seeds": 1000, "seed": 0, "eval_every": 3, "device": "cpu", "track_every_step": False})


def test_attach_exact_to_a_job_agrees_with_its_runs():
    cfg = dict(CFG, track_every_step=True)
    table, job = execute(cfg)
    table = attach_exact(table, job, cfg)
    assert set(EXACT_COLUMNS) <= set(table.columns) and (table["exact_status"] == "computed").all()
    res = exact_expectations(job.problem, cfg["method"], cfg["estimator"], job.gamma, range(7),
                             sketch_cfg=cfg["sketch"], compressor_cfg=cfg["compressor"])
    its = [0, 3, 6]
    ref = {m: res[m][its] for m in ("f_gap", "grad_norm_sq", "dist_sq")}
    for m in ("f_gap", "grad_norm_sq"):  # E of the running average over iterates t < T
        ref[f"avg_{m}"] = np.array([np.nan] + [res[m][:T].mean() for T in its[1:]])
    g = table.groupby("iteration")
    for metric in EXACT_METRICS:
        col = f"exact_{metric}"
        np.testing.assert_allclose(g[col].first().to_numpy(), ref[metric], rtol=1e-14, atol=0)
        assert (g[col].nunique(dropna=False) == 1).all()
        mean, se = g[metric].mean().to_numpy(), g[metric].std().to_numpy() / math.sqrt(cfg["seeds"])
        z = np.abs(mean - ref[metric])[1:] / se[1:]
        assert (z < 4).all(), (metric, z)
    metric = table["exact_metric"].iloc[0]
    assert metric == table["bound_metric"].iloc[0] and metric in EXACT_METRICS
    np.testing.assert_array_equal(table["exact"].to_numpy(), table[f"exact_{metric}"].to_numpy())


def test_a_large_isotropic_problem_is_refused_before_its_hessian_is_formed(monkeypatch):
    from experiments.exact import exact_for_method
    from experiments.problems.quadratic import Quadratic

    prob = make_problem("isotropic", m=300, n=200)
    monkeypatch.setattr(Quadratic, "hessian", lambda self: pytest.fail("the Hessian was formed"))
    with pytest.raises(ValueError, match="^problem.m: "):
        exact_for_method(prob, BernoulliLoRA(estimator=GD(), stepsize=0.1), [1])


@pytest.mark.parametrize("change,why", [
    ({"method": dict(group_config("method", "lora"), rank=1), "sketch": group_config("sketch", "gaussian")},
     "method.name"),
    ({"stepsize": {"rule": "polyak", "factor": 1.0}}, "stepsize.rule"),
    ({"estimator": group_config("estimator", "ef21"), "compressor": dict(group_config("compressor", "topk"), k=2)},
     "compressor.name"),
])
def test_attach_exact_says_when_it_does_not_apply(change, why):
    cfg = dict(CFG, seeds=2, steps=2, **change)
    table, job = execute(cfg)
    table = attach_exact(table, job, cfg)
    assert table["exact_f_gap"].isna().all()
    assert (table["exact_status"].str.startswith(f"not applicable: {why}: ")).all()
