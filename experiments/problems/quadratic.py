r"""Quadratic problems with known minimiser: the controlled test bed of the theory.

``quadratic`` (:func:`make_quadratic`):

.. math::

    f(W) = \tfrac12\,\operatorname{vec}(W - W^*)^\top Q\,\operatorname{vec}(W - W^*),
    \qquad Q = U \operatorname{diag}(s) U^\top,
    \qquad \nabla f(W) = \operatorname{mat}\big(Q\operatorname{vec}(W - W^*)\big),

``vec`` row-major (``W.reshape(-1)``), U Haar-orthogonal from the seed (QR of a Gaussian
matrix with the signs of diag(R) fixed) and the spectrum ``s`` spread from ``mu`` to ``L``
(both attained exactly): ``spectrum='log'`` log-spaced (default), ``'linear'``
evenly spaced. Constants, exact: :math:`\nabla^2 f = Q` and
:math:`\mu I \preceq Q \preceq L I`, so f is L-smooth and mu-strongly convex, hence
PL with mu; :math:`f^* = f_{\inf} = 0` at :math:`W^*`. ``W_star`` and ``W0`` have
i.i.d. N(0, 1) entries drawn from the seed (``init='zeros'`` gives :math:`W_0 = 0`).
Q is dense (:math:`(mn)^2` numbers), so ``mu < L`` needs :math:`mn \le` ``max_dense``.

``mu == L`` (and :func:`make_isotropic`) gives :math:`f = \tfrac L2\|W - W^*\|_F^2`,
computed without forming Q, for any size: ``Q is None``.

``counterexample`` (:func:`make_counterexample`): RAC-LoRA's 3x3 quadratic (9 variables)
with :math:`Q = M = \operatorname{Diag}(10, 1, \dots, 1)` (L = 10, mu = 1),
:math:`W_0 = 0` and the full-rank :math:`W^* = 4 I_3`. Why this choice: a rank-1 LoRA
:math:`W = W_0 + BA` without merging only reaches rank-1 points, and every rank-1 W has
:math:`\|W - W^*\|^2 \ge 2 \cdot 16` (the two smallest singular values of
:math:`W^*` are 4, and :math:`M \succeq I`, so :math:`f \ge 16` there): LoRA and
AsymmLoRA stall at a non-optimal point with small steps. At gamma = 1/L the factor dynamics of
LoRA have curvature about :math:`L(\|A\|^2 + \|B\|^2)`, which exceeds 2/gamma once the
factors grow towards :math:`\|W^*\|`, so LoRA and COLA diverge. Weight-space methods
(RAC-LoRA, Bernoulli-LoRA) merge every step, are GD-type methods in W and converge
linearly to :math:`W^*` (theory item 1 with mu = 1).

Batch invariance: the product with Q goes through :func:`solvers.linalg.shared_matmul`
and the sum over W through :func:`solvers.linalg.run_sum`, so a run's numbers are
bitwise the same alone or in a batch (CPU).
"""
from __future__ import annotations

import math
import numbers

import torch

from solvers import rng
from solvers.linalg import run_sum, shared_matmul

_DTYPE = torch.float64
# sub-streams of the DATA stream (step 0) used by the quadratic
_SUB_WSTAR, _SUB_W0 = 0, 2
_STEP_Q = 1
SPECTRA = ("log", "linear")


def _check_int(field, value, low):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"problem.{field}: must be an integer >= {low}, got {value!r}")


def _check_pos(field, value):
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"problem.{field}: must be a finite number > 0, got {value!r}")


class Quadratic:
    r"""Quadratic oracle batched over runs: :math:`f(W) = \tfrac12 \mathrm{vec}(W-W^*)^\top Q
    \mathrm{vec}(W-W^*)`, ``Q=None`` meaning :math:`Q = L I` (see the module docstring).

    Parameters
    ----------
    name : str
    W_star, W0 : torch.Tensor, shape (m, n)
    L, mu : float
        Largest and smallest eigenvalue of Q (exact smoothness and PL constants).
    Q : torch.Tensor of shape (mn, mn) or None
        Symmetric Hessian in row-major vec; None for the isotropic case.
    """

    L0 = L_avg = L_max = sigma2 = None
    n_samples = n_clients = None

    def __init__(self, *, name, W_star, W0, L, mu, Q=None):
        self.name = name
        self.shape = tuple(W_star.shape)
        self.W_star, self.W0, self.Q = W_star, W0, Q
        self.L, self.mu = float(L), float(mu)
        self.f_star = self.f_inf = 0.0
        if tuple(W0.shape) != self.shape:
            raise ValueError(f"problem.W0: expected shape {self.shape}, got {tuple(W0.shape)}")
        if not (torch.isfinite(W_star).all() and torch.isfinite(W0).all()):
            raise ValueError("problem.W0: non-finite data")
        if Q is not None and not torch.isfinite(Q).all():
            raise ValueError("problem.Q: non-finite data")

    def _hv(self, D):
        """Q vec(D) reshaped, for D (R, m, n)."""
        if self.Q is None:
            return self.L * D
        return shared_matmul(D.reshape(D.shape[0], -1), self.Q).reshape(D.shape)

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        """f per run, shape (R,)."""
        D = W - self.W_star
        return 0.5 * run_sum(D * self._hv(D))

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathrm{mat}(Q\\,\\mathrm{vec}(W - W^*))`, shape (R, m, n)."""
        return self._hv(W - self.W_star)

    def loss_and_grad(self, W: torch.Tensor):
        """(loss, grad) with one product, bitwise equal to :meth:`loss` and :meth:`grad`."""
        D = W - self.W_star
        G = self._hv(D)
        return 0.5 * run_sum(D * G), G

    def hessian(self) -> torch.Tensor:
        """The dense Hessian Q (mn, mn) (formed on request in the isotropic case)."""
        if self.Q is not None:
            return self.Q
        d = self.shape[0] * self.shape[1]
        return self.L * torch.eye(d, dtype=self.W_star.dtype, device=self.W_star.device)

    def to(self, device=None, dtype=_DTYPE):
        """A copy with the tensors on ``device`` in ``dtype``."""
        conv = (lambda t: None if t is None else t.to(device=device, dtype=dtype))  # noqa: E731
        return Quadratic(name=self.name, W_star=conv(self.W_star), W0=conv(self.W0), L=self.L, mu=self.mu,
                         Q=conv(self.Q))

    def __repr__(self):
        return (f"Quadratic(name={self.name!r}, shape={self.shape}, mu={self.mu:g}, L={self.L:g}, "
                f"dense={self.Q is not None})")


def _spectrum(d, mu, L, law):
    if law == "log":
        s = torch.logspace(math.log10(mu), math.log10(L), d, dtype=_DTYPE)
    else:
        s = torch.linspace(mu, L, d, dtype=_DTYPE)
    s[0], s[-1] = mu, L  # exact end points: the constants are exact
    return s


def make_quadratic(m=8, n=6, mu=1.0, L=10.0, seed=0, *, spectrum="log", init="random", max_dense=4096):
    """Quadratic with Hessian spectrum in [mu, L]; ``mu == L`` is the isotropic one.

    Parameters
    ----------
    m, n : int
        Shape of W.
    mu, L : float
        ``0 < mu <= L``: the smallest and largest eigenvalues of Q, both attained.
    seed : int
        Seeds W*, W0 and U (stream DATA of :mod:`solvers.rng`).
    spectrum : {'log', 'linear'}
        How the mn eigenvalues are spread between mu and L.
    init : {'random', 'zeros'}
        W0 with N(0, 1) entries from the seed, or W0 = 0.
    max_dense : int
        Largest mn for which a dense Q is formed (``mu < L``).
    """
    _check_int("m", m, 1)
    _check_int("n", n, 1)
    _check_pos("mu", mu)
    _check_pos("L", L)
    _check_int("seed", seed, 0)
    if mu > L:
        raise ValueError(f"problem.mu: must be <= L = {L}, got {mu}")
    if spectrum not in SPECTRA:
        raise ValueError(f"problem.spectrum: expected one of {SPECTRA}, got {spectrum!r}")
    if init not in ("random", "zeros"):
        raise ValueError(f"problem.init: expected 'random' or 'zeros', got {init!r}")
    m, n = int(m), int(n)
    s = torch.tensor([int(seed)])
    W_star = rng.normal(s, rng.Stream.DATA, 0, (m, n), sub=_SUB_WSTAR)[0]
    W0 = rng.normal(s, rng.Stream.DATA, 0, (m, n), sub=_SUB_W0)[0] if init == "random" \
        else torch.zeros(m, n, dtype=_DTYPE)
    Q = None
    if mu < L:
        d = m * n
        if d > max_dense:
            raise ValueError(f"problem.m: mu < L needs a dense {d} x {d} Hessian; keep m*n <= {max_dense} "
                             f"or set mu = L")
        G = rng.normal(s, rng.Stream.DATA, _STEP_Q, (d, d))[0]
        U, R = torch.linalg.qr(G)
        U = U * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)  # Haar: fix the signs of diag(R)
        Q = (U * _spectrum(d, float(mu), float(L), spectrum)) @ U.T
        Q = 0.5 * (Q + Q.T)
    return Quadratic(name="quadratic", W_star=W_star, W0=W0, L=L, mu=mu, Q=Q)


def make_isotropic(m=8, n=6, L=1.0, seed=0, *, init="random"):
    """:math:`f(W) = \\tfrac L2\\|W - W^*\\|_F^2` (mu = L), any size, Q never formed."""
    _check_pos("L", L)
    prob = make_quadratic(m, n, mu=L, L=L, seed=seed, init=init)
    prob.name = "isotropic"
    return prob


def make_counterexample(scale=4.0):
    """RAC-LoRA's counterexample: M = Diag(10, 1, ..., 1) on 3x3, W0 = 0, W* = scale I
    (see the module docstring for why LoRA-type methods fail on it)."""
    _check_pos("scale", scale)
    M = torch.ones(9, dtype=_DTYPE)
    M[0] = 10.0
    W_star = float(scale) * torch.eye(3, dtype=_DTYPE)
    return Quadratic(name="counterexample", W_star=W_star, W0=torch.zeros(3, 3, dtype=_DTYPE),
                     L=10.0, mu=1.0, Q=torch.diag(M))
