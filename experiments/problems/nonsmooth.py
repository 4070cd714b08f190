r"""Non-smooth convex problems with a known minimiser and optimal value.

Both implement the oracle protocol of ARCHITECTURE.md batched over runs
(``W`` of shape ``(R, m, n)``, data shared by the runs, float64), with
``subgradient`` (``grad`` is an alias) and the problem constants::

    name, shape, W0, L (nan: not smooth), mu / L_avg / L_max / n_clients / sigma2 (None),
    f_star, f_inf (= f_star), W_star, L0 (global bound on ||g||_F, g any subgradient),
    n_samples, .to(device, dtype)

Data are drawn from :mod:`solvers.rng` (stream DATA), so a problem is a pure
function of its parameters and ``seed`` on every platform. Contractions go
through :func:`solvers.linalg.shared_matmul` and sums over samples through
:func:`solvers.linalg.row_sum`, so a run's numbers do not depend
on the batch it is evaluated in (on CPU).

* ``l1`` (:class:`L1Regression`): :math:`f(W) = \frac1N \sum_i |\langle a_i, \mathrm{vec} W\rangle - b_i|`,
  planted noiseless :math:`b = A\,\mathrm{vec}(W^\star)`, :math:`f^\star = 0`.
* ``maxaffine`` (:class:`MaxAffine`): :math:`f(W) = \max_j (\langle A_j, W\rangle + c_j)`
  with :math:`0` in the relative interior of the convex hull of the :math:`A_j`.

Build them with :func:`make_nonsmooth_problem` (names ``l1``, ``maxaffine``).
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Optional

import torch

from experiments.problems.base import Problem, seed_param
from solvers import rng
from solvers.linalg import row_sum, shared_matmul
from solvers.registry import register

_DTYPE = torch.float64
# (step of the DATA stream, sub-streams) used for each problem's draws
_L1_STEP, _MAXAFFINE_STEP = 11, 12
_SUB_MATRIX, _SUB_WSTAR, _SUB_W0, _SUB_WEIGHTS = 0, 1, 2, 3


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_int(field, value, low, why=""):
    if not (_is_int(value) and value >= low):
        raise ValueError(f"problem.{field}: must be an integer >= {low}{why}, got {value!r}")


def _normal(seed, step, shape, sub):
    return rng.normal(torch.tensor([seed]), rng.Stream.DATA, step, shape, sub=sub)[0]


def _initial_point(W0, shape, seed, step):
    if W0 is None:
        return _normal(seed, step, shape, _SUB_W0)
    W0 = torch.as_tensor(W0, dtype=_DTYPE).clone()
    if tuple(W0.shape) != tuple(shape):
        raise ValueError(f"problem.W0: expected shape {tuple(shape)}, got {tuple(W0.shape)}")
    if not bool(torch.isfinite(W0).all()):
        raise ValueError("problem.W0: contains NaN or inf")
    return W0


class _NonSmoothProblem(Problem):
    """Shared constants and plumbing of the non-smooth problems."""

    L = float("nan")  # not smooth
    mu = None
    L_avg = None
    L_max = None
    n_clients = None
    sigma2 = None

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`subgradient` (the oracle protocol's gradient slot)."""
        return self.subgradient(W)

    def _delta(self, W):
        """vec(W - W*) per run: (R, d)."""
        return (W - self.W_star).reshape(W.shape[0], -1)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, shape={self.shape}, f_star={self.f_star}, L0={self.L0:.4g})"


class L1Regression(_NonSmoothProblem):
    r"""Least absolute deviations with a planted solution.

    .. math:: f(W) = \frac1N \sum_{i=1}^N |\langle a_i, \mathrm{vec}(W)\rangle - b_i|,
              \qquad b = A\,\mathrm{vec}(W^\star),

    rows :math:`a_i \sim \mathcal N(0, I_d)`, :math:`W^\star` with i.i.d. N(0, 1)
    entries, :math:`d = mn`. The residual is evaluated as :math:`A\,\mathrm{vec}(W - W^\star)`,
    equal to :math:`A\,\mathrm{vec}(W) - b` in exact arithmetic and exactly 0 at
    :math:`W^\star`, so ``loss(W_star) == f_star == 0`` in floating point too.

    Optimality and uniqueness: :math:`f \ge 0 = f(W^\star)`, and :math:`f(W) = 0`
    iff :math:`A\,\mathrm{vec}(W - W^\star) = 0`, iff :math:`W = W^\star` when A has
    full column rank, which holds almost surely for a Gaussian A with
    :math:`N \ge d` (the default is N = 2d). f_inf = f_star = 0.

    Subgradients: :math:`\partial f(W) = \{\frac1N A^\top s : s_i = \mathrm{sign}(r_i)
    \text{ if } r_i \ne 0,\ s_i \in [-1, 1] \text{ else}\}`; :meth:`subgradient`
    takes :math:`s_i = 0` at :math:`r_i = 0`. Every subgradient of every point
    has :math:`\|s\|_\infty \le 1`, hence the global bound

    .. math:: \|g\|_F \le L_0 = \min\Big(\frac1N \sum_i \|a_i\|,\ \frac{\|A\|_2}{\sqrt N}\Big),

    by the triangle inequality (first term) and by
    :math:`\|A^\top s\| \le \|A\|_2 \|s\|_2 \le \|A\|_2 \sqrt N` (second term).
    ``L0_sample`` :math:`= \max_i \|a_i\|` bounds the per-sample subgradients
    :math:`\mathrm{sign}(r_i) a_i` used by :meth:`minibatch_grad`.
    """

    name = "l1"

    def __init__(self, m: int, n: int, *, n_samples=None, seed: int = 0, W0=None):
        _check_int("m", m, 1)
        _check_int("n", n, 1)
        _check_int("seed", seed, 0)
        d = m * n
        n_samples = 2 * d if n_samples is None else n_samples
        _check_int("n_samples", n_samples, d, f" = m*n (so that W* is the unique minimiser)")
        self.shape = (m, n)
        self.n_samples = n_samples
        self.A = _normal(seed, _L1_STEP, (n_samples, d), _SUB_MATRIX)  # rows a_i
        self.W_star = _normal(seed, _L1_STEP, (m, n), _SUB_WSTAR)
        self.b = shared_matmul(self.W_star.reshape(1, d), self.A.T)[0]
        self.W0 = _initial_point(W0, self.shape, seed, _L1_STEP)
        self.f_star = 0.0
        self.f_inf = 0.0
        row_norms = torch.linalg.norm(self.A, dim=1)
        self.L0 = float(min(row_norms.mean(), torch.linalg.matrix_norm(self.A, ord=2) / math.sqrt(n_samples)))
        self.L0_sample = float(row_norms.max())

    def residuals(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`r = A\\,\\mathrm{vec}(W) - b` per run, shape (R, N)."""
        return shared_matmul(self._delta(W), self.A.T)

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        return row_sum(self.residuals(W).abs()) / self.n_samples

    def subgradient(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\frac1N A^\\top \\mathrm{sign}(r)` (sign(0) = 0), shape (R, m, n)."""
        s = torch.sign(self.residuals(W))
        return (shared_matmul(s, self.A) / self.n_samples).reshape(W.shape)

    def minibatch_grad(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Mean over ``idx[r]`` (shape (R, b)) of the per-sample subgradients
        :math:`\\mathrm{sign}(r_i) a_i`; an unbiased estimate of :meth:`subgradient`
        when idx is uniform."""
        rows = self.A[idx]  # (R, b, d)
        r = row_sum(rows * self._delta(W)[:, None, :])
        return ((torch.sign(r)[:, :, None] * rows).sum(1) / idx.shape[1]).reshape(W.shape)


class MaxAffine(_NonSmoothProblem):
    r"""Maximum of P affine functions with a planted minimiser.

    .. math:: f(W) = \max_{j \le P} \big(\langle A_j, W\rangle + c_j\big),
              \qquad c_j = f^\star - \langle A_j, W^\star\rangle,

    evaluated as :math:`f^\star + \max_j \langle A_j, W - W^\star\rangle`
    (the same function; exact at :math:`W^\star`).

    Construction: :math:`G_j` with i.i.d. N(0, 1) entries, weights
    :math:`\lambda_j \propto u_j`, :math:`u_j \sim U(1, 2)`, :math:`\sum_j \lambda_j = 1`,
    and :math:`A_j = G_j - \sum_k \lambda_k G_k`, so that :math:`\sum_j \lambda_j A_j = 0`.

    Optimality: every piece is active at :math:`W^\star` with value :math:`f^\star`,
    and :math:`\partial f(W^\star) = \mathrm{conv}\{A_j\} \ni \sum_j \lambda_j A_j = 0`.
    Directly, for every W, :math:`f(W) \ge \sum_j \lambda_j (\langle A_j, W\rangle + c_j)
    = \langle \sum_j \lambda_j A_j, W - W^\star\rangle + f^\star = f^\star`.

    Uniqueness: if :math:`f(W) = f^\star`, :math:`D = W - W^\star` has
    :math:`\langle A_j, D\rangle \le 0` for all j with :math:`\sum_j \lambda_j \langle A_j, D\rangle = 0`
    and :math:`\lambda_j > 0`, so :math:`\langle A_j, D\rangle = 0` for all j; D = 0 iff
    the :math:`A_j` span :math:`\mathbb{R}^{m \times n}`. The matrix of the :math:`A_j` is
    :math:`(I - \mathbf 1 \lambda^\top) G`, of rank :math:`\min(P - 1, d)` almost surely,
    hence ``n_pieces >= d + 1`` is required (and the rank is checked).

    Subgradients: :math:`\partial f(W) = \mathrm{conv}\{A_j : j \text{ active}\}`;
    :meth:`subgradient` returns :math:`A_{j^*}` for the first maximising j. As the
    norm is convex, every subgradient at every point has
    :math:`\|g\|_F \le L_0 = \max_j \|A_j\|_F` (a global bound, attained).
    Not a finite sum: ``n_samples`` is None.
    """

    name = "maxaffine"
    n_samples = None

    def __init__(self, m: int, n: int, *, n_pieces=None, seed: int = 0, f_star: float = 1.0, W0=None):
        _check_int("m", m, 1)
        _check_int("n", n, 1)
        _check_int("seed", seed, 0)
        d = m * n
        n_pieces = 2 * d if n_pieces is None else n_pieces
        _check_int("n_pieces", n_pieces, d + 1, " = m*n + 1 (so that W* is the unique minimiser)")
        if isinstance(f_star, bool) or not isinstance(f_star, (int, float)) or not math.isfinite(f_star):
            raise ValueError(f"problem.f_star: must be a finite number, got {f_star!r}")
        self.shape = (m, n)
        self.n_pieces = n_pieces
        G = _normal(seed, _MAXAFFINE_STEP, (n_pieces, d), _SUB_MATRIX)
        u = 1.0 + rng.uniform(torch.tensor([seed]), rng.Stream.DATA, _MAXAFFINE_STEP, (n_pieces,), sub=_SUB_WEIGHTS)[0]
        self.weights = u / u.sum()
        self.A = G - self.weights @ G  # rows vec(A_j), sum_j weights_j A_j = 0
        if int(torch.linalg.matrix_rank(self.A)) < d:
            raise ValueError(f"problem.seed: degenerate draw (pieces do not span R^{d}); try another seed")
        self.W_star = _normal(seed, _MAXAFFINE_STEP, (m, n), _SUB_WSTAR)
        self.f_star = float(f_star)
        self.f_inf = self.f_star
        self.c = self.f_star - self.A @ self.W_star.reshape(d)
        self.W0 = _initial_point(W0, self.shape, seed, _MAXAFFINE_STEP)
        self.L0 = float(torch.linalg.norm(self.A, dim=1).max())

    def pieces(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\langle A_j, W - W^\\star\\rangle` per run and piece, shape (R, P)."""
        return shared_matmul(self._delta(W), self.A.T)

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        return self.f_star + self.pieces(W).max(-1).values

    def subgradient(self, W: torch.Tensor) -> torch.Tensor:
        j = torch.argmax(self.pieces(W), dim=-1)  # first maximiser on ties
        return self.A[j].reshape(W.shape)

    def minibatch_grad(self, W, idx):
        raise ValueError("estimator: maxaffine is not a finite sum (n_samples is None); use gd or subgradient")


NONSMOOTH = {"l1": L1Regression, "maxaffine": MaxAffine}
_PARAMS = {"l1": {"m", "n", "n_samples", "seed", "W0"}, "maxaffine": {"m", "n", "n_pieces", "seed", "f_star", "W0"}}


def make_nonsmooth_problem(name: str, **params):
    """Non-smooth problem by name: ``l1`` (m, n, n_samples, seed, W0) or
    ``maxaffine`` (m, n, n_pieces, seed, f_star, W0); m and n default to 6 and 5."""
    if name not in NONSMOOTH:
        raise ValueError(f"problem: unknown non-smooth name {name!r}; choose one of {sorted(NONSMOOTH)}")
    for key in params:
        if key not in _PARAMS[name]:
            raise ValueError(f"problem.{key}: not a parameter of {name} (it takes {sorted(_PARAMS[name])})")
    m, n = params.pop("m", 6), params.pop("n", 5)
    return NONSMOOTH[name](m, n, **params)


@dataclass
class L1Conf:
    name: str = "l1"
    m: int = 6
    n: int = 5
    n_samples: int = 120
    seed: int = seed_param()


@dataclass
class MaxAffineConf:
    name: str = "maxaffine"
    m: int = 6
    n: int = 5
    n_pieces: Optional[int] = None  # None: 2 m n
    seed: int = seed_param()


@register("problem", "l1", conf=L1Conf, label="l1 regression")
def make_l1(**params):
    """:class:`L1Regression` (:func:`make_nonsmooth_problem` ``('l1', ...)``)."""
    return make_nonsmooth_problem("l1", **params)


@register("problem", "maxaffine", conf=MaxAffineConf, label="max-affine")
def make_maxaffine(**params):
    """:class:`MaxAffine` (:func:`make_nonsmooth_problem` ``('maxaffine', ...)``)."""
    return make_nonsmooth_problem("maxaffine", **params)
