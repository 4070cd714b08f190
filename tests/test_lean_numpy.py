"""The numpy iteration of the CPU fast mode (solvers.lean.NumpyLeanRun): the same iteration
as the engine's general loop in fast mode, to rounding (other kernels: numpy's BLAS and
sums), over sketches, coins, batch sizes, tracking, evaluation points, block refills and
divergence; chosen by ``graph='auto'`` in fast mode only, for problems with a numpy oracle;
a broken numpy step is caught by the same comparison."""
import warnings

import numpy as np
import pytest
import torch

from experiments.problems import make_problem
from experiments.problems.base import Problem
from solvers import lean
from solvers.engine import FIELDS, run
from solvers.estimators import GD
from solvers.linalg import kernels, set_invariant
from solvers.methods import FPFT, BernoulliLoRA

RECORDED = tuple(f for f in FIELDS if f != "time_s")
EXACT = ("iteration", "epochs", "bits", "diverged")  # counts and masks: equal, not close


@pytest.fixture(scope="module")
def quad():
    return make_problem("quadratic", m=6, n=5, mu=0.5, L=3.0)


@pytest.fixture
def fast():
    set_invariant(False)
    yield
    set_invariant(None)


def _records(method, prob, seeds, graph, **kw):
    kw = dict(dict(steps=150, eval_every=10, track_every_step=True), **kw)
    return run(method, prob, prob.W0, seeds, graph=graph, **kw)


def _assert_close(a, b):
    """Every recorded field: counts and masks equal, the NaN pattern equal, values equal to
    1e-11 of the field's largest magnitude (the values decay towards 0 geometrically: a
    relative tolerance per entry would compare rounding noise at the end)."""
    for f in RECORDED:
        x, y = np.asarray(a[f], dtype=np.float64), np.asarray(b[f], dtype=np.float64)
        if f in EXACT:
            np.testing.assert_array_equal(y, x, err_msg=f)
            continue
        np.testing.assert_array_equal(np.isnan(y), np.isnan(x), err_msg=f)
        scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 1.0
        np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-11 * scale, err_msg=f)
    np.testing.assert_allclose(b.W.numpy(), a.W.numpy(), rtol=1e-9, atol=1e-11 * float(a.W.abs().max()))


def _runner(method, prob, seeds, graph="auto"):
    """The runner the engine would pick (spy on make_lean)."""
    picked = []
    make = lean.make_lean

    def spy(*args, **kw):
        picked.append(make(*args, **kw))
        return picked[-1]

    import solvers.engine as engine
    orig = engine.make_lean
    engine.make_lean = spy
    try:
        run(method, prob, prob.W0, seeds, steps=3, graph=graph)
    finally:
        engine.make_lean = orig
    return type(picked[0]) if picked[0] is not None else None


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal", "rademacher", "column"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_numpy_iteration_is_the_loop_to_rounding(quad, fast, sketch, p):
    method = BernoulliLoRA(p=p, rank=2, sketch=sketch, estimator=GD(), stepsize=0.3)
    for seeds in ([3], [0, 1, 2, 3, 4]):
        _assert_close(_records(method, quad, seeds, "off"), _records(method, quad, seeds, "auto"))


@pytest.mark.parametrize("track,eval_every", [(True, 1), (True, 7), (False, 7), (False, 200)])
def test_numpy_tracking_evaluation_points_and_refills(quad, fast, monkeypatch, track, eval_every):
    monkeypatch.setattr(lean, "BLOCK_ENTRIES", 1)  # rng.BLOCK steps a block: refills mid-run
    method = BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.3)
    kw = dict(track_every_step=track, eval_every=eval_every, steps=140)
    _assert_close(_records(method, quad, [0, 1, 2], "off", **kw), _records(method, quad, [0, 1, 2], "auto", **kw))


def test_numpy_freezes_diverging_runs_like_the_loop_without_warnings(quad, fast):
    method = BernoulliLoRA(p=(0.3, 0.5, 0.7, 0.2, 1.0), rank=3, estimator=GD(), stepsize=(0.25, 9.0, 0.3, 5.0, 0.1))
    for track in (True, False):
        a = _records(method, quad, [0, 1, 2, 3, 4], "off", track_every_step=track, eval_every=3, steps=400)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an overflowing run is frozen, not warned about
            b = _records(method, quad, [0, 1, 2, 3, 4], "auto", track_every_step=track, eval_every=3, steps=400)
        assert a["diverged"][:, -1].tolist() == [False, True, False, True, False]
        _assert_close(a, b)
    fp = FPFT(estimator=GD(), stepsize=(0.2, 3.0))
    _assert_close(_records(fp, quad, [0, 1], "off"), _records(fp, quad, [0, 1], "auto"))
    # every run diverges: the engine stops stepping and repeats the frozen values
    both = BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=(8.0, 12.0))
    a, b = _records(both, quad, [0, 1], "off", steps=300), _records(both, quad, [0, 1], "auto", steps=300)
    assert a["diverged"][:, -1].all() and not a["diverged"][:, 0].any()
    _assert_close(a, b)


def test_numpy_iteration_on_an_isotropic_quadratic(fast):
    prob = make_problem("isotropic", m=5, n=4, L=2.0)
    method = BernoulliLoRA(p=0.6, rank=2, estimator=GD(), stepsize=0.4)
    assert _runner(method, prob, [0, 1]) is lean.NumpyLeanRun
    _assert_close(_records(method, prob, [0, 1], "off"), _records(method, prob, [0, 1], "auto"))


def test_a_broken_numpy_step_is_caught(quad, fast, monkeypatch):
    """The comparison is not vacuous: a numpy step that projects every run on the side
    of run 0 (a slip in the mixed-batch branch) is flagged."""
    method = BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=0.3)
    ref = _records(method, quad, [0, 1, 2, 3], "off")
    direction = lean.NumpyLeanRun._direction

    def one_side(self):
        every, some = self.sides[self.pos]
        first = bool(self.coins[self.pos][0])
        self.sides[self.pos] = (first, first)
        try:
            return direction(self)
        finally:
            self.sides[self.pos] = (every, some)

    monkeypatch.setattr(lean.NumpyLeanRun, "_direction", one_side)
    with pytest.raises(AssertionError):
        _assert_close(ref, _records(method, quad, [0, 1, 2, 3], "auto"))


def test_numpy_iteration_is_chosen_only_in_fast_mode_for_numpy_oracles(quad):
    method = BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.1)
    assert kernels("cpu") == "invariant" and kernels("cuda") == "fast"
    assert _runner(method, quad, [0]) is lean.LeanRun  # invariant mode: the torch iteration
    set_invariant(False)
    try:
        assert kernels("cpu") == "fast"
        assert _runner(method, quad, [0]) is lean.NumpyLeanRun
        assert _runner(method, quad, [0], graph="lean") is lean.LeanRun  # asked for by name
        assert _runner(method, quad, [0], graph="off") is None
        linreg = make_problem("linreg", size="ci")  # no numpy oracle: the torch iteration
        assert linreg.numpy_oracle() is None
        assert _runner(BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=0.1), linreg, [0]) is lean.LeanRun
    finally:
        set_invariant(None)


def test_quadratic_numpy_oracle_is_its_loss_and_grad(quad):
    W = quad.W0 + torch.linspace(-1, 1, 3 * 30, dtype=torch.float64).reshape(3, 6, 5)
    loss, G = quad.loss_and_grad(W)
    nloss, nG = quad.numpy_oracle()(W.numpy())
    np.testing.assert_allclose(nloss, loss.numpy(), rtol=1e-13)
    np.testing.assert_allclose(nG, G.numpy(), rtol=1e-13, atol=1e-15)
    assert Problem().numpy_oracle() is None
    clients = make_problem("quadratic", m=4, n=3, n_samples=40, n_clients=4)
    assert clients.numpy_oracle() is None  # the clients' mean gradient is another formula
