r"""Extending the suite without editing it: a new problem, a new estimator and its
theorem, defined in this file and registered through the public extension points
(:func:`solvers.registry.register`, :func:`theory.dispatch.register_theorem`), run
through the Hydra app (``BLORA_PLUGINS`` names this module), with the bound of the
new theorem attached to every row and ``experiments.verify`` judging it.

The problem, "weighted centres": :math:`f(W) = \frac1N\sum_i \frac{a_i}2\|W - C_i\|_D^2`
(:math:`\|X\|_D^2 = \sum_{jk} D_{jk}X_{jk}^2`, :math:`D` from 0.1 to 1) with weights
:math:`a_i \in [1/2, 2]`, a finite sum with Hessian :math:`\bar a\,\mathrm{diag}(D)`
(so :math:`L = \bar a`, :math:`\mu = \bar a/10`), :math:`W^* = \sum_i a_i C_i / \sum_i a_i`
and :math:`f^* = f(W^*)` in closed form.

The estimator, "halves": a random split of the N samples into two halves I, J
(:math:`N` even) and :math:`G = \tfrac12(g_I + g_J)`, the mean of the two half-batch
gradients; it equals :math:`\nabla f` (up to rounding), so GD's non-convex theorem
(docs/theory.md#t1, on the running average of the squared gradient norms) holds for
it; this file registers that as the theorem "halves" with its own plan.
"""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from experiments.problems.base import Problem, seed_param
from solvers import rng
from solvers.estimators import EstimatorState
from solvers.registry import param, register, unregister
from theory import bounds as bd
from theory import stepsizes as ss
from theory.dispatch import THEOREMS, Theorem, register_theorem

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.test_extension:register_components"


class WeightedCenters(Problem):
    """:math:`f(W) = \\frac1N\\sum_i \\frac{a_i}2\\|W - C_i\\|_D^2` (module docstring)."""

    name = "weighted_centers"

    def __init__(self, m, n, n_samples, seed):
        g = torch.Generator().manual_seed(seed)
        self.shape = (m, n)
        self.n_samples = n_samples
        self.a = 0.5 + 1.5 * torch.rand(n_samples, generator=g, dtype=torch.float64)
        self.C = torch.randn(n_samples, m, n, generator=g, dtype=torch.float64)
        self.D = torch.linspace(0.1, 1.0, m * n, dtype=torch.float64).reshape(m, n)
        self.W0 = torch.zeros(m, n, dtype=torch.float64)
        self.L, self.mu = float(self.a.mean()), 0.1 * float(self.a.mean())
        self.L_max = float(self.a.max())
        self.L_avg = float((self.a ** 2).mean().sqrt())
        self.W_star = (self.a[:, None, None] * self.C).sum(0) / self.a.sum()
        self.f_star = self.f_inf = float(self.loss(self.W_star[None])[0])

    def loss(self, W):
        d = (self.D * (W[:, None] - self.C[None]) ** 2).sum((-2, -1))  # (R, N)
        return 0.5 * (d * self.a).mean(1)

    def grad(self, W):
        return self.D * (self.L * W - (self.a[:, None, None] * self.C).mean(0))

    def minibatch_grad(self, W, idx):
        a, C = self.a[idx], self.C[idx]  # (R, b), (R, b, m, n)
        return self.D * (a[..., None, None] * (W[:, None] - C)).mean(1)


@dataclass
class WeightedCentersConf:
    name: str = "weighted_centers"
    m: int = param(4, ge=1)
    n: int = param(3, ge=1)
    n_samples: int = param(8, ge=2)
    seed: int = seed_param()


def make_weighted_centers(m=4, n=3, n_samples=8, seed=0):
    if n_samples % 2:
        raise ValueError(f"problem.n_samples: must be even (two halves), got {n_samples}")
    return WeightedCenters(m, n, n_samples, seed)


@dataclass
class HalvesConf:
    name: str = "halves"


@dataclass(frozen=True)
class Halves:
    """:math:`G = \\frac12(g_I + g_J)` for a random split I, J of the samples into halves."""

    name = "halves"
    exact_gradient = False

    def _grad(self, W, oracle, seeds, step):
        N = oracle.n_samples
        perm = rng.subset(seeds, rng.Stream.MINIBATCH, step, N, N, device=W.device)  # (R, N)
        return 0.5 * (oracle.minibatch_grad(W, perm[:, : N // 2]) + oracle.minibatch_grad(W, perm[:, N // 2:]))

    def init(self, W, oracle, seeds):
        G = self._grad(W, oracle, seeds, 0)
        z = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
        return EstimatorState(G=G, epochs=z + 1.0, bits=z)

    def update(self, W_new, W_old, state, oracle, seeds, step):
        return state._replace(G=self._grad(W_new, oracle, seeds, step), epochs=state.epochs + 1.0)

    def theory_constants(self, problem):
        return {"G0_err": 0.0}


def _halves_plan(rule, c, polyak_factor):
    """GD's non-convex theorem: the estimator is the exact gradient."""
    return bd.gd_nonconvex, dict(L=c.L, delta0=c.delta0, lmin_p=c.lmin_p), lambda: ss.gd_stepsize(L=c.L)


def register_components():
    """The plug-in hook (``BLORA_PLUGINS=tests.test_extension:register_components``)."""
    register("problem", "weighted_centers", conf=WeightedCentersConf, label="weighted centres",
             replace=True)(make_weighted_centers)
    register("estimator", conf=HalvesConf, needs=("finite_sum",), theorem="halves", label="Halves",
             replace=True)(Halves)
    register_theorem("halves", Theorem(_halves_plan), replace=True)


@pytest.fixture
def registered():
    register_components()
    yield
    unregister("problem", "weighted_centers")
    unregister("estimator", "halves")
    THEOREMS.pop("halves", None)


def _run(module, *args, cwd):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT), BLORA_PLUGINS=PLUGIN)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_new_problem_and_estimator_through_the_hydra_app_with_bound_and_verify(tmp_path):
    r = _run("experiments.run", "problem=weighted_centers", "estimator=halves", "problem.n_samples=6",
             "method.rank=1", "steps=20", "seeds=16", "eval_every=5", "progress=false", "device=cpu",
             f"results_root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from experiments.results import load_results

    table = load_results(tmp_path)
    assert len(table) == 16 * 5  # seeds x evaluation points (0, 5, ..., 20)
    assert set(table["estimator"]) == {"halves"} and set(table["problem"]) == {"weighted_centers"}
    assert set(table["problem_n_samples"]) == {6}  # its declared keys are columns
    assert (table["bound_status"] == "ok").all(), table["bound_status"].iloc[0]
    assert table["bound"].iloc[1:].notna().all() and set(table["bound_metric"]) == {"avg_grad_norm_sq"}
    v = _run("experiments.verify", str(tmp_path), cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "1 groups: 1 holds, 0 violated" in v.stdout, v.stdout


def _tenth(T, **kw):
    return 0.1 * bd.gd_nonconvex(T, **kw)


_tenth.metric, _tenth.anchor = bd.gd_nonconvex.metric, bd.gd_nonconvex.anchor


def test_a_broken_theorem_is_caught_by_verify():
    """The same run with a theorem that claims too much (a tenth of GD's bound) is
    found violated: the test above could fail."""
    def too_good(rule, c, pf):
        return _tenth, dict(L=c.L, delta0=c.delta0, lmin_p=c.lmin_p), lambda: ss.gd_stepsize(L=c.L)

    from experiments.conf.schema import job_config
    from experiments.job import execute

    register_components()
    try:
        register_theorem("halves", Theorem(too_good), replace=True)
        cfg = job_config(problem="weighted_centers", estimator="halves", **{"problem.n_samples": 6,
                         "method.rank": 1}, steps=20, seeds=16, eval_every=5, device="cpu", progress=False)
        table, _ = execute(cfg)
        from theory.verify import verify

        verdicts = verify(table)
        assert (verdicts["verdict"] == "violated").any(), verdicts
    finally:
        unregister("problem", "weighted_centers")
        unregister("estimator", "halves")
        THEOREMS.pop("halves", None)


def test_new_components_are_declared_once_and_checked_before_any_work(registered):
    from experiments.build import build_job
    from experiments.conf.check import check_config, config_columns
    from experiments.conf.schema import GROUPS, job_config
    from figures import style

    assert "halves" in GROUPS["estimator"] and "weighted_centers" in GROUPS["problem"]
    cfg = job_config(problem="weighted_centers", estimator="halves", **{"method.rank": 1})
    check_config(cfg)
    assert config_columns(cfg)["problem_n_samples"] == 8
    with pytest.raises(ValueError, match=r"^problem\.foo: unknown key"):
        check_config(job_config(problem="weighted_centers", **{"problem.foo": 1}))
    with pytest.raises(ValueError, match=r"^problem\.n_samples: must be an integer >= 2"):
        check_config(job_config(problem="weighted_centers", **{"problem.n_samples": 1}))
    # its need (a finite sum) is checked against the problem before the job runs
    with pytest.raises(ValueError, match=r"^problem\.n_samples: estimator halves needs a problem with finite sum"):
        build_job(job_config(problem="quadratic", estimator="halves", device="cpu"))
    assert style.estimator_name("halves") == "Halves"
    assert style.method_label("bernoulli_lora", 0.5, "halves") == "Bernoulli-LoRA-Halves (p=0.5)"
