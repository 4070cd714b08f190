"""Problems: oracles with their constants (see ARCHITECTURE.md).

``make_problem(name, **params)`` builds one by name: quadratic, counterexample,
logistic, linreg, l1, maxaffine. Modules are imported lazily.
"""
from __future__ import annotations

import importlib

_REGISTRY = {
    "quadratic": ("experiments.problems.quadratic", "make_quadratic"),
    "counterexample": ("experiments.problems.quadratic", "make_counterexample"),
    "logistic": ("experiments.problems.logistic", "make_logistic"),
    "linreg": ("experiments.problems.linreg", "make_linreg"),
    "l1": ("experiments.problems.nonsmooth", "make_nonsmooth_problem"),
    "maxaffine": ("experiments.problems.nonsmooth", "make_nonsmooth_problem"),
}
PROBLEMS = tuple(_REGISTRY)


def make_problem(name: str, **params):
    """Build a problem by name; unknown names and parameters fail with one line."""
    if name not in _REGISTRY:
        raise ValueError(f"problem: unknown name {name!r}; choose one of {sorted(_REGISTRY)}")
    module, factory = _REGISTRY[name]
    fn = getattr(importlib.import_module(module), factory)
    if factory == "make_nonsmooth_problem":
        params = dict(params, name=name)
    try:
        return fn(**params)
    except TypeError as exc:
        raise ValueError(f"problem.{name}: {exc}") from None
