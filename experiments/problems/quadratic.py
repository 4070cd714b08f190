r"""Quadratic problems with known minimiser: the controlled test bed of the theory.

``quadratic``:

.. math::

    f(W) = \tfrac12\,\operatorname{vec}(W - W^*)^\top Q\,\operatorname{vec}(W - W^*),
    \qquad Q = U \operatorname{diag}(s) U^\top,

``vec`` row-major, U Haar-orthogonal from the seed and the spectrum ``s`` log-spaced
from ``mu`` to ``L`` (both attained). Then f is L-smooth and mu-strongly convex
(hence PL with mu): :math:`\nabla f(W) = \operatorname{mat}(Q\operatorname{vec}(W-W^*))`,
:math:`f^* = 0` at :math:`W^*`. ``mu == L`` gives :math:`f = \tfrac L2\|W - W^*\|_F^2`,
computed without forming Q (any size).

``counterexample``: RAC-LoRA's 3x3 quadratic (9 variables) with
:math:`Q = M = \operatorname{Diag}(10, 1, \dots, 1)` (L = 10, mu = 1),
:math:`W_0 = 0` and the full-rank :math:`W^* = 4 I_3`. A rank-1 LoRA without merging
can only reach rank-1 points, so it stalls at a non-optimal stationary point with
small steps; at gamma = 1/L the factor dynamics have curvature
:math:`L(\|A\|^2 + \|B\|^2)` which exceeds 2/gamma once the factors grow towards
:math:`\|W^*\|`, so it diverges. Weight-space methods (RAC-LoRA, Bernoulli-LoRA)
merge every step and converge to :math:`W^*`.
"""
from __future__ import annotations

import math

import torch

from solvers import rng
from solvers.linalg import shared_matmul


def _check_int(field, value, low):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"problem.{field}: must be an integer >= {low}, got {value!r}")


def _check_pos(field, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"problem.{field}: must be a finite number > 0, got {value!r}")


class Quadratic:
    """Quadratic oracle batched over runs; see the module docstring."""

    def __init__(self, *, name, W_star, W0, L, mu, Q=None):
        self.name = name
        self.shape = tuple(W_star.shape)
        self.W_star, self.W0, self.Q = W_star, W0, Q
        self.L, self.mu = float(L), float(mu)
        self.L_avg = self.L_max = self.L0 = self.sigma2 = None
        self.f_star = self.f_inf = 0.0
        self.n_samples = self.n_clients = None
        if not (torch.isfinite(W_star).all() and torch.isfinite(W0).all()):
            raise ValueError("problem: non-finite data")

    def _hv(self, D):
        """Q vec(D) reshaped, for D (R, m, n)."""
        if self.Q is None:
            return self.L * D
        return shared_matmul(D.reshape(D.shape[0], -1), self.Q).reshape(D.shape)

    def loss(self, W):
        D = W - self.W_star
        return 0.5 * (D * self._hv(D)).sum((-2, -1))

    def grad(self, W):
        return self._hv(W - self.W_star)

    def loss_and_grad(self, W):
        D = W - self.W_star
        G = self._hv(D)
        return 0.5 * (D * G).sum((-2, -1)), G

    def to(self, device=None, dtype=torch.float64):
        conv = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
        return Quadratic(name=self.name, W_star=conv(self.W_star), W0=conv(self.W0), L=self.L, mu=self.mu,
                         Q=conv(self.Q))


def make_quadratic(m=8, n=6, mu=1.0, L=10.0, seed=0, max_dense=4096):
    """Quadratic with spectrum log-spaced in [mu, L]; ``mu == L`` is isotropic."""
    _check_int("m", m, 1)
    _check_int("n", n, 1)
    _check_pos("mu", mu)
    _check_pos("L", L)
    _check_int("seed", seed, 0)
    if mu > L:
        raise ValueError(f"problem.mu: must be <= L = {L}, got {mu}")
    s = torch.tensor([seed])
    W_star = rng.normal(s, rng.Stream.DATA, 0, (m, n))[0]
    W0 = torch.zeros(m, n, dtype=torch.float64)
    Q = None
    if mu < L:
        d = m * n
        if d > max_dense:
            raise ValueError(f"problem.m: mu < L needs a dense {d} x {d} Hessian; keep m*n <= {max_dense} "
                             f"or set mu = L")
        G = rng.normal(s, rng.Stream.DATA, 1, (d, d))[0]
        U, R = torch.linalg.qr(G)
        U = U * torch.sign(torch.diagonal(R))
        spec = torch.logspace(math.log10(mu), math.log10(L), d, dtype=torch.float64)
        spec[0], spec[-1] = mu, L
        Q = (U * spec) @ U.T
        Q = 0.5 * (Q + Q.T)
    return Quadratic(name="quadratic", W_star=W_star, W0=W0, L=L, mu=mu, Q=Q)


def make_counterexample(scale=4.0):
    """RAC-LoRA's counterexample: M = Diag(10, 1, ..., 1) on 3x3, W0 = 0, W* = scale I."""
    _check_pos("scale", scale)
    M = torch.ones(9, dtype=torch.float64)
    M[0] = 10.0
    W_star = scale * torch.eye(3, dtype=torch.float64)
    return Quadratic(name="counterexample", W_star=W_star, W0=torch.zeros(3, 3, dtype=torch.float64),
                     L=10.0, mu=1.0, Q=torch.diag(M))
