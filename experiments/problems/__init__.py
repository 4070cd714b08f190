"""Problems: oracles with their constants (see ARCHITECTURE.md).

``make_problem(name, **params)`` builds one by name:

========================  ===============================================================
``quadratic``             :func:`experiments.problems.quadratic.make_quadratic`
``isotropic``             :func:`experiments.problems.quadratic.make_isotropic` (mu = L)
``counterexample``        :func:`experiments.problems.quadratic.make_counterexample`
``logistic``              :func:`experiments.problems.logistic.make_logistic`
``linreg``                :func:`experiments.problems.linreg.make_linreg`
``l1``, ``maxaffine``     :func:`experiments.problems.nonsmooth.make_nonsmooth_problem`
========================  ===============================================================

Modules are imported lazily (a name's module is imported when that name is built), so
e.g. the non-smooth module may be absent without breaking the others. An unknown name,
an unknown parameter or a bad value fails with one ``ValueError`` line naming the field.
"""
from __future__ import annotations

import importlib

_REGISTRY = {
    "quadratic": ("experiments.problems.quadratic", "make_quadratic"),
    "isotropic": ("experiments.problems.quadratic", "make_isotropic"),
    "counterexample": ("experiments.problems.quadratic", "make_counterexample"),
    "logistic": ("experiments.problems.logistic", "make_logistic"),
    "linreg": ("experiments.problems.linreg", "make_linreg"),
    "l1": ("experiments.problems.nonsmooth", "make_nonsmooth_problem"),
    "maxaffine": ("experiments.problems.nonsmooth", "make_nonsmooth_problem"),
}
PROBLEMS = tuple(_REGISTRY)
_NEEDS_NAME = {"make_nonsmooth_problem"}  # factories serving several names


def make_problem(name: str, **params):
    """Build the problem called ``name`` with keyword ``params``.

    Raises
    ------
    ValueError
        ``problem: unknown name ...`` for a name not in :data:`PROBLEMS`;
        ``problem.<name>: ...`` for a parameter the factory does not take;
        ``problem.<field>: ...`` from the factory for a bad value.
    """
    if name not in _REGISTRY:
        raise ValueError(f"problem: unknown name {name!r}; choose one of {sorted(_REGISTRY)}")
    module, factory = _REGISTRY[name]
    fn = getattr(importlib.import_module(module), factory)
    if factory in _NEEDS_NAME:
        params = dict(params, name=name)
    try:
        return fn(**params)
    except TypeError as exc:
        # only a bad call signature is translated; a TypeError raised inside the
        # factory is a bug and keeps its traceback
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            raise ValueError(f"problem.{name}: {exc}") from None
        raise
