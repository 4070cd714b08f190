"""Tiny reference oracles for solver tests (the suite's real problems live in
experiments.problems and have their own tests)."""
import torch

from solvers.linalg import shared_matmul


class Isotropic:
    """f(W) = (L/2) ||W - W*||^2 (mu = L), f* = 0."""

    def __init__(self, m, n, L=2.0, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.shape, self.L, self.mu, self.f_star, self.n_samples = (m, n), L, L, 0.0, None
        self.W_star = torch.randn(m, n, generator=gen, dtype=torch.float64)
        self.W0 = torch.zeros(m, n, dtype=torch.float64)

    def loss(self, W):
        return 0.5 * self.L * ((W - self.W_star) ** 2).sum((-2, -1))

    def grad(self, W):
        return self.L * (W - self.W_star)


class LeastSquaresSum:
    """f(W) = (1/N) sum_i 1/2 (<X_i, W> - y_i)^2, a finite sum for SGD/PAGE/MVR."""

    def __init__(self, m, n, N=40, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.shape, self.n_samples = (m, n), N
        self.X = torch.randn(N, m, n, generator=gen, dtype=torch.float64)
        self.y = torch.randn(N, generator=gen, dtype=torch.float64)
        self.W0 = torch.zeros(m, n, dtype=torch.float64)
        self.f_star = float("nan")
        self.W_star = None

    def _Xflat(self):
        return self.X.reshape(self.n_samples, -1)

    def _res(self, W):
        return shared_matmul(W.reshape(W.shape[0], -1), self._Xflat().T) - self.y

    def loss(self, W):
        return 0.5 * (self._res(W) ** 2).mean(-1)

    def grad(self, W):
        return (shared_matmul(self._res(W), self._Xflat()) / self.n_samples).reshape(W.shape)

    def minibatch_grad(self, W, idx):
        X = self._Xflat()[idx]  # (R, b, d)
        res = (X * W.reshape(W.shape[0], 1, -1)).sum(-1) - self.y[idx]
        return ((res[:, :, None] * X).sum(1) / idx.shape[1]).reshape(W.shape)
