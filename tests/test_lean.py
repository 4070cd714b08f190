"""The lean CPU iteration (solvers.lean) records what the engine's general loop records,
bitwise, in invariant mode: every field, every evaluation point and the final iterates,
over sketches, coins, ranks, batch sizes, tracking, divergence and oracles with and without
``loss_and_grad``; a broken lean step is caught by the same comparison; the cases it must
leave to the loop are left to it."""
import numpy as np
import pytest
import torch

from experiments.problems import make_problem
from solvers import lean
from solvers.engine import FIELDS, run
from solvers.estimators import GD, SGD
from solvers.linalg import set_invariant
from solvers.methods import FPFT, BernoulliLoRA

RECORDED = tuple(f for f in FIELDS if f != "time_s")


@pytest.fixture(scope="module")
def quad():
    return make_problem("quadratic", m=6, n=5, mu=0.5, L=3.0)


class _NoShared:
    """An oracle with ``loss`` and ``grad`` only (the loop then calls ``loss`` separately)."""

    def __init__(self, prob):
        self.p = prob
        self.f_star, self.W_star, self.L, self.shape = prob.f_star, prob.W_star, prob.L, prob.shape

    def loss(self, W):
        return self.p.loss(W)

    def grad(self, W):
        return self.p.grad(W)


def _records(method, prob, seeds, graph, **kw):
    kw = dict(dict(steps=150, eval_every=10, track_every_step=True), **kw)
    return run(method, prob, prob.W0 if hasattr(prob, "W0") else prob.p.W0, seeds, graph=graph, **kw)


def _assert_same(a, b):
    for f in RECORDED:
        np.testing.assert_array_equal(b[f], a[f], err_msg=f)
    assert torch.equal(a.W, b.W)


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal", "rademacher", "column"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_lean_is_the_loop_bitwise(quad, sketch, p):
    method = BernoulliLoRA(p=p, rank=2, sketch=sketch, estimator=GD(), stepsize=0.3)
    for seeds in ([3], [0, 1, 2, 3, 4]):
        _assert_same(_records(method, quad, seeds, "off"), _records(method, quad, seeds, "lean"))


@pytest.mark.parametrize("track,eval_every", [(True, 1), (True, 7), (False, 7), (False, 200)])
def test_lean_tracking_and_evaluation_points(quad, track, eval_every):
    method = BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.3)
    kw = dict(track_every_step=track, eval_every=eval_every, steps=140)  # 140: block refills mid-run
    _assert_same(_records(method, quad, [0, 1, 2], "off", **kw), _records(method, quad, [0, 1, 2], "lean", **kw))


def test_lean_freezes_diverging_runs_like_the_loop(quad):
    # per-run stepsizes: runs 1 and 3 diverge at different steps, the others converge
    method = BernoulliLoRA(p=(0.3, 0.5, 0.7, 0.2, 1.0), rank=3, estimator=GD(), stepsize=(0.25, 9.0, 0.3, 5.0, 0.1))
    for track in (True, False):
        a = _records(method, quad, [0, 1, 2, 3, 4], "off", track_every_step=track, eval_every=3)
        b = _records(method, quad, [0, 1, 2, 3, 4], "lean", track_every_step=track, eval_every=3)
        assert a["diverged"][:, -1].tolist() == [False, True, False, True, False]
        _assert_same(a, b)
    fp = FPFT(estimator=GD(), stepsize=(0.2, 3.0))
    _assert_same(_records(fp, quad, [0, 1], "off"), _records(fp, quad, [0, 1], "lean"))


def test_lean_with_an_oracle_without_loss_and_grad(quad):
    method = BernoulliLoRA(p=0.4, rank=2, estimator=GD(), stepsize=0.3)
    oracle = _NoShared(quad)
    for track in (True, False):
        _assert_same(_records(method, oracle, [0, 1], "off", track_every_step=track),
                     _records(method, oracle, [0, 1], "lean", track_every_step=track))


def test_lean_on_the_paper_linreg_and_auto_selects_it():
    prob = make_problem("linreg", size="ci")
    method = BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=1.0 / prob.L)
    kw = dict(steps=70, eval_every=10)
    _assert_same(run(method, prob, prob.W0, [0, 1, 2], graph="off", **kw),
                 run(method, prob, prob.W0, [0, 1, 2], graph="auto", **kw))


def test_a_run_alone_equals_its_row_in_a_batch(quad):
    method = BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=0.3)
    batch = _records(method, quad, list(range(6)), "lean")
    alone = _records(method, quad, [4], "lean")
    for f in RECORDED:
        np.testing.assert_array_equal(alone[f][0], batch[f][4], err_msg=f)


def test_a_broken_lean_step_is_caught(quad, monkeypatch):
    """The comparison above is not vacuous: a lean step that projects every run on the
    side of run 0 (a plausible slip in the mixed-batch branch) is flagged."""
    method = BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=0.3)
    ref = _records(method, quad, [0, 1, 2, 3], "off")

    def one_side(self):
        every, some = self.sides[self.pos]
        self.left, B, PL, A, PR = self.drawn[self.pos]
        if bool(self.left[0]):
            from solvers.projections import project_left_pinv
            return project_left_pinv(B, PL, self.G)
        from solvers.projections import project_right_pinv
        return project_right_pinv(A, PR, self.G)

    monkeypatch.setattr(lean.LeanRun, "_direction", one_side)
    broken = _records(method, quad, [0, 1, 2, 3], "lean")
    with pytest.raises(AssertionError):
        _assert_same(ref, broken)


def test_lean_leaves_other_configurations_to_the_loop(quad):
    cpu = torch.device("cpu")
    assert lean.eligible(BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.1), quad, cpu)
    assert lean.eligible(FPFT(estimator=GD(), stepsize=0.1), quad, cpu)
    assert not lean.eligible(BernoulliLoRA(p=0.5, rank=1, estimator=SGD(noise=0.1), stepsize=0.1), quad, cpu)
    polyak = BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.5, stepsize_rule="polyak", f_star=0.0)
    assert not lean.eligible(polyak, quad, cpu)

    class Sub(BernoulliLoRA):
        pass

    assert not lean.eligible(Sub(p=0.5, rank=1, estimator=GD(), stepsize=0.1), quad, cpu)
    assert not lean.eligible(BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.1), quad, torch.device("cuda"))


def test_fast_mode_lean_agrees_with_the_loop_to_rounding(quad):
    """In fast mode (not batch-invariant by design) the block's pseudo-inverses are one
    batched call, so lean and loop agree to rounding, not bitwise."""
    method = BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=0.3)
    set_invariant(False)
    try:
        a, b = _records(method, quad, [0, 1, 2], "off"), _records(method, quad, [0, 1, 2], "lean")
    finally:
        set_invariant(None)
    for f in ("loss", "grad_norm_sq", "avg_grad_norm_sq", "min_f_gap"):
        np.testing.assert_allclose(b[f], a[f], rtol=1e-9, atol=1e-300, err_msg=f)
