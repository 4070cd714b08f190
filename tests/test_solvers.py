"""Bernoulli-LoRA solvers against exact references."""
import math

import numpy as np
import pytest
import torch

from solvers.engine import run
from solvers.estimators import GD, MVR, PAGE, SGD, make_estimator
from solvers.methods import FPFT, AsymmLoRA, BernoulliLoRA, COLA, LoRA, make_method
from tests.oracles import Isotropic, LeastSquaresSum


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("sketch", ["gaussian", "column"])
def test_expected_loss_follows_exact_recursion(p, sketch):
    """On f = (L/2)||W - W*||^2 with E H_B = (r/m) I, E H_A = (r/n) I:
    E f(W_t) = (1 - (2 gamma L - gamma^2 L^2) lambda)^t f(W_0), lambda = p r/m + (1-p) r/n."""
    m, n, r, L = 7, 4, 2, 3.0
    gamma = 0.7 / L
    prob = Isotropic(m, n, L=L)
    method = BernoulliLoRA(p=p, rank=r, sketch=sketch, estimator=GD(), stepsize=gamma)
    S = 4000
    traj = run(method, prob, prob.W0, range(S), steps=6, track_every_step=False)
    ratio = traj["loss"] / traj["loss"][:, :1]
    lam = p * r / m + (1 - p) * r / n
    rho = 1 - (2 * gamma * L - gamma**2 * L**2) * lam
    expected = rho ** np.arange(7)
    mean, se = ratio.mean(0), ratio.std(0, ddof=1) / math.sqrt(S)
    assert np.all(np.abs(mean - expected) <= 4.5 * se + 1e-12), (mean, expected, se)


def test_fpft_is_plain_gradient_descent():
    prob = Isotropic(3, 5, L=2.0)
    traj = run(FPFT(estimator=GD(), stepsize=0.25), prob, prob.W0, [0], steps=4, track_every_step=False)
    expected = 0.5 ** (2 * np.arange(5)) * traj["loss"][0, 0]  # (1 - gamma L)^(2t)
    np.testing.assert_allclose(traj["loss"][0], expected, rtol=1e-12)


def _W(traj):
    return traj.W.clone()


def test_page_with_q_one_is_gd_exactly():
    prob = LeastSquaresSum(5, 4)
    kw = dict(p=0.4, rank=2, sketch="gaussian", stepsize=0.05)
    a = run(BernoulliLoRA(estimator=GD(), **kw), prob, prob.W0, range(6), steps=15)
    b = run(BernoulliLoRA(estimator=PAGE(batch=3, q=1.0), **kw), prob, prob.W0, range(6), steps=15)
    assert torch.equal(a.W, b.W)
    np.testing.assert_array_equal(a["grad_norm_sq"], b["grad_norm_sq"])


def test_mvr_with_momentum_one_is_sgd_exactly():
    prob = LeastSquaresSum(5, 4)
    kw = dict(p=0.4, rank=2, sketch="gaussian", stepsize=0.05)
    a = run(BernoulliLoRA(estimator=SGD(batch=4), **kw), prob, prob.W0, range(6), steps=15)
    b = run(BernoulliLoRA(estimator=MVR(momentum=1.0, batch=4), **kw), prob, prob.W0, range(6), steps=15)
    assert torch.equal(a.W, b.W)
    np.testing.assert_array_equal(a["epochs"], b["epochs"])


def test_page_and_mvr_reduce_variance_on_average():
    # a sanity check of the estimators themselves: E[G_t] tracks grad f(W_t)
    prob = LeastSquaresSum(4, 3, N=30)
    m = BernoulliLoRA(p=0.5, rank=1, estimator=PAGE(batch=5, q=0.3), stepsize=0.05)
    traj = run(m, prob, prob.W0, range(8), steps=200, eval_every=50)
    assert np.all(traj["grad_norm_sq"][:, -1] < traj["grad_norm_sq"][:, 0])


@pytest.mark.parametrize("method", [
    BernoulliLoRA(p=0.3, rank=2, sketch="gaussian", estimator=SGD(batch=3), stepsize=0.05),
    BernoulliLoRA(p=0.6, rank=2, sketch="orthonormal", estimator=MVR(momentum=0.3, batch=2), stepsize=0.05),
    BernoulliLoRA(p=0.5, rank=1, sketch="rademacher", estimator=PAGE(batch=2, q=0.2), stepsize=0.05),
    BernoulliLoRA(p=0.5, rank=1, sketch="column", estimator=SGD(noise=0.5), stepsize=0.05),
    COLA(rank=2, estimator=SGD(batch=3), stepsize=0.05, merge_every=3),
])
def test_batch_invariance_and_determinism(method):
    """A run's trajectory depends only on its seed: alone == inside a batch of 50, bitwise."""
    prob = LeastSquaresSum(5, 4)
    batch = run(method, prob, prob.W0, range(100, 150), steps=12, eval_every=4)
    again = run(method, prob, prob.W0, range(100, 150), steps=12, eval_every=4)
    assert torch.equal(batch.W, again.W)
    for k in (0, 17, 49):
        alone = run(method, prob, prob.W0, [100 + k], steps=12, eval_every=4)
        assert torch.equal(alone.W[0], batch.W[k])
        for f in ("loss", "grad_norm_sq", "epochs", "avg_grad_norm_sq"):
            np.testing.assert_array_equal(alone[f][0], batch[f][k])


def test_p_one_trains_only_through_left_projection():
    """p = 1: every update lies in the range of B_S (column space), so with
    rank 1 each step changes W by a rank-one matrix."""
    prob = Isotropic(5, 6)
    m = BernoulliLoRA(p=1.0, rank=1, estimator=GD(), stepsize=0.3)
    state = m.init(prob.W0[None], prob, [3])
    W1, state = m.step(prob.W0[None], state, prob)
    assert torch.linalg.matrix_rank(W1[0] - prob.W0) == 1
    assert bool(state.left.all())


def test_divergence_is_marked_and_others_continue():
    prob = Isotropic(4, 4, L=1.0)
    # constant stepsize 2.5/L on FPFT diverges geometrically (|1 - 2.5| > 1)
    div = run(FPFT(estimator=GD(), stepsize=2.5), prob, prob.W0, [0, 1], steps=200, divergence_factor=1e6)
    assert div["diverged"][:, -1].all()
    ok = run(BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=1.0), prob, prob.W0, [0, 1], steps=30)
    assert not ok["diverged"].any()


def test_factor_space_baselines_shapes_and_progress():
    prob = Isotropic(6, 5, L=1.0)
    for m in (LoRA(rank=2, estimator=GD(), stepsize=0.5), LoRA(rank=2, estimator=GD(), stepsize=0.5, random_A=False),
              AsymmLoRA(rank=2, estimator=GD(), stepsize=0.5), COLA(rank=2, estimator=GD(), stepsize=0.5, merge_every=5)):
        traj = run(m, prob, prob.W0, range(3), steps=40, eval_every=40)
        assert traj["loss"][:, -1].max() < traj["loss"][:, 0].min()


def test_asymm_lora_trains_only_one_factor():
    prob = Isotropic(6, 5, L=1.0)
    m = AsymmLoRA(rank=2, estimator=GD(), stepsize=0.5, random_A=True)
    state = m.init(prob.W0[None], prob, [0])
    A0 = state.factors[2].clone()
    W = prob.W0[None]
    for _ in range(3):
        W, state = m.step(W, state, prob)
    assert torch.equal(state.factors[2], A0)  # A is random and fixed
    assert state.factors[1].abs().sum() > 0  # B trained from zero


@pytest.mark.parametrize("kwargs,field", [
    (dict(p=1.5), "p"), (dict(p=-0.1), "p"), (dict(rank=0), "rank"), (dict(rank=9), "rank"),
    (dict(stepsize=0.0), "stepsize"), (dict(stepsize=-1.0), "stepsize"), (dict(sketch="nope"), "sketch"),
])
def test_bad_input_fails_before_work(kwargs, field):
    prob = Isotropic(4, 5)
    base = dict(p=0.5, rank=2, sketch="gaussian", estimator=GD(), stepsize=0.1)
    base.update(kwargs)
    with pytest.raises(ValueError, match=f"^{field}"):
        run(BernoulliLoRA(**base), prob, prob.W0, [0], steps=3)


def test_bad_estimator_and_method_names_and_batch():
    with pytest.raises(ValueError, match="^estimator"):
        make_estimator("nope")
    with pytest.raises(ValueError, match="^method"):
        make_method("nope")
    prob = LeastSquaresSum(3, 3, N=10)
    with pytest.raises(ValueError, match="^batch"):
        run(BernoulliLoRA(p=0.5, rank=1, estimator=SGD(batch=11), stepsize=0.1), prob, prob.W0, [0], steps=2)
    bad = prob.W0.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^W0"):
        run(BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.1), prob, bad, [0], steps=2)


def test_per_run_p_and_stepsize_equal_separate_runs():
    prob = Isotropic(5, 4)
    ps, gs = (0.1, 0.9, 0.5), (0.2, 0.3, 0.25)
    mixed = run(BernoulliLoRA(p=ps, rank=2, estimator=GD(), stepsize=gs), prob, prob.W0, [4, 5, 6], steps=8)
    for k in range(3):
        alone = run(BernoulliLoRA(p=ps[k], rank=2, estimator=GD(), stepsize=gs[k]), prob, prob.W0, [4 + k], steps=8)
        assert torch.equal(alone.W[0], mixed.W[k])


class _Counting:
    """Wraps an oracle and counts its evaluations (loss, grad, loss_and_grad)."""

    def __init__(self, inner, with_loss_and_grad):
        self.inner, self.calls = inner, {"loss": 0, "grad": 0, "loss_and_grad": 0}
        self.shape, self.L, self.n_samples = inner.shape, inner.L, getattr(inner, "n_samples", None)
        if with_loss_and_grad:
            self.loss_and_grad = self._loss_and_grad

    def loss(self, W):
        self.calls["loss"] += 1
        return self.inner.loss(W)

    def grad(self, W):
        self.calls["grad"] += 1
        return self.inner.grad(W)

    def _loss_and_grad(self, W):
        self.calls["loss_and_grad"] += 1
        return self.inner.loss_and_grad(W)


@pytest.mark.parametrize("with_loss_and_grad", [True, False])
def test_gd_records_the_oracle_values_with_one_evaluation_per_step(with_loss_and_grad):
    """GD's recorded loss and ||grad||^2 are the oracle's at the iterate (bitwise), and a
    step costs one gradient: the engine reuses the estimator's G (and its loss when the
    oracle computes both in one call) instead of evaluating again."""
    from experiments.problems import make_problem

    prob = make_problem("linreg", size="ci")
    oracle = _Counting(prob, with_loss_and_grad)
    steps = 30
    traj = run(BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=1.0 / prob.L), oracle, prob.W0,
               [0, 1, 2], steps=steps, eval_every=10)
    assert torch.equal(torch.as_tensor(traj["loss"][:, -1]), prob.loss(traj.W))
    assert torch.equal(torch.as_tensor(traj["grad_norm_sq"][:, -1]), (prob.grad(traj.W) ** 2).sum((-2, -1)))
    if with_loss_and_grad:
        assert oracle.calls == {"loss": 0, "grad": 0, "loss_and_grad": steps + 1}
    else:  # at W0 and after each step: grad (GD) + loss (engine)
        assert oracle.calls == {"loss": steps + 1, "grad": steps + 1, "loss_and_grad": 0}
