"""Bernoulli-LoRA subgradient method on the non-smooth problems (docs/theory.md#t8, #t9):
constant and Polyak stepsizes against their bounds through the job layer and the
verifier, Polyak's linear convergence on the planted (sharp) l1 problem, the
Polyak step by hand, batch invariance, bad input."""
import math

import numpy as np
import pytest
import torch

from experiments.conf.schema import job_config
from experiments.job import execute
from experiments.problems import make_problem
from solvers.engine import run
from solvers.estimators import Subgradient
from solvers.methods import FPFT, BernoulliLoRA
from theory.verify import verify

L1 = {"problem.m": 4, "problem.n": 3, "problem.n_samples": 24}
MAXAFFINE = {"problem.m": 4, "problem.n": 3}


@pytest.fixture(scope="module")
def l1():
    return make_problem("l1", m=4, n=3, n_samples=24)


def _execute(problem, params, rule, factor, *, method="bernoulli_lora", steps=150, seeds=10, eval_every=25, **kw):
    cfg = job_config(problem=problem, method=method, estimator="subgradient", **params,
                     **{"stepsize.rule": rule, "stepsize.factor": factor}, steps=steps, seeds=seeds,
                     eval_every=eval_every, device="cpu", progress=False, **kw)
    return execute(cfg)


def _verdict(table):
    v = verify(table)
    assert len(v) == 1
    return v.iloc[0]


@pytest.mark.parametrize("problem,params", [("l1", L1), ("maxaffine", MAXAFFINE)])
def test_constant_stepsize_bound_holds(problem, params):
    steps = 150
    t, job = _execute(problem, params, "constant", 1.0, steps=steps, **{"method.p": 0.5, "method.rank": 2})
    assert (t["bound_status"] == "ok").all() and (t["bound_metric"] == "avg_f_gap").all()
    prob = job.problem
    dist0 = float(torch.linalg.norm(prob.W0 - prob.W_star))
    assert job.gamma == pytest.approx(dist0 / (prob.L0 * math.sqrt(steps)), rel=1e-14)  # the bound's minimiser
    v = _verdict(t)
    assert v["verdict"] == "holds", v.to_dict()
    assert 0 < v["tightness"] <= 1
    last = t[t["iteration"] == steps]
    assert (last["avg_f_gap"] < t[t["iteration"] == 0]["f_gap"].to_numpy()).all()  # progress


@pytest.mark.parametrize("factor", [1.0, 1.5])
def test_polyak_bound_holds_and_reaches_1e_6_on_planted_l1(factor):
    steps = 150
    t, job = _execute("l1", L1, "polyak", factor, steps=steps, **{"method.p": 0.5, "method.rank": 2})
    assert (t["bound_status"] == "ok").all() and (t["bound_metric"] == "min_f_gap").all()
    assert job.method.stepsize_rule == "polyak"
    assert job.method.stepsize == pytest.approx(factor * job.lmin_p / job.lmax_p)
    v = _verdict(t)
    assert v["verdict"] == "holds", v.to_dict()
    last = t[t["iteration"] == steps]
    assert (last["f_gap"] < 1e-6).all() and (last["f_gap"] >= 0).all(), last["f_gap"].max()
    assert (last["dist_sq"] < 1e-6).all()  # sharp problem: the iterates converge to W* too


def test_polyak_fpft_and_maxaffine():
    t, _ = _execute("l1", L1, "polyak", 1.0, method="fpft", steps=60, seeds=2, eval_every=20)
    assert _verdict(t)["verdict"] == "holds" and (t[t["iteration"] == 60]["f_gap"] < 1e-6).all()
    t, _ = _execute("maxaffine", MAXAFFINE, "polyak", 1.0, steps=100, seeds=10, **{"method.p": 0.3, "method.rank": 1})
    assert _verdict(t)["verdict"] == "holds"


def test_polyak_factor_outside_0_2_has_no_bound():
    t, _ = _execute("l1", L1, "polyak", 2.5, steps=10, seeds=2, eval_every=5)
    assert t["bound_status"].iloc[0].startswith("not applicable") and t["bound"].isna().all()
    assert _verdict(t)["verdict"] == "not applicable"


def test_polyak_step_by_hand(l1):
    """gamma_0 = kappa (f(W0) - f*) / ||G0||^2 along the sketched direction H(G0)."""
    kappa, seeds = 0.7, [4, 5, 6]
    W0 = l1.W0.expand(3, *l1.shape).clone()
    kw = dict(p=0.5, rank=2, estimator=Subgradient())
    unit = BernoulliLoRA(stepsize=1.0, **kw)  # same coins and sketches: W0 - W1 = H(G0)
    W1_unit, _ = unit.step(W0, unit.init(W0, l1, seeds), l1)
    polyak = BernoulliLoRA(stepsize=kappa, stepsize_rule="polyak", f_star=l1.f_star, **kw)
    W1, state = polyak.step(W0, polyak.init(W0, l1, seeds), l1)
    G0 = l1.subgradient(W0)
    gamma = kappa * (l1.loss(W0) - l1.f_star) / (G0 ** 2).sum((-2, -1))
    torch.testing.assert_close(W1, W0 - gamma[:, None, None] * (W0 - W1_unit), rtol=1e-13, atol=1e-14)
    assert state.step == 1


def test_polyak_at_the_minimiser_does_not_move(l1):
    """f - f* = 0 and G = 0 at W*: the Polyak step is 0, never 0/0."""
    m = BernoulliLoRA(p=0.5, rank=2, estimator=Subgradient(), stepsize=1.0, stepsize_rule="polyak", f_star=0.0)
    traj = run(m, l1, l1.W_star, [0, 1], steps=5)
    assert torch.equal(traj.W, l1.W_star.expand(2, *l1.shape)) and not traj["diverged"].any()
    np.testing.assert_array_equal(traj["f_gap"], 0.0)


@pytest.mark.parametrize("rule", ["constant", "polyak"])
def test_batch_invariance_and_determinism(l1, rule):
    m = BernoulliLoRA(p=0.4, rank=2, sketch="orthonormal", estimator=Subgradient(),
                      stepsize=0.05 if rule == "constant" else 1.0, stepsize_rule=rule, f_star=l1.f_star)
    batch = run(m, l1, l1.W0, range(30, 42), steps=15, eval_every=5)
    again = run(m, l1, l1.W0, range(30, 42), steps=15, eval_every=5)
    assert torch.equal(batch.W, again.W)
    for k in (0, 9):
        alone = run(m, l1, l1.W0, [30 + k], steps=15, eval_every=5)
        assert torch.equal(alone.W[0], batch.W[k])
        for f in ("loss", "min_f_gap", "avg_f_gap", "epochs"):
            np.testing.assert_array_equal(alone[f][0], batch[f][k])


def test_bad_input_fails_with_one_line(l1):
    W0 = l1.W0[None]
    for make, msg in [
        (lambda: BernoulliLoRA(estimator=Subgradient(), stepsize=1.0, stepsize_rule="polyak").init(W0, l1, [0]),
         "^stepsize.rule: 'polyak' needs the optimal value f_star"),
        (lambda: FPFT(estimator=Subgradient(), stepsize=1.0, stepsize_rule="armijo").init(W0, l1, [0]),
         "^stepsize.rule"),
        (lambda: BernoulliLoRA(estimator=Subgradient(), stepsize=-1.0).init(W0, l1, [0]), "^stepsize"),
        (lambda: _execute("l1", L1, "polyak", 1.0, method="lora", steps=2, seeds=1), "^stepsize.rule: polyak"),
        (lambda: _execute("l1", L1, "polyak", 0.0, steps=2, seeds=1), "^stepsize.factor"),
        (lambda: _execute("l1", L1, "newton", 1.0, steps=2, seeds=1), "^stepsize.rule"),
    ]:
        with pytest.raises(ValueError, match=msg) as info:
            make()
        assert "\n" not in str(info.value)
