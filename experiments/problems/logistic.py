r"""Multinomial logistic regression fine-tuning: a smooth, strongly convex finite sum.

.. math::

    f(W) = \frac1N \sum_{i=1}^N \mathrm{CE}(W x_i, y_i) + \frac\lambda2 \|W\|_F^2,
    \qquad \mathrm{CE}(z, y) = \log\textstyle\sum_c e^{z_c} - z_y,

with :math:`W \in \mathbb R^{C \times d}` (``m = C`` classes, ``n = d`` features).

Data (stream DATA of :mod:`solvers.rng`, so a problem is a pure function of its
parameters): balanced labels :math:`y_i = i \bmod C` and :math:`x_i = \mu_{y_i} +
\varepsilon_i`, :math:`\varepsilon_i \sim \mathcal N(0, I_d)`. The pretraining task has
class means :math:`\mu_c \sim \mathcal N(0, \tfrac4d I_d)` (norm about 2 for every d);
the fine-tuning task, the problem itself, has shifted means
:math:`\mu_c + \mathrm{shift}\cdot\delta_c`, :math:`\delta_c \sim \mathcal N(0, \tfrac4d I_d)`,
and fresh samples. ``W0`` is the pretraining minimiser and ``W_star`` the fine-tuning
one, both found in float64 by damped Newton (dense Hessian, or conjugate gradients on
Hessian-vector products when :math:`Cd` is large) to :math:`\|\nabla f\|_F < 10^{-10}`;
``f_star = f_inf = loss(W_star)`` evaluated by the oracle itself.

Constants. The Hessian of CE in the logits is :math:`A(s) = \mathrm{diag}(s) - s s^\top`,
s the softmax. For a unit v, :math:`v^\top A v = \sum_c s_c v_c^2 - (\sum_c s_c v_c)^2`
is the variance of a random variable with values :math:`v_c` (probabilities
:math:`s_c`), at most :math:`(\max_c v_c - \min_c v_c)^2/4 \le (v_a^2 + v_b^2)/2 \le 1/2`
(Popoviciu); and it is >= 0. Hence :math:`0 \preceq A(s) \preceq \tfrac12 I`, i.e. the
spectral norm of :math:`\mathrm{diag}(s) - ss^\top` is at most 1/2. With row-major
vec, :math:`\nabla^2 f = \frac1N\sum_i A(s_i) \otimes x_i x_i^\top + \lambda I`, so

* ``L = 0.5 * lambda_max(X^T X / N) + lam`` (smoothness),
* ``mu = lam`` (strong convexity, hence PL with mu),
* per sample :math:`f_i = \mathrm{CE}(Wx_i, y_i) + \frac\lambda2\|W\|^2` is
  :math:`L_i = \tfrac12\|x_i\|^2 + \lambda` smooth: ``L_max = max_i L_i`` and
  ``L_avg = sqrt(mean_i L_i^2)`` (mean-squared smoothness,
  :math:`\frac1N\sum_i\|\nabla f_i(W) - \nabla f_i(V)\|^2 \le L_{avg}^2\|W-V\|^2`).
  Both also bound the clients' constants (a client's f_k is a mean of the f_i), so
  they stay valid with ``n_clients``; ``L_max_clients`` and ``L_avg_clients`` are the
  tighter client versions (:math:`L_k = \tfrac12\lambda_{\max}(X_k^\top X_k/n_k) + \lambda`).

Clients (``n_clients = K``): the N samples are cut into K shards of equal size
:math:`n_k = \lfloor N/K \rfloor`: the remainder, :math:`N - K n_k` samples (the tail of
a seeded random permutation), is dropped, so ``n_samples = K n_k`` and
:math:`f = \frac1K\sum_k f_k` exactly (constants and f* refer to the kept samples); each
:math:`f_k = \frac1{n_k}\sum_{i \in k}\mathrm{CE} + \frac\lambda2\|W\|^2`.
Heterogeneity h in [0, 1]: a random permutation of the samples is split into a
"sorted" part of :math:`K a` samples, :math:`a = \mathrm{round}(h\, n_k)`, ordered by
label, and a random part; client k takes the k-th block of a samples of the sorted
part and the k-th block of :math:`n_k - a` of the random part. h = 0 gives i.i.d.
shards; h = 1 gives label-sorted contiguous shards, single-class clients whenever
K is a multiple of C (as far as possible otherwise: a client straddles at most a
class boundary or two). The data are stored shard by shard (client k owns rows
``k*n_k:(k+1)*n_k``). With clients, ``grad(W)`` *is* ``client_grads(W).mean(1)`` and
``loss(W)`` is ``client_losses(W).mean(1)``, the same floating-point operations the
distributed estimators perform, so they match gradient descent bitwise with the
identity compressor.

``delta_inf`` :math:`= f_{\inf} - \frac1K\sum_k f_{k,\inf}` over the clients when
``n_clients`` is set (each client's minimum by Newton), else over the samples
(``delta_inf_samples``: each :math:`\min_W f_i` reduces exactly to a 1-D convex
problem, since the minimiser is :math:`W = u x_i^\top/\|x_i\|^2` with
:math:`u = t(e_{y_i} - \mathbf 1/C)`, solved by bisection). The sample version is
always at least the client version, so it also serves the clients' bounds.

Batch invariance: products of per-run rows with the shared data go through
:func:`solvers.linalg.shared_matmul`, per-run batched products through
:func:`solvers.linalg.bmm`, and every reduction over classes or samples through
:func:`solvers.linalg.row_sum` / :func:`solvers.linalg.run_sum`; a run's numbers are
bitwise the same alone or in a batch (CPU).
"""
from __future__ import annotations

import math

import numpy as np
from dataclasses import dataclass
from typing import Optional

import torch

from experiments.problems.base import Problem, seed_param
from solvers import rng
from solvers.linalg import bmm, row_sum, run_sum, shared_matmul
from solvers.registry import register

_DTYPE = torch.float64
_STEP = 21  # step of the DATA stream for this problem
_SUB_MEANS, _SUB_SHIFT, _SUB_PRE_X, _SUB_FT_X, _SUB_PERM = 0, 1, 2, 3, 4
_GRAD_TOL = 1e-10  # certified ||grad f||_F at W0, W_star and the clients' minimisers
_DENSE_MAX, _DENSE_FLOPS = 2000, 2e9  # Newton with a dense Hessian up to these sizes, else CG


# ----------------------------------------------------------------------------- validation

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_int(field, value, low, high=None):
    ok = _is_int(value) and value >= low and (high is None or value <= high)
    if not ok:
        rng_txt = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"problem.{field}: must be an integer {rng_txt}, got {value!r}")


def _check_real(field, value, *, low=None, high=None, strict_low=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"problem.{field}: must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if strict_low else value < low):
        raise ValueError(f"problem.{field}: must be {'>' if strict_low else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"problem.{field}: must be <= {high:g}, got {value!r}")
    return value


# ----------------------------------------------------------------------- float64 solver

def _np_stats(W, X, y):
    """Softmax probabilities S (N, C) and per-sample CE (N,) at W (C, d)."""
    Z = X @ W.T
    zmax = Z.max(1, keepdims=True)
    E = np.exp(Z - zmax)
    tot = E.sum(1, keepdims=True)
    S = E / tot
    ce = (np.log(tot[:, 0]) + zmax[:, 0]) - Z[np.arange(len(y)), y]
    return S, ce


def _np_fg(W, X, y, lam):
    S, ce = _np_stats(W, X, y)
    P = S.copy()
    P[np.arange(len(y)), y] -= 1.0
    N = X.shape[0]
    return ce.mean() + 0.5 * lam * np.sum(W * W), P.T @ X / N + lam * W, S


def _np_hessp(V, X, S, lam):
    dZ = X @ V.T
    Q = S * dZ - S * np.sum(S * dZ, axis=1, keepdims=True)
    return Q.T @ X / X.shape[0] + lam * V


def _np_hessian(X, S, lam):
    """Dense Hessian of f in row-major vec(W): (1/N) sum_i A(s_i) kron x_i x_i^T + lam I,
    block (c, e) = X^T diag(s_c delta_ce - s_c s_e) X / N."""
    N, d = X.shape
    C = S.shape[1]
    H = np.empty((C, d, C, d))
    for c in range(C):
        for e in range(c, C):
            w = (S[:, c] if c == e else 0.0) - S[:, c] * S[:, e]
            H[c, :, e, :] = (X * w[:, None]).T @ X / N
            H[e, :, c, :] = H[c, :, e, :].T
    H = H.reshape(C * d, C * d)
    H[np.diag_indices_from(H)] += lam
    return 0.5 * (H + H.T)


def _solve(X, y, lam, C, W_init=None, max_iter=200):
    """argmin f by damped Newton (Armijo backtracking); returns (W, f, ||grad||)."""
    N, d = X.shape
    W = np.zeros((C, d)) if W_init is None else np.array(W_init, dtype=np.float64)
    f, g, S = _np_fg(W, X, y, lam)
    best, stall = (float(np.linalg.norm(g)), W, f), 0
    for _ in range(max_iter):
        gnorm = np.linalg.norm(g)
        if gnorm < 1e-13:
            break
        if C * d <= _DENSE_MAX and N * (C * d) ** 2 <= _DENSE_FLOPS:
            H = _np_hessian(X, S, lam)
            p = -np.linalg.solve(H, g.reshape(-1)).reshape(C, d)
        else:
            from scipy.sparse.linalg import LinearOperator, cg
            op = LinearOperator((C * d, C * d), dtype=np.float64,
                                matvec=lambda v: _np_hessp(v.reshape(C, d), X, S, lam).reshape(-1))
            sol, _ = cg(op, -g.reshape(-1), rtol=1e-12, atol=0.0, maxiter=20 * C * d)
            p = sol.reshape(C, d)
        slope = float(np.sum(g * p))
        if not slope < 0:  # numerically stationary
            break
        # Armijo with a rounding slack: near the minimiser f changes at the level of
        # its rounding error, and the full Newton step must still be taken
        slack = 8 * np.finfo(np.float64).eps * max(1.0, abs(f))
        t = 1.0
        while True:
            W_new = W + t * p
            f_new, g_new, S_new = _np_fg(W_new, X, y, lam)
            if f_new <= f + 1e-4 * t * slope + slack or t < 1e-10:
                break
            t *= 0.5
        g_new_norm = np.linalg.norm(g_new)
        if gnorm < 1e-6 and g_new_norm >= gnorm:  # no progress left at float64 precision
            stall += 1
            if stall >= 3:
                break
        else:
            stall = 0
        W, f, g, S = W_new, f_new, g_new, S_new
        if g_new_norm < best[0]:
            best = (g_new_norm, W, f)
    gn, W, f = best
    return W, f, float(gn)


def _sample_minima(X, y, lam, C):
    r"""min_W CE(W x_i, y_i) + lam/2 ||W||^2 per sample, exactly via the 1-D reduction
    g(t) = log(1 + (C-1) e^{-t}) + kappa t^2, kappa = lam (C-1) / (2 C ||x_i||^2)."""
    a = np.sum(X * X, axis=1)
    kappa = lam * (C - 1) / (2.0 * C * np.maximum(a, 1e-300))
    lo, hi = np.zeros_like(a), 1.0 / (2.0 * kappa)  # g'(0) < 0 <= g'(1 / (2 kappa))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        e = (C - 1) * np.exp(-mid)
        slope = -e / (1.0 + e) + 2.0 * kappa * mid
        neg = slope < 0
        lo, hi = np.where(neg, mid, lo), np.where(neg, hi, mid)
    t = 0.5 * (lo + hi)
    vals = np.log1p((C - 1) * np.exp(-t)) + kappa * t * t
    return np.where(a > 0, vals, math.log(C))


# ----------------------------------------------------------------------------- data

def _draw(seed, shape, sub):
    return rng.normal(torch.tensor([seed]), rng.Stream.DATA, _STEP, shape, sub=sub)[0]


def _permutation(seed, N, sub):
    return rng.subset(torch.tensor([seed]), rng.Stream.DATA, _STEP, N, N, sub=sub)[0]


def _shard_order(y, n_clients, heterogeneity, seed):
    """Sample order such that client k owns positions k*n_k:(k+1)*n_k (see module doc)."""
    N = y.shape[0]
    K = n_clients
    nk = N // K
    perm = _permutation(seed, N, _SUB_PERM)[: K * nk]  # drops N - K*nk samples
    a = int(round(heterogeneity * nk))
    sorted_part = perm[: K * a]
    sorted_part = sorted_part[torch.sort(y[sorted_part], stable=True).indices]
    random_part = perm[K * a:]
    blocks = [torch.cat([sorted_part[k * a:(k + 1) * a], random_part[k * (nk - a):(k + 1) * (nk - a)]])
              for k in range(K)]
    return torch.cat(blocks)


# --------------------------------------------------------------------------- the oracle

class Logistic(Problem):
    """Multinomial logistic regression oracle batched over runs; see the module docstring."""

    name = "logistic"
    L0 = None
    sigma2 = None

    def __init__(self, *, X, y, lam, W0, n_clients=None):
        self.X, self.y = X, y
        self.n_samples, d = X.shape
        C = W0.shape[0]
        self.shape = (C, d)
        self.lam = float(lam)
        self.W0 = W0
        self.n_clients = n_clients
        self.Y = torch.nn.functional.one_hot(y, C).to(X.dtype)  # (N, C)

    # ---- internals
    def _ce(self, W):
        """Per-sample CE (R, N) and softmax S (R, N, C); classes on the contiguous last axis."""
        R, C, d = W.shape
        Z = shared_matmul(W.reshape(R * C, d), self.X.T).reshape(R, C, -1).transpose(1, 2).contiguous()
        zmax = Z.max(-1, keepdim=True).values
        E = torch.exp(Z - zmax)
        tot = row_sum(E)[..., None]
        lse = torch.log(tot) + zmax
        zy = torch.gather(Z, -1, self.y.reshape(1, -1, 1).expand(R, -1, 1))
        return (lse - zy).squeeze(-1), E / tot

    def _reg(self, W):
        return 0.5 * self.lam * run_sum(W * W)

    def _client_losses(self, ce, W):
        K = self.n_clients
        return row_sum(ce.reshape(ce.shape[0], K, -1)) / (ce.shape[1] // K) + self._reg(W)[:, None]

    def _client_grads(self, S, W):
        R, C, d = W.shape
        K = self.n_clients
        nk = self.n_samples // K
        P = (S - self.Y).reshape(R * K, nk, C).transpose(1, 2)  # (R*K, C, n_k)
        Xk = self.X.reshape(1, K, nk, d).expand(R, K, nk, d).reshape(R * K, nk, d)
        G = bmm(P, Xk).reshape(R, K, C, d) / nk
        return G + self.lam * W[:, None]

    def _full(self, W, want_loss, want_grad):
        ce, S = self._ce(W)
        loss = grad = None
        if self.n_clients is not None:
            if want_loss:
                loss = self._client_losses(ce, W).mean(1)
            if want_grad:
                grad = self._client_grads(S, W).mean(1)
            return loss, grad
        if want_loss:
            loss = row_sum(ce) / ce.shape[-1] + self._reg(W)
        if want_grad:
            R, C, d = W.shape
            P = (S - self.Y).transpose(1, 2).reshape(R * C, -1)
            grad = shared_matmul(P, self.X).reshape(R, C, d) / self.n_samples + self.lam * W
        return loss, grad

    # ---- oracle protocol
    def loss(self, W: torch.Tensor) -> torch.Tensor:
        """f per run, shape (R,)."""
        return self._full(W, True, False)[0]

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla f` per run, (R, C, d); ``client_grads(W).mean(1)`` with clients."""
        return self._full(W, False, True)[1]

    def loss_and_grad(self, W: torch.Tensor):
        """(loss, grad), bitwise equal to :meth:`loss` and :meth:`grad`."""
        return self._full(W, True, True)

    def minibatch_grad(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Mean over ``idx[r]`` (int64, (R, b)) of :math:`\\nabla f_i(W_r) = (s_i - e_{y_i}) x_i^\\top
        + \\lambda W_r`; unbiased for :meth:`grad` when idx is uniform."""
        rows = self.X[idx]  # (R, b, d)
        Z = bmm(rows, W.transpose(1, 2))  # (R, b, C)
        zmax = Z.max(-1, keepdim=True).values
        E = torch.exp(Z - zmax)
        P = E / row_sum(E)[..., None] - self.Y[idx]
        return bmm(P.transpose(1, 2), rows) / idx.shape[1] + self.lam * W

    def client_losses(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`f_k(W)` per run and client, shape (R, K)."""
        self._need_clients()
        return self._client_losses(self._ce(W)[0], W)

    def client_grads(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla f_k(W)` per run and client, shape (R, K, C, d)."""
        self._need_clients()
        return self._client_grads(self._ce(W)[1], W)

    def client_labels(self):
        """Labels of each client's samples, (K, n_k) (int64)."""
        self._need_clients()
        return self.y.reshape(self.n_clients, -1)

    def _need_clients(self):
        if self.n_clients is None:
            raise ValueError("problem.n_clients: this logistic problem has no clients (set problem.n_clients)")

    def __repr__(self):
        return (f"Logistic(shape={self.shape}, n_samples={self.n_samples}, lam={self.lam:g}, "
                f"n_clients={self.n_clients}, L={self.L:.4g}, f_star={self.f_star:.10g})")


@dataclass
class LogisticConf:
    name: str = "logistic"
    m: int = 4  # classes
    n: int = 10  # features
    n_samples: int = 200
    lam: float = 0.01
    n_clients: Optional[int] = None
    heterogeneity: float = 0.0
    shift: float = 1.0
    seed: int = seed_param()


@register("problem", "logistic", conf=LogisticConf, label="logistic regression")
def make_logistic(m=4, n=10, n_samples=200, lam=0.01, n_clients=None, heterogeneity=0.0, shift=1.0, seed=0):
    """Logistic fine-tuning problem with ``m`` classes and ``n`` features (module docstring)."""
    _check_int("m", m, 2)
    _check_int("n", n, 1)
    _check_int("n_samples", n_samples, m)
    lam = _check_real("lam", lam, low=0.0, strict_low=True)
    if n_clients is not None:
        _check_int("n_clients", n_clients, 1, n_samples)
    heterogeneity = _check_real("heterogeneity", heterogeneity, low=0.0, high=1.0)
    shift = _check_real("shift", shift)
    _check_int("seed", seed, 0)
    C, d, N = int(m), int(n), int(n_samples)

    scale = 2.0 / math.sqrt(d)
    means = scale * _draw(seed, (C, d), _SUB_MEANS)
    means_ft = means + shift * scale * _draw(seed, (C, d), _SUB_SHIFT)
    y = torch.arange(N, dtype=torch.int64) % C
    X_pre = means[y] + _draw(seed, (N, d), _SUB_PRE_X)
    X = means_ft[y] + _draw(seed, (N, d), _SUB_FT_X)
    if not (torch.isfinite(X).all() and torch.isfinite(X_pre).all()):
        raise ValueError("problem.seed: non-finite data drawn")
    if n_clients is not None:
        order = _shard_order(y, int(n_clients), heterogeneity, seed)
        X, y = X[order], y[order]
        N = X.shape[0]

    Xn, yn, Xp = X.numpy(), y.numpy(), X_pre.numpy()
    yp = (torch.arange(X_pre.shape[0]) % C).numpy()
    W0, _, g0 = _solve(Xp, yp, lam, C)
    W_star, f_np, g_star = _solve(Xn, yn, lam, C, W_init=W0)
    if not (g0 < _GRAD_TOL and g_star < _GRAD_TOL):
        raise RuntimeError(f"logistic: Newton did not certify ||grad|| < {_GRAD_TOL:g} "
                           f"(pretraining {g0:.3g}, fine-tuning {g_star:.3g})")

    prob = Logistic(X=X, y=y, lam=lam, W0=torch.from_numpy(W0), n_clients=None if n_clients is None else int(n_clients))
    prob.heterogeneity, prob.shift, prob.seed = heterogeneity, shift, seed
    prob.W_star = torch.from_numpy(W_star)
    prob.f_star = float(prob.loss(prob.W_star[None])[0])
    prob.f_inf = prob.f_star
    prob.grad_norm_star = float(torch.linalg.norm(prob.grad(prob.W_star[None])[0]))

    cov_max = float(torch.linalg.eigvalsh(X.T @ X / N)[-1])
    Li = 0.5 * (X * X).sum(1) + lam
    prob.L = 0.5 * cov_max + lam
    prob.mu = lam
    prob.L_max = float(Li.max())
    prob.L_avg = float(torch.sqrt((Li * Li).mean()))
    prob.delta_inf_samples = max(0.0, f_np - float(np.mean(_sample_minima(Xn, yn, lam, C))))
    prob.delta_inf_clients = prob.L_max_clients = prob.L_avg_clients = None
    prob.delta_inf = prob.delta_inf_samples
    if n_clients is not None:
        K = int(n_clients)
        nk = N // K
        f_k, Lk = [], []
        for k in range(K):
            Xk, yk = Xn[k * nk:(k + 1) * nk], yn[k * nk:(k + 1) * nk]
            _, fk, gk = _solve(Xk, yk, lam, C, W_init=W_star)
            if not gk < _GRAD_TOL:
                raise RuntimeError(f"logistic: client {k} minimum not certified (||grad|| = {gk:.3g})")
            f_k.append(fk)
            Lk.append(0.5 * float(np.linalg.eigvalsh(Xk.T @ Xk / nk)[-1]) + lam)
        prob.delta_inf_clients = max(0.0, f_np - float(np.mean(f_k)))
        prob.delta_inf = prob.delta_inf_clients
        prob.client_minima = f_k
        prob.L_max_clients = max(Lk)
        prob.L_avg_clients = float(np.sqrt(np.mean(np.square(Lk))))
    return prob
