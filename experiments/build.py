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
from experiments.conf.schema import USED_BY
from solvers.estimators import make_estimator
from solvers.linalg import one_thread
from solvers.methods import make_method
from solvers.sketches import lambda_p, make_sketch

_FACTOR_METHODS = {"lora", "asymm_lora", "cola"}


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

    from experiments.problems import make_problem

    pc = _clean(cfg["problem"])
    name = pc.pop("name")
    key = json.dumps([name, pc], sort_keys=True, default=str)
    if key not in _PROBLEM_CACHE:
        if len(_PROBLEM_CACHE) >= 4:
            _PROBLEM_CACHE.pop(next(iter(_PROBLEM_CACHE)))
        with one_thread():  # LAPACK's bits depend on the thread count (solvers.linalg)
            _PROBLEM_CACHE[key] = make_problem(name, **pc)
    return _PROBLEM_CACHE[key]


def build_estimator(cfg, problem):
    ec = _clean(cfg["estimator"])
    name = ec.pop("name")
    if name in USED_BY["compressor"][1]:
        from solvers.compressors import make_compressor
        from solvers.distributed import make_distributed_estimator

        cc = _clean(cfg["compressor"])
        m, n = problem.shape
        comp = make_compressor(cc.pop("name"), d=m * n, **cc)
        return make_distributed_estimator(name, compressor=comp, **ec)
    return make_estimator(name, **ec)


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


_DEVICE_CACHE: dict = {}


def _on_device(problem, device):
    key = (id(problem), str(device))
    if key not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) >= 4:
            _DEVICE_CACHE.pop(next(iter(_DEVICE_CACHE)))
        _DEVICE_CACHE[key] = (problem, problem.to(device, torch.float64))
    return _DEVICE_CACHE[key][1]


def build_job(cfg) -> Job:
    """Validate the whole configuration (before any work) and build the job."""
    check_config(cfg)
    device = resolve_device(cfg["device"])
    mc = _clean(cfg["method"])
    mname = mc.pop("name")
    sketch = make_sketch(**_clean(cfg["sketch"]))  # the group's keys are the sketch's parameters
    rule, factor = cfg["stepsize"]["rule"], float(cfg["stepsize"]["factor"])
    p, rank = mc.get("p"), mc.get("rank")
    if rule == "polyak" and mname not in ("bernoulli_lora", "fpft"):
        raise ValueError("stepsize.rule: polyak is implemented for bernoulli_lora and fpft only")
    if cfg["estimator"].get("transmit") == "factor" and mname != "bernoulli_lora":
        raise ValueError("estimator.transmit: 'factor' needs method=bernoulli_lora (clients project on its sketch)")
    problem = build_problem(cfg)
    m, n = problem.shape
    if rank is not None and not rank <= min(m, n):
        raise ValueError(f"method.rank: must be an integer in [1, min(m, n) = {min(m, n)}], got {rank!r}")
    problem = _on_device(problem, device)
    estimator = build_estimator(cfg, problem)
    if mname == "bernoulli_lora":
        lmin, lmax = lambda_p(sketch, float(p), m, n, rank)
    elif mname == "fpft":
        lmin = lmax = 1.0
    else:
        lmin = lmax = float("nan")
    L = getattr(problem, "L", float("nan"))
    if L is not None and math.isfinite(L):
        gamma = factor / L
    else:  # non-smooth: gamma = factor * ||W0 - W*|| / (L0 sqrt(T))
        dist0 = float(torch.linalg.norm(problem.W0 - problem.W_star))
        gamma = factor * dist0 / (problem.L0 * math.sqrt(cfg["steps"]))
    if rule == "polyak":
        step_value = factor * lmin / lmax
    else:
        step_value = gamma
    if mname in ("bernoulli_lora", "fpft"):
        kw = dict(estimator=estimator, stepsize=step_value, stepsize_rule=rule, f_star=getattr(problem, "f_star", None))
        if mname == "bernoulli_lora":
            kw.update(p=float(p), rank=rank, sketch=sketch)
        if getattr(estimator, "transmit", "weights") == "factor":
            from solvers.distributed import FactorQGDBernoulliLoRA

            method = FactorQGDBernoulliLoRA(**kw)
        else:
            method = make_method(mname, **kw)
    elif mname in _FACTOR_METHODS:
        method = make_method(mname, estimator=estimator, stepsize=gamma, **mc)
    else:
        method = make_method(mname)  # raises the clear unknown-name error
    seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
    return Job(problem=problem, method=method, estimator=estimator, seeds=seeds, gamma=gamma,
               lmin_p=lmin, lmax_p=lmax, device=device)
