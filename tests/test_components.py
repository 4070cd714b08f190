"""The components describe themselves (solvers/registry.py): one declaration per
component, read by the schema, the build, the bounds and the figures; the
build and the bounds do not switch on component names."""
import ast
from pathlib import Path

import pytest
import torch

from experiments.build import build_job
from experiments.conf.schema import job_config
from solvers import registry

ROOT = Path(__file__).resolve().parents[1]


def _names():
    return {name for kind in registry.KINDS for name in registry.specs(kind)}


def _named_in_code(text) -> list:
    """Component names that occur as string constants in code (docstrings and the
    default values of keyword arguments aside)."""
    tree = ast.parse(text)
    docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)}
    docs |= {id(d) for node in ast.walk(tree) if isinstance(node, ast.arguments)
             for d in (*node.defaults, *node.kw_defaults) if d is not None}
    consts = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
              and isinstance(node.value, str) and id(node) not in docs}
    return sorted(consts & _names())


@pytest.mark.parametrize("path", ["experiments/build.py", "experiments/job.py", "theory/dispatch.py",
                                  "experiments/conf/check.py"])
def test_no_component_name_is_switched_on(path):
    """No component name (``"qgd"``, ``'lora'``, ...) in the code that builds, checks,
    tabulates and bounds a job: what differs between components is declared by them."""
    assert _named_in_code((ROOT / path).read_text()) == []


def test_the_name_switch_detector_catches_one():
    code = '"""gd and lora in a docstring are fine."""\nif name in ("qgd", "marina", "ef21"):\n    pass\n'
    assert _named_in_code(code) == ["ef21", "marina", "qgd"]


def test_used_by_is_derived_from_the_declared_uses():
    from experiments.conf.schema import USED_BY

    assert USED_BY == {"sketch": ("method", ("bernoulli_lora",)), "compressor": ("estimator", ("qgd", "marina", "ef21"))}


def test_register_refuses_bad_declarations():
    from dataclasses import dataclass

    @dataclass
    class C:
        name: str = "x"

    with pytest.raises(ValueError, match="^kind:"):
        registry.register("optimizer", "x", conf=C)
    with pytest.raises(ValueError, match="^needs:"):
        registry.register("estimator", "x", conf=C, needs=("gpu",))
    with pytest.raises(ValueError, match="^conf:"):
        registry.register("estimator", "x", conf=dict)
    with pytest.raises(ValueError, match="^estimator: 'gd' is registered already"):
        registry.register("estimator", "gd", conf=C)(object)
    with pytest.raises(ValueError, match="^estimator: unknown name 'nope'"):
        registry.spec("estimator", "nope")


def test_a_plugin_that_cannot_be_imported_is_named_in_one_line():
    with pytest.raises(ValueError, match=r"^BLORA_PLUGINS: cannot import 'no_such_module_xyz'") as info:
        registry.load_plugins("no_such_module_xyz")
    assert "\n" not in str(info.value)


def test_page_q_is_written_once():
    from solvers.estimators import PAGE
    from theory.dispatch import Constants, bound_for
    from theory.stepsizes import page_q

    assert PAGE(batch=10).prob(90) == page_q(10, 90) == 0.1
    assert PAGE(batch=10, q=0.3).prob(90) == 0.3
    c = Constants(L=2.0, L_avg=3.0, delta0=1.0, G0_err=0.0, batch=10, n_samples=90, lmin_p=0.3, lmax_p=0.3)
    assert bound_for("page", iterations=[5], gamma=0.01, c=c).values[0] == \
        bound_for("page", iterations=[5], gamma=0.01, c=c.replace(q=0.1)).values[0]
    # the runner passes the q the solver used
    job = build_job(job_config(problem="logistic", estimator="page", **{"problem.n_samples": 60,
                                                                      "estimator.batch": 6}, device="cpu"))
    from experiments.job import theory_constants

    assert theory_constants(job).q == job.estimator.prob(60) == 6 / 66


@pytest.mark.parametrize("kw, field", [
    ({"method.rank": 7}, r"^method\.rank: must be an integer in \[1, min\(m, n\) = 6\], got 7$"),
    (dict(method="lora", **{"stepsize.rule": "polyak"}), r"^stepsize\.rule: polyak is not implemented for lora"),
    (dict(method="fpft", problem="logistic", estimator="qgd", **{"problem.n_clients": 2, "estimator.transmit": "factor"}),
     r"^estimator\.transmit: 'factor' needs method=bernoulli_lora$"),
    (dict(estimator="page"), r"^problem\.n_samples: estimator page needs a problem with finite sum"),
    (dict(estimator="ef21"), r"^problem\.n_clients: estimator ef21 needs a problem with clients"),
    (dict(problem="logistic", estimator="page", **{"estimator.q": 1.5}), r"^estimator\.q: must lie in \(0, 1\]"),
])
def test_component_checks_refuse_before_any_work_naming_the_field(kw, field):
    """The components validate their own values (once); the build runs those checks
    before the job is claimed or run, and names the field."""
    with pytest.raises(ValueError, match=field) as info:
        build_job(job_config(device="cpu", **kw))
    assert "\n" not in str(info.value)


def test_problems_share_the_base_class_and_satisfy_the_oracle_protocols():
    from experiments.problems import make_problem
    from experiments.problems.base import Problem
    from solvers.oracle import DistributedOracle, FiniteSumOracle, Oracle

    cases = {"quadratic": {}, "isotropic": {}, "counterexample": {}, "logistic": {"n_clients": 2},
             "l1": {}, "maxaffine": {}}
    for name, kw in cases.items():
        prob = make_problem(name, **kw)
        assert isinstance(prob, Problem) and isinstance(prob, Oracle), name
    logi = make_problem("logistic", n_clients=2)
    assert isinstance(logi, FiniteSumOracle) and isinstance(logi, DistributedOracle)
    assert set(logi.provides()) == {"finite_sum", "clients", "f_star", "W_star"}
    assert "finite_sum" not in make_problem("quadratic").provides()
    moved = logi.to("cpu", torch.float32)  # the shared to(): floats change dtype, labels keep int64
    assert moved.W0.dtype == torch.float32 and logi.W0.dtype == torch.float64
    ints = [k for k, v in vars(logi).items() if isinstance(v, torch.Tensor) and not v.is_floating_point()]
    assert ints and all(getattr(moved, k).dtype == getattr(logi, k).dtype for k in ints)
