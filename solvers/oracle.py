r"""What a solver sees of a problem: the oracle protocols (structural typing).

Every array is batched over runs: ``W`` has shape ``(R, m, n)``; the problem's data
is shared by the runs. The solvers call only these members, so any object that has
them is an oracle (``isinstance(obj, Oracle)`` checks that the members exist).
:class:`experiments.problems.base.Problem` is the base class of the suite's
problems, which add their constants (L, mu, f_star, ...) for the bounds.

Which estimator needs which protocol is declared by the estimator
(:func:`solvers.registry.register`, ``needs``): ``finite_sum`` means
:class:`FiniteSumOracle`, ``clients`` :class:`DistributedOracle`.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class Oracle(Protocol):
    """A smooth (or subdifferentiable) objective :math:`f(W)`.

    Attributes
    ----------
    shape : tuple of int
        (m, n), the shape of one iterate.
    n_samples : int or None
        N for finite sums, else None.
    n_clients : int or None
        The number of clients of a distributed problem, else None.

    Optional members, used when present: ``loss_and_grad(W) -> ((R,), (R, m, n))``
    (both from one pass, e.g. linreg's single Qx product; :class:`solvers.estimators.GD`
    then records the loss without a second call) and ``subgradient(W) -> (R, m, n)``
    (non-smooth problems; ``grad`` is then an alias of it).
    """

    shape: tuple
    n_samples: Optional[int]
    n_clients: Optional[int]

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        """f per run, shape (R,)."""

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla f(W)` per run, shape (R, m, n)."""


@runtime_checkable
class FiniteSumOracle(Oracle, Protocol):
    r""":math:`f = \frac1N\sum_i f_i` with per-sample gradients."""

    def minibatch_grad(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        r"""``idx``: int64 (R, b); the mean of :math:`\nabla f_i(W_r)` over ``idx[r]``, (R, m, n)."""


@runtime_checkable
class DistributedOracle(Oracle, Protocol):
    r""":math:`f = \frac1{n_w}\sum_i f_i` split over ``n_clients`` clients."""

    def client_grads(self, W: torch.Tensor) -> torch.Tensor:
        r""":math:`(\nabla f_i(W))_i`, shape (R, n_clients, m, n)."""
