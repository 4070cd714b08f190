r"""One iteration of the engine, shared by its own loop (:mod:`solvers.engine`) and the
fused block path (:mod:`solvers.fused`), so that the two compute the same thing.

The carried values (:class:`Carry`) are the iterate, the method's state, the loss and
gradient at the iterate, the running statistics and the divergence mask. One iteration
(:func:`advance`):

1. with ``track``, adds the current iterate's :math:`f - f^*` and
   :math:`\|\nabla f\|^2` to the running statistics of the live runs;
2. takes the method's step (``step_fn``), keeping the epochs and bits of frozen runs;
3. with ``evaluate``, evaluates loss and gradient at the new iterate and marks (and
   freezes) the runs whose loss or iterate stopped being finite or whose loss exceeds
   ``limit``; without it (a step between evaluation points when not tracking) loss,
   gradient and masks are left as they were.

Nothing here synchronises with the host: the masks are updated unconditionally.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from solvers.linalg import run_sum


def _xp(t):
    """The array library of ``t``: numpy for an ndarray (:class:`solvers.lean.NumpyLeanRun`),
    else torch; the helpers below are written once for both."""
    return np if isinstance(t, np.ndarray) else torch


class RunningStats(NamedTuple):
    r"""Per-run running sums and minima of :math:`\|\nabla f\|^2` and :math:`f - f^*`
    over the iterates of a run while it is live, and how many there were (R,) each
    (torch tensors, or numpy arrays in :class:`solvers.lean.NumpyLeanRun`)."""

    sum_g: torch.Tensor
    sum_f: torch.Tensor
    min_g: torch.Tensor
    min_f: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, R, device):
        z = torch.zeros(R, dtype=torch.float64, device=device)
        inf = torch.full_like(z, math.inf)
        return cls(z, z.clone(), inf, inf.clone(), z.clone())

    def add(self, gap, g2, live):
        """Add one iterate's ``gap`` and ``g2`` (R,) to the runs where ``live`` (R,) bool."""
        xp = _xp(self.sum_g)
        return RunningStats(xp.where(live, self.sum_g + g2, self.sum_g),
                            xp.where(live, self.sum_f + gap, self.sum_f),
                            xp.where(live, xp.minimum(self.min_g, g2), self.min_g),
                            xp.where(live, xp.minimum(self.min_f, gap), self.min_f),
                            self.count + live)  # float64 + bool: + 1.0 where live

    def add_live_(self, gap, g2):
        """:meth:`add` with every run live, in place (the same values: ``where`` with an
        all-true mask is the identity); returns ``self``."""
        xp, (sum_g, sum_f, min_g, min_f, count) = _xp(self.sum_g), self
        sum_g += g2
        sum_f += gap
        xp.minimum(min_g, g2, out=min_g)
        xp.minimum(min_f, gap, out=min_f)
        count += 1.0
        return self


class Carry(NamedTuple):
    """What one iteration reads and writes."""

    W: torch.Tensor  # (R, m, n)
    state: Any  # the method's state (solvers.methods.MethodState)
    loss: torch.Tensor  # (R,) at W (as of the last evaluation)
    grad: torch.Tensor  # (R, m, n) at W (as of the last evaluation)
    stats: RunningStats
    diverged: torch.Tensor  # (R,) bool


def as_f64(t):
    """``t`` in float64 (itself when it already is: no copy, no kernel)."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float64, copy=False)
    return t if t.dtype == torch.float64 else t.to(torch.float64)


def diverging(loss, W, limit):
    """Runs whose loss is not finite or exceeds ``limit`` (R,), or whose iterate is not finite."""
    xp = _xp(W)
    return ~xp.isfinite(loss) | (abs(loss) > limit) | ~xp.isfinite(W).all(-1).all(-1)


def record_values(*, epochs, bits, loss, g2, dist, stats, diverged, f_star, tracked, nan) -> dict:
    """The per-run fields the engine records at an evaluation point, by name (torch tensors
    or numpy arrays alike): ``loss`` and the squared norms ``g2`` of the gradient and
    ``dist`` of :math:`W - W^*` in float64, the running statistics as averages and minima
    where ``tracked`` (else ``nan``, an all-NaN per-run vector)."""
    sum_g, sum_f, min_g, min_f, count = stats
    return {"epochs": epochs, "bits": bits, "loss": loss, "f_gap": loss - f_star, "grad_norm_sq": g2,
            "dist_sq": dist, "avg_grad_norm_sq": sum_g / count if tracked else nan,
            "min_grad_norm_sq": min_g if tracked else nan, "avg_f_gap": sum_f / count if tracked else nan,
            "min_f_gap": min_f if tracked else nan, "diverged": diverged}


def loss_and_grad(oracle, W):
    """``(loss, grad)`` at ``W`` (one shared call where the oracle has ``loss_and_grad``)."""
    if hasattr(oracle, "loss_and_grad"):
        return oracle.loss_and_grad(W)
    grad = oracle.subgradient if hasattr(oracle, "subgradient") and not hasattr(oracle, "grad") else oracle.grad
    return oracle.loss(W), grad(W)


def current(method, oracle, W, state):
    """``(loss, grad)`` at ``W``: an exact-gradient estimator's G (and its loss, when it got
    one from the same oracle call) is reused, else the oracle is evaluated."""
    if getattr(getattr(method, "estimator", None), "exact_gradient", False):
        return (state.est.loss if state.est.loss is not None else oracle.loss(W)), state.est.G
    return loss_and_grad(oracle, W)


def keep_frozen_costs(before, after):
    """``after`` (a method state) with the epochs and bits of the runs frozen in ``before``
    (``~before.active``) restored: a frozen run does no work (the method keeps its iterate)."""
    live, b, a = before.active, before.est, after.est
    return after._replace(est=a._replace(epochs=torch.where(live, a.epochs, b.epochs),
                                         bits=torch.where(live, a.bits, b.bits)))


def advance(carry, step_fn, *, method, oracle, f_star, limit, track, evaluate) -> Carry:
    """One iteration (module docstring); ``step_fn(W, state) -> (W, state)`` is the method's step."""
    W, state, loss, grad, stats, diverged = carry
    # the running sums cover iterates 0..t-1 of the live runs: add W_{t-1} before stepping
    if track:
        stats = stats.add(loss.to(torch.float64) - f_star, run_sum(grad.to(torch.float64) ** 2), ~diverged)
    W_new, new = step_fn(W, state)
    new = keep_frozen_costs(state, new)
    if evaluate:
        loss, grad = current(method, oracle, W_new, new)
        diverged = diverged | diverging(loss, W_new, limit)
        new = new._replace(active=new.active & ~diverged)
    return Carry(W_new, new, loss, grad, stats, diverged)
