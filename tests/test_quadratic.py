"""Quadratic and counterexample problems: exact constants, autograd, counterexample."""
import numpy as np
import pytest
import torch

from experiments.problems import make_problem
from solvers.engine import run
from solvers.estimators import GD
from solvers.methods import COLA, AsymmLoRA, BernoulliLoRA, LoRA


def test_gradient_matches_autograd_and_constants_are_exact():
    prob = make_problem("quadratic", m=3, n=4, mu=0.5, L=7.0, seed=2)
    W = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    prob.loss(W).sum().backward()
    torch.testing.assert_close(prob.grad(W.detach()), W.grad, rtol=1e-12, atol=1e-12)
    H = torch.autograd.functional.hessian(lambda w: prob.loss(w.reshape(1, 3, 4))[0], torch.zeros(12, dtype=torch.float64))
    eig = torch.linalg.eigvalsh(H)
    assert eig[0].item() == pytest.approx(0.5, rel=1e-10) and eig[-1].item() == pytest.approx(7.0, rel=1e-10)
    assert prob.loss(prob.W_star[None]).item() == 0.0
    assert prob.grad(prob.W_star[None]).abs().max().item() == 0.0


def test_isotropic_needs_no_dense_hessian():
    prob = make_problem("quadratic", m=300, n=200, mu=2.0, L=2.0)
    assert prob.Q is None
    W = torch.zeros(2, 300, 200, dtype=torch.float64)
    torch.testing.assert_close(prob.grad(W), -2.0 * prob.W_star.expand(2, 300, 200))


def test_batch_equals_single_runs_bitwise():
    prob = make_problem("quadratic", m=4, n=5, mu=1.0, L=3.0)
    W = torch.randn(20, 4, 5, dtype=torch.float64)
    full = prob.grad(W)
    assert all(torch.equal(prob.grad(W[k:k + 1])[0], full[k]) for k in range(20))


@pytest.mark.parametrize("kw,field", [(dict(m=0), "problem.m"), (dict(mu=3.0, L=2.0), "problem.mu"),
                                      (dict(mu=-1.0), "problem.mu"), (dict(L=float("nan")), "problem.L")])
def test_bad_parameters(kw, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        make_problem("quadratic", **kw)


def test_unknown_problem_and_parameter():
    with pytest.raises(ValueError, match="^problem: unknown"):
        make_problem("nonexistent")
    with pytest.raises(ValueError, match="^problem.quadratic"):
        make_problem("quadratic", bogus=1)


def test_counterexample_lora_diverges_rac_and_bernoulli_converge():
    """RAC-LoRA's counterexample: at gamma = 1/L, LoRA (and COLA) diverge while
    RAC-LoRA and Bernoulli-LoRA converge to W*; with small steps LoRA stalls at a
    non-optimal point and AsymmLoRA stalls too."""
    prob = make_problem("counterexample")
    g = 1.0 / prob.L
    kw = dict(steps=600, eval_every=600, track_every_step=False)
    seeds = range(4)
    assert run(LoRA(rank=1, estimator=GD(), stepsize=g), prob, prob.W0, seeds, **kw)["diverged"][:, -1].all()
    assert run(COLA(rank=1, estimator=GD(), stepsize=g, merge_every=10), prob, prob.W0, seeds, **kw)["diverged"][:, -1].all()
    small = run(LoRA(rank=1, estimator=GD(), stepsize=0.1 * g), prob, prob.W0, seeds, **kw)
    assert not small["diverged"].any() and small["f_gap"][:, -1].min() > 1.0
    asym = run(AsymmLoRA(rank=1, estimator=GD(), stepsize=g), prob, prob.W0, seeds, **kw)
    assert asym["f_gap"][:, -1].min() > 1.0
    for p in (0.0, 1.0, 0.5):
        tr = run(BernoulliLoRA(p=p, rank=1, estimator=GD(), stepsize=g), prob, prob.W0, seeds, **kw)
        assert not tr["diverged"].any()
        assert tr["f_gap"][:, -1].max() < 1e-12
        assert tr["dist_sq"][:, -1].max() < 1e-12
