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
linearly to :math:`W^*` (docs/theory.md#t1 with mu = 1).

Finite sum and clients (``n_samples = N``, optional ``n_clients = K``): the same f is
written as least squares, :math:`f(W) = \frac1N\sum_i \tfrac12(a_i^\top w - y_i)^2`,
:math:`w = \operatorname{vec} W`, with rows :math:`A = \sqrt N\, O\, Q^{1/2}` (O an N x d
matrix with orthonormal columns from the seed), so :math:`A^\top A / N = Q` (up to
rounding), and :math:`y = A w^* + \varepsilon` with :math:`\varepsilon` Gaussian of std ``noise``
projected off the range of A (so :math:`A^\top\varepsilon = 0` and :math:`W^*` stays the
minimiser): :math:`f = \tfrac12 e^\top Q e + f^*`, :math:`f^* = \|\varepsilon\|^2/(2N)`,
:math:`\nabla f_i(W) = a_i(a_i^\top e - \varepsilon_i)`. Needs :math:`N \ge d`
(``noise`` > 0 needs N > d). K must divide N; client k owns rows ``k*N/K:(k+1)*N/K``
and :math:`f_k` is their mean. ``heterogeneity`` h in [0, 1] orders the samples as the
logistic problem does (:func:`experiments.problems.logistic._shard_order`), sorting
by the key :math:`-\varepsilon_i\, a_i^\top u` (u the top eigenvector of Q), each sample's
gradient at :math:`W^*` along u: h = 0 i.i.d. shards, h = 1 clients whose gradients
at :math:`W^*` differ most along u. With clients :meth:`Quadratic.grad` *is*
``client_grads(W).mean(1)`` (identity-compressed QGD/EF21 equal GD bitwise).
Constants: ``L_max`` :math:`= \max_i\|a_i\|^2`, ``L_avg`` the exact mean-squared
smoothness :math:`\lambda_{\max}(\frac1N\sum_i\|a_i\|^2 a_ia_i^\top)^{1/2}`, their client
versions, and ``delta_inf`` :math:`= f^* - \frac1K\sum_k\min f_k` (samples: every
:math:`f_i` reaches 0, so :math:`f^*`). :meth:`Quadratic.exact_model` gives the numbers
:mod:`theory.exact` needs.

Batch invariance: the product with Q goes through :func:`solvers.linalg.shared_matmul`
and the sum over W through :func:`solvers.linalg.run_sum`, so a run's numbers are
bitwise the same alone or in a batch (CPU).
"""
from __future__ import annotations

import math
import numbers

from dataclasses import dataclass
from typing import Optional

import torch

from experiments.problems.base import Problem, seed_param
from solvers import rng
from solvers.linalg import run_sum, shared_matmul
from solvers.registry import register

_DTYPE = torch.float64
# sub-streams of the DATA stream (step 0) used by the quadratic
_SUB_WSTAR, _SUB_W0 = 0, 2
_STEP_Q = 1
_STEP_SAMPLES, _SUB_ROWS, _SUB_EPS = 3, 0, 1  # finite-sum data
SPECTRA = ("log", "linear")


def _check_int(field, value, low):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"problem.{field}: must be an integer >= {low}, got {value!r}")


def _check_pos(field, value):
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"problem.{field}: must be a finite number > 0, got {value!r}")


class Quadratic(Problem):
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
    A, eps : torch.Tensor of shapes (N, mn) and (N,), or None
        Finite-sum rows and residuals at W* (module docstring); A^T A / N = Q.
    n_clients : int or None
        Clients owning contiguous blocks of N / n_clients rows.
    """

    L0 = L_avg = L_max = sigma2 = delta_inf = None
    n_samples = n_clients = None

    def __init__(self, *, name, W_star, W0, L, mu, Q=None, A=None, eps=None, n_clients=None):
        self.name = name
        self.shape = tuple(W_star.shape)
        self.W_star, self.W0, self.Q = W_star, W0, Q
        self.L, self.mu = float(L), float(mu)
        self.f_star = self.f_inf = 0.0
        self.A, self.eps, self.n_clients = A, eps, n_clients
        if A is not None:
            self.n_samples = int(A.shape[0])
            self.f_star = self.f_inf = float((eps * eps).sum()) / (2 * self.n_samples)
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
        return self.loss_and_grad(W)[0]

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathrm{mat}(Q\\,\\mathrm{vec}(W - W^*))`, shape (R, m, n);
        ``client_grads(W).mean(1)`` with clients."""
        return self.loss_and_grad(W)[1]

    def _loss_and_grad(self, W, W_star, hv, rsum):
        """The formula, on torch tensors or numpy arrays: ``hv`` is the product with Q and
        ``rsum`` the per-run sum of that library."""
        D = W - W_star
        G = hv(D)
        return 0.5 * rsum(D * G) + self.f_star, G

    def loss_and_grad(self, W: torch.Tensor):
        """(loss, grad), bitwise equal to :meth:`loss` and :meth:`grad`: one product with Q
        (and, with clients, the gradient as the mean of :meth:`client_grads`)."""
        loss, G = self._loss_and_grad(W, self.W_star, self._hv, run_sum)
        if self.n_clients is not None:
            G = self.client_grads(W).mean(1)
        return loss, G

    def numpy_oracle(self):
        """:meth:`loss_and_grad` in numpy (one product with Q, a BLAS call; the per-run sums
        numpy's), for tensors on a CPU; None with clients (their gradient is another formula)."""
        if self.n_clients is not None or self.W_star.device.type != "cpu":
            return None
        W_star, L = self.W_star.numpy(), self.L
        Q = None if self.Q is None else self.Q.numpy()

        def hv(D):  # Q is symmetric: the rows of D Q are the products Q vec(D_r)
            return L * D if Q is None else (D.reshape(D.shape[0], -1) @ Q).reshape(D.shape)

        rsum = lambda x: x.reshape(x.shape[0], -1).sum(1)  # noqa: E731
        return lambda W: self._loss_and_grad(W, W_star, hv, rsum)

    def _need_samples(self):
        if self.A is None:
            raise ValueError("problem.n_samples: this quadratic is not a finite sum (set problem.n_samples)")

    def minibatch_grad(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Mean over ``idx[r]`` (int64, (R, b)) of :math:`\\nabla f_i(W_r) = a_i(a_i^\\top e - \\varepsilon_i)`."""
        self._need_samples()
        rows = self.A[idx]  # (R, b, d)
        e = (W - self.W_star).reshape(W.shape[0], 1, -1)
        res = (rows * e).sum(-1) - self.eps[idx]
        return ((res[..., None] * rows).sum(1) / idx.shape[1]).reshape(W.shape)

    def client_grads(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla f_k(W)` per run and client, shape (R, K, m, n)."""
        if self.n_clients is None:
            raise ValueError("problem.n_clients: this quadratic has no clients (set problem.n_clients)")
        R, K = W.shape[0], self.n_clients
        nk = self.n_samples // K
        res = shared_matmul((W - self.W_star).reshape(R, -1), self.A.T) - self.eps  # (R, N)
        grads = [shared_matmul(res[:, k * nk:(k + 1) * nk].contiguous(), self.A[k * nk:(k + 1) * nk]) / nk
                 for k in range(K)]
        return torch.stack(grads, 1).reshape(R, K, *self.shape)

    def exact_model(self):
        """The numbers of :class:`theory.exact.QuadraticModel` (numpy, float64)."""
        from theory.exact import QuadraticModel

        np_ = (lambda t: t.detach().to("cpu", torch.float64).numpy())  # noqa: E731
        kw = {}
        if self.A is not None:
            A, eps = np_(self.A), np_(self.eps)
            kw.update(sample_hessians=A[:, :, None] * A[:, None, :], sample_offsets=-eps[:, None] * A)
            if self.n_clients is not None:
                K = self.n_clients
                Ak, ek = A.reshape(K, -1, A.shape[1]), eps.reshape(K, -1)
                nk = Ak.shape[1]
                kw.update(client_hessians=Ak.transpose(0, 2, 1) @ Ak / nk,
                          client_offsets=-(Ak * ek[:, :, None]).sum(1) / nk)
        e0 = np_(self.W0 - self.W_star).reshape(-1)
        return QuadraticModel(shape=self.shape, Q=np_(self.hessian()), e0=e0, **kw)

    def hessian(self) -> torch.Tensor:
        """The dense Hessian Q (mn, mn) (formed on request in the isotropic case)."""
        if self.Q is not None:
            return self.Q
        d = self.shape[0] * self.shape[1]
        return self.L * torch.eye(d, dtype=self.W_star.dtype, device=self.W_star.device)

    def __repr__(self):
        return (f"Quadratic(name={self.name!r}, shape={self.shape}, mu={self.mu:g}, L={self.L:g}, "
                f"dense={self.Q is not None}, n_samples={self.n_samples}, n_clients={self.n_clients})")


def _spectrum(d, mu, L, law):
    if law == "log":
        s = torch.logspace(math.log10(mu), math.log10(L), d, dtype=_DTYPE)
    else:
        s = torch.linspace(mu, L, d, dtype=_DTYPE)
    s[0], s[-1] = mu, L  # exact end points: the constants are exact
    return s


# ----------------------------------------------------------------------------- configuration schemas
# (value ranges of problem parameters are checked by the factories)


@dataclass
class QuadraticConf:
    name: str = "quadratic"
    m: int = 8
    n: int = 6
    mu: float = 1.0
    L: float = 10.0
    seed: int = seed_param()
    # a finite sum of n_samples least-squares terms (None: the plain quadratic),
    # residual std ``noise`` at W*, split over n_clients with ``heterogeneity``;
    # None leaves the factory's value (noise 1.0, heterogeneity 0.0) and keeps the
    # plain quadratic's config hash unchanged
    n_samples: Optional[int] = None
    noise: Optional[float] = None
    n_clients: Optional[int] = None
    heterogeneity: Optional[float] = None


@dataclass
class IsotropicConf:
    name: str = "isotropic"
    m: int = 8
    n: int = 6
    L: float = 1.0
    seed: int = seed_param()


@dataclass
class CounterexampleConf:
    name: str = "counterexample"


@register("problem", "quadratic", conf=QuadraticConf, label="quadratic")
def make_quadratic(m=8, n=6, mu=1.0, L=10.0, seed=0, *, spectrum="log", init="random", max_dense=4096,
                   n_samples=None, noise=1.0, n_clients=None, heterogeneity=0.0):
    """Quadratic with Hessian spectrum in [mu, L]; ``mu == L`` is the isotropic one.

    Parameters
    ----------
    m, n : int
        Shape of W.
    mu, L : float
        ``0 < mu <= L``: the smallest and largest eigenvalues of Q, both attained.
    seed : int
        Seeds W*, W0, U and the samples (stream DATA of :mod:`solvers.rng`).
    spectrum : {'log', 'linear'}
        How the mn eigenvalues are spread between mu and L.
    init : {'random', 'zeros'}
        W0 with N(0, 1) entries from the seed, or W0 = 0.
    max_dense : int
        Largest mn for which a dense Q is formed (``mu < L``, or any finite sum).
    n_samples : int >= mn, optional
        Write f as a finite sum of N least-squares terms (module docstring).
    noise : float >= 0
        Std of the residuals at W* of the finite sum (before their projection).
    n_clients : int dividing n_samples, optional
        Split the samples among clients; ``heterogeneity`` in [0, 1] (module docstring).
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
    d = m * n
    _check_finite_sum(d, max_dense, n_samples, noise, n_clients, heterogeneity)
    s = torch.tensor([int(seed)])
    W_star = rng.normal(s, rng.Stream.DATA, 0, (m, n), sub=_SUB_WSTAR)[0]
    W0 = rng.normal(s, rng.Stream.DATA, 0, (m, n), sub=_SUB_W0)[0] if init == "random" \
        else torch.zeros(m, n, dtype=_DTYPE)
    Q = U = None
    spec = torch.full((d,), float(L), dtype=_DTYPE)
    if mu < L:
        if d > max_dense:
            raise ValueError(f"problem.m: mu < L needs a dense {d} x {d} Hessian; keep m*n <= {max_dense} "
                             f"or set mu = L")
        G = rng.normal(s, rng.Stream.DATA, _STEP_Q, (d, d))[0]
        U, R = torch.linalg.qr(G)
        U = U * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)  # Haar: fix the signs of diag(R)
        spec = _spectrum(d, float(mu), float(L), spectrum)
        Q = (U * spec) @ U.T
        Q = 0.5 * (Q + Q.T)
    if n_samples is None:
        return Quadratic(name="quadratic", W_star=W_star, W0=W0, L=L, mu=mu, Q=Q)
    A, eps = _samples(s, U, spec, int(n_samples), float(noise))
    if n_clients is not None:
        from experiments.problems.logistic import _shard_order  # the same split rule as logistic

        top = U[:, -1] if U is not None else torch.eye(d, dtype=_DTYPE)[0]
        order = _shard_order(-eps * (A @ top), int(n_clients), float(heterogeneity), int(seed))
        A, eps = A[order].contiguous(), eps[order].contiguous()
    if Q is None:
        Q = float(L) * torch.eye(d, dtype=_DTYPE)
    prob = Quadratic(name="quadratic", W_star=W_star, W0=W0, L=L, mu=mu, Q=Q, A=A, eps=eps,
                     n_clients=None if n_clients is None else int(n_clients))
    prob.noise, prob.heterogeneity = float(noise), float(heterogeneity)
    _finite_sum_constants(prob)
    return prob


def _check_finite_sum(d, max_dense, n_samples, noise, n_clients, heterogeneity):
    if n_samples is None:
        if n_clients is not None:
            raise ValueError("problem.n_clients: clients split the samples; set problem.n_samples too")
        return
    _check_int("n_samples", n_samples, d)
    if d > max_dense:
        raise ValueError(f"problem.n_samples: a finite sum needs a dense {d} x {d} Hessian; keep m*n <= {max_dense}")
    if not (isinstance(noise, numbers.Real) and not isinstance(noise, bool) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"problem.noise: must be a finite number >= 0, got {noise!r}")
    if n_clients is not None:
        _check_int("n_clients", n_clients, 1)
        if n_samples % n_clients:
            raise ValueError(f"problem.n_clients: must divide n_samples = {n_samples}, got {n_clients}")
    if not (isinstance(heterogeneity, numbers.Real) and not isinstance(heterogeneity, bool)
            and 0.0 <= heterogeneity <= 1.0):
        raise ValueError(f"problem.heterogeneity: must lie in [0, 1], got {heterogeneity!r}")


def _samples(s, U, spec, N, noise):
    """Rows A = sqrt(N) O Q^{1/2} and residuals eps (orthogonal to the range of A)."""
    d = spec.shape[0]
    O, R = torch.linalg.qr(rng.normal(s, rng.Stream.DATA, _STEP_SAMPLES, (N, d), sub=_SUB_ROWS)[0])
    O = O * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)
    root = torch.sqrt(spec)
    A = math.sqrt(N) * (O @ ((U * root) @ U.T) if U is not None else O * root)
    z = rng.normal(s, rng.Stream.DATA, _STEP_SAMPLES, (N,), sub=_SUB_EPS)[0]
    eps = noise * (z - O @ (O.T @ z))
    return A.contiguous(), eps.contiguous()


def _finite_sum_constants(prob):
    """L_max, L_avg (exact mean-squared smoothness), their client versions, delta_inf."""
    A, eps, N = prob.A, prob.eps, prob.n_samples
    sq = (A * A).sum(1)
    prob.L_max = float(sq.max())
    prob.L_avg = math.sqrt(float(torch.linalg.eigvalsh((A * sq[:, None]).T @ A / N)[-1]))
    prob.delta_inf = prob.f_star  # every f_i reaches 0 (one equation, d >= 1 unknowns)
    prob.L_max_clients = prob.L_avg_clients = None
    if prob.n_clients is not None:
        K = prob.n_clients
        Ak, ek = A.reshape(K, N // K, -1), eps.reshape(K, N // K)
        Hk = Ak.transpose(1, 2) @ Ak / (N // K)
        top = torch.linalg.eigvalsh(Hk)[:, -1]
        prob.L_max_clients = float(top.max())
        prob.L_avg_clients = math.sqrt(float(torch.linalg.eigvalsh((Hk @ Hk).mean(0))[-1]))
        sol = torch.linalg.lstsq(Ak, ek[..., None], driver="gelsd").solution  # each client's minimiser
        fk = 0.5 * ((Ak @ sol)[..., 0] - ek).pow(2).mean(1)
        prob.delta_inf = max(0.0, prob.f_star - float(fk.mean()))


@register("problem", "isotropic", conf=IsotropicConf, label="isotropic quadratic")
def make_isotropic(m=8, n=6, L=1.0, seed=0, *, init="random"):
    """:math:`f(W) = \\tfrac L2\\|W - W^*\\|_F^2` (mu = L), any size, Q never formed."""
    _check_pos("L", L)
    prob = make_quadratic(m, n, mu=L, L=L, seed=seed, init=init)
    prob.name = "isotropic"
    return prob


@register("problem", "counterexample", conf=CounterexampleConf, label="RAC-LoRA counterexample")
def make_counterexample(scale=4.0):
    """RAC-LoRA's counterexample: M = Diag(10, 1, ..., 1) on 3x3, W0 = 0, W* = scale I
    (see the module docstring for why LoRA-type methods fail on it)."""
    _check_pos("scale", scale)
    M = torch.ones(9, dtype=_DTYPE)
    M[0] = 10.0
    W_star = float(scale) * torch.eye(3, dtype=_DTYPE)
    return Quadratic(name="counterexample", W_star=W_star, W0=torch.zeros(3, 3, dtype=_DTYPE),
                     L=10.0, mu=1.0, Q=torch.diag(M))
