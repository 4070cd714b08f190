"""The fused engine iteration (solvers.fused; graph-captured on CUDA) computes what the
engine's own loop computes: run here eagerly on CPU (graph='eager') against the loop
(graph='off'), bitwise, including diverging runs, block draws across refills, and the
cases it must leave to the loop (every estimator: tests/test_fused_estimators.py)."""
import numpy as np
import pytest
import torch

from experiments.problems import make_problem
from solvers import fused
from solvers.engine import run
from solvers.estimators import GD, SGD
from solvers.methods import FPFT, BernoulliLoRA

FIELDS = ("loss", "grad_norm_sq", "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap")


@pytest.fixture(scope="module")
def prob():
    return make_problem("linreg", size="ci")


def _both(monkeypatch, method, prob, seeds, steps, eval_every=10, **kw):
    loop = run(method, prob, prob.W0, seeds, steps=steps, eval_every=eval_every, graph="off", **kw)
    fusd = run(method, prob, prob.W0, seeds, steps=steps, eval_every=eval_every, graph="eager", **kw)
    return loop, fusd


def _assert_same(a, b):
    for f in ("iteration", "epochs", "bits", "diverged") + FIELDS:
        np.testing.assert_array_equal(b[f], a[f], err_msg=f)
    assert torch.equal(b.W, a.W)


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal"])
def test_fused_equals_engine_loop_over_block_refills(monkeypatch, prob, sketch):
    R = 9
    ps = tuple(float(x) for x in np.linspace(0.0, 1.0, R))
    method = BernoulliLoRA(p=ps, rank=2, sketch=sketch, estimator=GD(), stepsize=tuple([1.5 / prob.L] * R))
    loop, fusd = _both(monkeypatch, method, prob, list(range(R)), steps=150)  # > 2 blocks of 64
    _assert_same(loop, fusd)


def test_fused_fpft_is_bitwise_the_loop(monkeypatch, prob):
    loop, fusd = _both(monkeypatch, FPFT(estimator=GD(), stepsize=1.0 / prob.L), prob, [0, 1], steps=70)
    for f in FIELDS + ("epochs",):
        np.testing.assert_array_equal(fusd[f], loop[f], err_msg=f)


def test_fused_marks_diverging_runs_and_freezes_them(monkeypatch, prob):
    """gamma = 4/L blows up some runs; they are marked and frozen exactly as in the loop."""
    method = BernoulliLoRA(p=0.5, rank=4, estimator=GD(), stepsize=(0.5 / prob.L, 30.0 / prob.L, 1.0 / prob.L))
    loop, fusd = _both(monkeypatch, method, prob, [3, 4, 5], steps=80, eval_every=5)
    assert loop["diverged"][1, -1] and not loop["diverged"][0, -1]
    np.testing.assert_array_equal(fusd["diverged"], loop["diverged"])
    _assert_same(loop, fusd)


def test_fused_not_used_where_it_does_not_apply(prob):
    from solvers.distributed import QGD, FactorQGDBernoulliLoRA
    from solvers.iteration import Carry, RunningStats
    from solvers.methods import COLA

    W = prob.W0.expand(2, *prob.W0.shape).clone()

    def carry(method):
        state = method.init(W, prob, [0, 1])
        return Carry(W, state, state.est.G[:, 0, 0], state.est.G, RunningStats.zeros(2, W.device),
                     torch.zeros(2, dtype=torch.bool))

    kw = dict(f_star=0.0, limit=torch.ones(2), track=True)
    cola = COLA(estimator=SGD(batch=5), rank=1, stepsize=1.0)
    assert fused.make_fused(cola, prob, carry(cola), graph="eager", **kw) is None
    factor = FactorQGDBernoulliLoRA(p=0.5, rank=1, estimator=QGD(transmit="factor"), stepsize=1.0)
    assert not fused.eligible(factor)
    for method in (BernoulliLoRA(p=0.5, rank=1, sketch="column", estimator=SGD(batch=5), stepsize=1.0),
                   BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=1.0, stepsize_rule="polyak", f_star=0.0)):
        assert fused.make_fused(method, prob, carry(method), graph="eager", **kw) is not None
        assert fused.make_fused(method, prob, carry(method), graph="off", **kw) is None
        assert fused.make_fused(method, prob, carry(method), graph="auto", **kw) is None  # CPU: the loop
