"""The fused engine iteration (solvers.fused; graph-captured on CUDA) computes what the
engine's own loop computes: run here eagerly on CPU (BLORA_GRAPH=eager) against the loop
(BLORA_GRAPH=0), including diverging runs, block draws across refills, and the cases it
must leave to the loop."""
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
    monkeypatch.setenv("BLORA_GRAPH", "0")
    loop = run(method, prob, prob.W0, seeds, steps=steps, eval_every=eval_every, **kw)
    monkeypatch.setenv("BLORA_GRAPH", "eager")
    fusd = run(method, prob, prob.W0, seeds, steps=steps, eval_every=eval_every, **kw)
    return loop, fusd


def _assert_same(a, b):
    for f in ("iteration", "epochs", "bits", "diverged"):
        np.testing.assert_array_equal(b[f], a[f], err_msg=f)
    for f in FIELDS:
        if np.isnan(a[f]).all():  # f* unknown (linreg): the f-gap columns are NaN in both
            assert np.isnan(b[f]).all(), f
            continue
        scale = np.nanmax(np.abs(a[f][:, 1]))
        np.testing.assert_allclose(b[f], a[f], rtol=1e-9, atol=1e-12 * scale, err_msg=f)
    assert np.allclose(b.W.numpy(), a.W.numpy(), rtol=1e-9, atol=1e-12)


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
    ok = ~loop["diverged"][:, -1]
    np.testing.assert_allclose(fusd["loss"][ok], loop["loss"][ok], rtol=1e-9)


def test_fused_not_used_where_it_does_not_apply(monkeypatch, prob):
    monkeypatch.setenv("BLORA_GRAPH", "eager")
    W = prob.W0.expand(2, *prob.W0.shape).clone()
    for method in (BernoulliLoRA(p=0.5, rank=1, sketch="column", estimator=GD(), stepsize=1.0),
                   BernoulliLoRA(p=0.5, rank=1, sketch="rademacher", estimator=GD(), stepsize=1.0),
                   BernoulliLoRA(p=0.5, rank=1, estimator=SGD(batch=5), stepsize=1.0),
                   BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=1.0, stepsize_rule="polyak", f_star=0.0)):
        state = method.init(W, prob, [0, 1])
        assert fused.make_fused(method, prob, W, state, f_star=0.0, limit=torch.ones(2), track=True) is None
    monkeypatch.setenv("BLORA_GRAPH", "0")
    method = FPFT(estimator=GD(), stepsize=1.0)
    assert fused.make_fused(method, prob, W, method.init(W, prob, [0, 1]), f_star=0.0,
                            limit=torch.ones(2), track=True) is None
    monkeypatch.delenv("BLORA_GRAPH")
    assert fused._mode(torch.device("cpu")) == "off" and fused._mode(torch.device("cuda")) == "graph"
