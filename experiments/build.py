"""From a plain configuration mapping to the objects of one job.

Used by the Hydra app (:mod:`experiments.run`) and by the Hydra-free batch entry
point (:mod:`experiments.sweep`), so both run exactly the same code. The mapping
has the keys of :class:`experiments.conf.schema.RunConf` (problem, method,
estimator, sketch, compressor and stepsize groups; steps, seeds, seed,
eval_every, ...; see docs/design.md#overrides), and is checked against the schema first
(:func:`experiments.conf.check.check_config`), before anything is built.

The stepsize is ``gamma = factor / L`` for smooth problems. For non-smooth ones
(L unknown) the constant stepsize is ``gamma = factor * ||W0 - W*|| / (L0 sqrt(T))``
(the minimiser of the bound of docs/theory.md#t8 when lambda_min^p = lambda_max^p),
and the Polyak rule uses ``factor * lambda_min^p / lambda_max^p``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from experiments.conf.check import check_config
from solvers import registry
from solvers.linalg import one_thread


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU fails early."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not str(name).startswith("cuda:"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {name!r}")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    return torch.device(name)


def _clean(d) -> dict:
    return {k: v for k, v in dict(d or {}).items() if v is not None}


_PROBLEM_CACHE: dict = {}


def build_problem(cfg):
    """The problem of a configuration. Problems are immutable, so the last few
    built are kept in memory: a sweep builds (say) the paper's linreg once."""
    import json

    pc = _clean(cfg["problem"])
    name = pc.pop("name")
    key = json.dumps([name, pc], sort_keys=True, default=str)
    if key not in _PROBLEM_CACHE:
        if len(_PROBLEM_CACHE) >= 4:
            _PROBLEM_CACHE.pop(next(iter(_PROBLEM_CACHE)))
        from experiments.problems import make_problem

        with one_thread():  # LAPACK's bits depend on the thread count (solvers.linalg)
            _PROBLEM_CACHE[key] = make_problem(name, **pc)
    return _PROBLEM_CACHE[key]


def _params(group, cfg) -> dict:
    """The keys of a group without ``name`` and None values, floats as floats (a Hydra
    override ``method.p=1`` is an int; the schema declares a float)."""
    from experiments.conf.check import _fields, group_class

    types = {k: tp for k, (tp, _, _) in _fields(group_class(group, cfg[group])).items()}
    params = {k: (float(v) if types.get(k) is float else v) for k, v in _clean(cfg[group]).items()}
    params.pop("name", None)
    return params


def _named(group, cfg, make):
    """``make()``, with a component's refusal of one of its own keys (``'rank: ...'``)
    named by its full field (``'method.rank: ...'``); the component validates, the
    build only names the group."""
    try:
        return make()
    except ValueError as exc:
        key = str(exc).split(":", 1)[0]
        if key in cfg[group] and key != "name":
            raise ValueError(f"{group}.{exc}") from None
        raise
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None \
                and exc.__traceback__.tb_next.tb_next is None:
            raise ValueError(f"{group} {cfg[group]['name']}: {exc}") from None
        raise


def _component(group, cfg, **context):
    """Build the option of ``group`` that ``cfg`` names: its registered target called
    with the group's keys (None values dropped) and ``context``."""
    target = registry.spec(group, cfg[group]["name"]).target
    params = _params(group, cfg)
    return _named(group, cfg, lambda: target(**params, **context))


def build_estimator(cfg, problem):
    """The estimator, with the groups it uses (``uses``: a compressor, built for the
    block size d = m n of one gradient)."""
    m, n = problem.shape
    spec = registry.spec("estimator", cfg["estimator"]["name"])
    context = {g: _component(g, cfg, d=m * n) for g in spec.uses}
    return _component("estimator", cfg, **context)


def _check_needs(cfg, problem, estimator):
    """Refuse, before any work, a component whose needs the problem does not provide."""
    provides = problem.provides() if hasattr(problem, "provides") else ()
    for group, obj in (("method", None), ("estimator", estimator)):
        spec = registry.spec(group, cfg[group]["name"])
        needs = set(spec.needs) | set(getattr(obj, "needs", ()) or ())
        lacking = registry.missing(needs, provides)
        if lacking:
            need = lacking[0]
            raise ValueError(f"problem.{registry.NEEDS[need]}: {group} {spec.name} needs a problem with "
                             f"{need.replace('_', ' ')} ({registry.NEEDS[need]}); problem {cfg['problem']['name']} "
                             "has none with these settings")


@dataclass
class Job:
    """Everything one job runs: the problem on its device, the method, seeds."""

    problem: Any
    method: Any
    estimator: Any
    seeds: list
    gamma: float
    lmin_p: float
    lmax_p: float
    device: torch.device
    stepsize_rule: str = "constant"
    stepsize_factor: float = 1.0  # gamma = factor / L, or the Polyak rule's factor


_DEVICE_CACHE: dict = {}


def _on_device(problem, device):
    key = (id(problem), str(device))
    if key not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) >= 4:
            _DEVICE_CACHE.pop(next(iter(_DEVICE_CACHE)))
        _DEVICE_CACHE[key] = (problem, problem.to(device, torch.float64))
    return _DEVICE_CACHE[key][1]


def _lambdas(cfg, sketch, m, n):
    """(lambda_min^p, lambda_max^p) of the method: fixed by its theorem
    (:data:`theory.dispatch.METHODS`), else from its ``lambdas`` hook, else NaN."""
    from theory.dispatch import method_lambdas

    name = cfg["method"]["name"]
    fixed = method_lambdas(name)
    if fixed is not None:
        return fixed
    hook = registry.spec("method", name).extra.get("lambdas")
    mc = _params("method", cfg)
    return hook(mc, sketch, m, n) if hook is not None else (float("nan"), float("nan"))


def build_job(cfg) -> Job:
    """Validate the whole configuration (before any work) and build the job."""
    check_config(cfg)
    device = resolve_device(cfg["device"])
    mc = _params("method", cfg)
    mname = cfg["method"]["name"]
    mspec = registry.spec("method", mname)
    rule, factor = cfg["stepsize"]["rule"], float(cfg["stepsize"]["factor"])
    problem = build_problem(cfg)
    m, n = problem.shape
    problem = _on_device(problem, device)
    estimator = build_estimator(cfg, problem)
    required = getattr(estimator, "method_required", None)  # (its field, the method) or None
    if required is not None and required[1] != mname:
        raise ValueError(f"estimator.{required[0]}: {cfg['estimator'][required[0]]!r} needs method={required[1]}")
    _check_needs(cfg, problem, estimator)
    context = {g: _component(g, cfg) for g in mspec.uses}  # the sketch
    sketch = context.get("sketch")
    lmin, lmax = _lambdas(cfg, sketch, m, n)
    L = getattr(problem, "L", float("nan"))
    if L is not None and math.isfinite(L):
        gamma = factor / L
    else:  # non-smooth: gamma = factor * ||W0 - W*|| / (L0 sqrt(T))
        dist0 = float(torch.linalg.norm(problem.W0 - problem.W_star))
        gamma = factor * dist0 / (problem.L0 * math.sqrt(cfg["steps"]))
    step_value = factor * lmin / lmax if rule == "polyak" else gamma
    f_star = getattr(problem, "f_star", None)

    def make_method():
        method = mspec.target(estimator=estimator, stepsize=step_value, stepsize_rule=rule, f_star=f_star,
                              **context, **mc)
        if hasattr(method, "validate"):
            method.validate(m, n)  # its own checks (rank against the shape, rule), before any work
        return method

    method = _named("method", cfg, make_method)
    seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
    return Job(problem=problem, method=method, estimator=estimator, seeds=seeds, gamma=gamma,
               lmin_p=lmin, lmax_p=lmax, device=device, stepsize_rule=rule, stepsize_factor=factor)
