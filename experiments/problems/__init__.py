"""Problems: oracles with their constants (:class:`experiments.problems.base.Problem`,
the oracle protocol :class:`solvers.oracle.Oracle`; see ARCHITECTURE.md).

``make_problem(name, **params)`` builds one by name from the registry
(:mod:`solvers.registry`, kind ``'problem'``); each module registers its factories
with their configuration dataclass:

========================  ===============================================================
``quadratic``             :func:`experiments.problems.quadratic.make_quadratic`
``isotropic``             :func:`experiments.problems.quadratic.make_isotropic` (mu = L)
``counterexample``        :func:`experiments.problems.quadratic.make_counterexample`
``logistic``              :func:`experiments.problems.logistic.make_logistic`
``linreg``                :func:`experiments.problems.linreg.make_linreg`
``l1``, ``maxaffine``     :func:`experiments.problems.nonsmooth.make_l1`, ``make_maxaffine``
========================  ===============================================================

An unknown name, an unknown parameter or a bad value fails with one ``ValueError``
line naming the field.
"""
from __future__ import annotations

from experiments.problems import linreg, logistic, nonsmooth, quadratic  # noqa: F401  (they register)
from solvers import registry

PROBLEMS = tuple(registry.specs("problem"))


def make_problem(name: str, **params):
    """Build the problem called ``name`` with keyword ``params``.

    Raises
    ------
    ValueError
        ``problem: unknown name ...`` for a name not registered;
        ``problem.<name>: ...`` for a parameter the factory does not take;
        ``problem.<field>: ...`` from the factory for a bad value.
    """
    fn = registry.spec("problem", name).target
    try:
        return fn(**params)
    except TypeError as exc:
        # only a bad call signature is translated; a TypeError raised inside the
        # factory is a bug and keeps its traceback
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            raise ValueError(f"problem.{name}: {exc}") from None
        raise
