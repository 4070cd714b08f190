r"""The base class of every problem: an oracle (:class:`solvers.oracle.Oracle`) plus
its constants.

A subclass sets, in ``__init__``, at least ``shape`` (m, n), ``W0`` (an (m, n)
tensor) and the constants it knows, and defines ``loss`` and ``grad`` (or
``subgradient``); finite sums add ``n_samples`` and ``minibatch_grad``,
distributed problems ``n_clients`` and ``client_grads``. A constant it does not
set keeps the class default below (unknown: None, or NaN for ``L``), which the bounds read as
"unknown" (:class:`theory.dispatch.Constants`).

The constants, with the notation of docs/theory.md:

============  ==================================================================
``L``         smoothness of f (NaN for non-smooth problems)
``mu``        PL constant (None: not PL)
``L_avg``     mean-squared smoothness :math:`\tilde L` of a finite sum or clients
``L_max``     :math:`\max_i L_i`
``L0``        subgradient bound (non-smooth problems)
``f_star``    :math:`f^\star` (None or NaN if unknown); ``f_inf`` the lower bound of
              the non-convex bounds (None: ``f_star``)
``W_star``    a minimiser (None if unknown)
``delta_inf`` :math:`f_{\inf} - \frac1N\sum_i f_{i,\inf}`
``no_theorem`` a reason why no theorem applies (None: the theorems apply)
============  ==================================================================

Register a problem with :func:`solvers.registry.register` (kind ``'problem'``)
on its factory, with the dataclass of its configuration keys: then
``problem=<name>`` builds it from the Hydra app and the sweep alike.
"""
from __future__ import annotations

import copy
import math

import torch

from solvers.registry import param
from solvers.rng import _MASK32

NAN = float("nan")


def seed_param(default=0):
    """A ``seed`` configuration field: the random streams key a run by the low 32 bits
    of its seed (:mod:`solvers.rng`), so a seed lies in [0, 2**32 - 1]."""
    return param(default, ge=0, le=_MASK32)


class Problem:
    """Shared constants (class defaults: unknown), ``to``, ``provides`` and ``repr``."""

    name = "problem"
    L = NAN
    mu = None
    L_avg = None
    L_max = None
    L0 = None
    f_star = None
    f_inf = None
    W_star = None
    delta_inf = None
    n_samples = None
    n_clients = None
    no_theorem = None

    def to(self, device, dtype=torch.float64):
        """A copy with the floating tensors on ``device`` in ``dtype`` and the other
        tensors (labels, indices) on ``device`` with their dtype; constants stay floats."""
        new = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                kw = dict(device=device, dtype=dtype) if value.is_floating_point() else dict(device=device)
                setattr(new, key, value.to(**kw))
        return new

    def provides(self) -> tuple:
        """What it offers of :data:`solvers.registry.NEEDS`: ``finite_sum`` (``n_samples``),
        ``clients`` (``n_clients``), ``f_star`` (finite), ``W_star`` (known)."""
        out = []
        if self.n_samples:
            out.append("finite_sum")
        if self.n_clients:
            out.append("clients")
        f_star = self.f_star
        if f_star is not None and math.isfinite(float(f_star)):
            out.append("f_star")
        if self.W_star is not None:
            out.append("W_star")
        return tuple(out)

    def numpy_oracle(self):
        """``loss_and_grad`` in numpy for :mod:`solvers.lean`'s numpy iteration (the CPU fast
        mode): a function of ``W`` (R, m, n) returning ``(loss (R,), grad (R, m, n))`` arrays,
        or None where the problem has no numpy form (the default; the torch iteration runs)."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, shape={getattr(self, 'shape', None)})"
