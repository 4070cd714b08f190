r"""scikit-learn's regression generators, re-implemented so that the paper's data
can be built without scikit-learn and with the heavy linear algebra in torch.

:func:`make_low_rank_matrix` and :func:`make_regression` draw exactly the same random
numbers, in the same order, from the same :class:`numpy.random.RandomState` as
``sklearn.datasets.make_low_rank_matrix`` / ``make_regression`` (scikit-learn 1.x), so
for one ``random_state`` they return the same arrays:

* ``device=None`` (default): numpy/scipy only, the very operations scikit-learn performs
  (``scipy.linalg.qr(..., mode="economic")``, ``np.dot``); the output equals
  scikit-learn's bitwise when the same scipy/numpy builds are used.
* ``device="cpu" | "cuda" | torch.device``: the random numbers still come from numpy
  (that is what fixes the data), but the QR decompositions and the products run in torch
  (float64) on that device and torch tensors are returned. Torch's QR is Householder
  QR (LAPACK ``geqrf``/``orgqr`` on CPU, cuSOLVER/MAGMA on CUDA) with LAPACK's sign
  convention (:math:`R_{ii} = -\mathrm{sign}(\alpha_i)\|\cdot\|`), the same as scipy's,
  so the orthonormal factors agree up to rounding and the data agree with scikit-learn's
  to about 1e-13 relative (tested on CPU; never bitwise, the BLAS kernels differ).

The data model (scikit-learn's): with :math:`n = \min(N, F)`, :math:`G_1 \in \mathbb
R^{N\times n}`, :math:`G_2 \in \mathbb R^{F \times n}` standard normal,
:math:`U = \mathrm{qr}(G_1)`, :math:`V = \mathrm{qr}(G_2)`,
:math:`s_k = (1-t) e^{-(k/r)^2} + t e^{-0.1 k/r}` (t the tail strength, r the effective
rank), :math:`X = U \mathrm{diag}(s) V^\top`; then :math:`y = X\beta + \text{bias} +
\text{noise}\cdot\varepsilon` with :math:`\beta_j = 100\, u_j`, :math:`u_j \sim U(0,1)`
for the first ``n_informative`` features and 0 otherwise; finally the rows and then the
features are shuffled. (scikit-learn forms ``np.dot(u, np.identity(n) * s)``. Multiplying
by a diagonal matrix only adds exact zeros, so the torch paths use the column scaling
``u * s``; the numpy path keeps scikit-learn's exact operations, because OpenBLAS 0.3.31
gives last-bit different GEMM results for equal operands held in different buffers.)

:func:`make_regression_factored` returns the same regression without forming X: the
Householder reflectors of :math:`G_1` (``geqrf``, half the work of an explicit QR), the
spectrum and the feature-permuted V, in a :class:`LowRankDesign` that applies
:math:`X`, :math:`X^\top` and gives the Gram matrix :math:`X^\top X = V_P\,\mathrm{diag}(s^2)
V_P^\top` (since :math:`U^\top U = I`; row shuffles cancel in every sum over samples).
For the paper's pretraining set (90000 x 4096) this replaces a 90000 x 4096 x 4096 GEMM
and the explicit Q by a 4096-cubed GEMM.
"""
from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch

from solvers.linalg import one_thread

__all__ = ["check_random_state", "make_low_rank_matrix", "make_regression",
           "make_regression_factored", "LowRankDesign", "singular_profile"]

_DTYPE = torch.float64
_SMALL = 1 << 20  # elements: below this a CPU LAPACK call runs on one thread


@contextlib.contextmanager
def small_cpu_work(device, numel):
    """Run torch on one CPU thread while the work is small (``numel`` elements): a
    threaded LAPACK call on a tiny matrix costs up to a second when the cores are busy
    (spinning OpenMP workers), a single-threaded one a millisecond."""
    if torch.device(device).type != "cpu" or numel > _SMALL:
        yield
        return
    with one_thread():
        yield


def check_random_state(seed):
    """``None`` -> numpy's global RandomState, int -> a fresh ``RandomState(seed)``,
    a RandomState -> itself (scikit-learn's ``check_random_state``)."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"random_state: expected None, an int or a numpy RandomState, got {seed!r}")


def _check_int(field, value, low):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{field}: must be an integer >= {low}, got {value!r}")


def _check_real(field, value, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{field}: must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{field}: must lie in [{low}, {high}], got {value!r}")


def singular_profile(n, effective_rank, tail_strength):
    """The singular values :math:`s_0, \\dots, s_{n-1}` of :func:`make_low_rank_matrix`."""
    singular_ind = np.arange(n, dtype=np.float64)
    low_rank = (1 - tail_strength) * np.exp(-1.0 * (singular_ind / effective_rank) ** 2)
    tail = tail_strength * np.exp(-0.1 * singular_ind / effective_rank)
    return low_rank + tail


def _device(device):
    return None if device is None else torch.device(device)


def _qr_np(a):
    try:
        from scipy import linalg
    except ImportError:  # numpy's LAPACK QR: same Householder algorithm and signs
        return np.linalg.qr(a, mode="reduced")[0]
    return linalg.qr(a, mode="economic", check_finite=False)[0]


def _low_rank_draws(n_samples, n_features, effective_rank, tail_strength, generator):
    _check_int("n_samples", n_samples, 1)
    _check_int("n_features", n_features, 1)
    _check_int("effective_rank", effective_rank, 1)
    _check_real("tail_strength", tail_strength, 0.0, 1.0)
    n = min(n_samples, n_features)
    g1 = generator.standard_normal(size=(n_samples, n))
    g2 = generator.standard_normal(size=(n_features, n))
    return g1, g2, singular_profile(n, effective_rank, tail_strength)


def make_low_rank_matrix(n_samples=100, n_features=100, *, effective_rank=10, tail_strength=0.5,
                         random_state=None, device=None):
    """A mostly low-rank matrix with a bell-shaped singular profile (scikit-learn's
    ``make_low_rank_matrix``, same draws). ``device`` given: QR and products in torch,
    returns a float64 tensor on that device."""
    generator = check_random_state(random_state)
    g1, g2, s = _low_rank_draws(n_samples, n_features, effective_rank, tail_strength, generator)
    dev = _device(device)
    if dev is None:
        u, v = _qr_np(g1), _qr_np(g2)
        return np.dot(np.dot(u, np.identity(s.shape[0]) * s), v.T)
    with small_cpu_work(dev, g1.size):
        u = torch.linalg.qr(torch.from_numpy(g1).to(dev), mode="reduced").Q
        del g1
        v = torch.linalg.qr(torch.from_numpy(g2).to(dev), mode="reduced").Q
        u.mul_(torch.from_numpy(s).to(dev))
        return u @ v.T


def _check_regression(n_samples, n_features, n_informative, n_targets, bias, noise, tail_strength):
    _check_int("n_samples", n_samples, 1)
    _check_int("n_features", n_features, 1)
    _check_int("n_informative", n_informative, 0)
    _check_int("n_targets", n_targets, 1)
    _check_real("bias", bias)
    _check_real("noise", noise, 0.0)
    _check_real("tail_strength", tail_strength, 0.0, 1.0)


def _targets_draws(generator, n_features, n_informative, n_targets):
    ground_truth = np.zeros((n_features, n_targets))
    ground_truth[:n_informative, :] = 100 * generator.uniform(size=(n_informative, n_targets))
    return ground_truth


def make_regression(n_samples=100, n_features=100, *, n_informative=10, n_targets=1, bias=0.0,
                    effective_rank=None, tail_strength=0.5, noise=0.0, shuffle=True, coef=False,
                    random_state=None, device=None):
    """A random linear regression problem (scikit-learn's ``make_regression``, same draws
    and same outputs ``X, y[, coef]``). ``device`` given: the QR decompositions and the
    products run in torch on that device and X, y (and coef) are float64 tensors there."""
    _check_regression(n_samples, n_features, n_informative, n_targets, bias, noise, tail_strength)
    n_informative = min(n_features, n_informative)
    generator = check_random_state(random_state)
    dev = _device(device)
    if effective_rank is None:
        X = generator.standard_normal(size=(n_samples, n_features))
        if dev is not None:
            X = torch.from_numpy(X).to(dev)
    else:
        X = make_low_rank_matrix(n_samples, n_features, effective_rank=effective_rank,
                                 tail_strength=tail_strength, random_state=generator, device=dev)
    ground_truth = _targets_draws(generator, n_features, n_informative, n_targets)
    if dev is None:
        y = np.dot(X, ground_truth) + bias
    else:
        y = X @ torch.from_numpy(ground_truth).to(dev) + bias
    if noise > 0.0:
        eps = generator.normal(scale=noise, size=tuple(y.shape))
        y += eps if dev is None else torch.from_numpy(eps).to(dev)
    if shuffle:
        row_perm = np.arange(n_samples)
        generator.shuffle(row_perm)
        feature_perm = np.arange(n_features)
        generator.shuffle(feature_perm)
        if dev is None:
            X, y = X[row_perm], y[row_perm]
            X[:, :] = X[:, feature_perm]
        else:
            rp, fp = torch.from_numpy(row_perm).to(dev), torch.from_numpy(feature_perm).to(dev)
            X = X[rp][:, fp]
            y = y[rp]
        ground_truth = ground_truth[feature_perm]
    y = y.squeeze() if dev is not None else np.squeeze(y)
    if dev is not None and y.dim() == 0:
        y = y.reshape(1)
    if coef:
        gt = np.squeeze(ground_truth)
        return X, y, (gt if dev is None else torch.from_numpy(np.ascontiguousarray(gt)).to(dev))
    return X, y


class LowRankDesign:
    r"""The design matrix :math:`X = P_{\mathrm{rows}}\, U \mathrm{diag}(s) V_P^\top`
    of :func:`make_regression_factored`, never formed.

    ``reflectors, tau``: ``torch.geqrf`` of :math:`G_1` (U is the first n columns of the
    product of the reflectors); ``s`` (n,); ``V`` (F, n), rows already in the shuffled
    feature order; ``row_perm`` (N,): row i of X is row ``row_perm[i]`` of
    :math:`U\mathrm{diag}(s)V_P^\top`.
    """

    def __init__(self, reflectors, tau, s, V, row_perm):
        self.reflectors, self.tau, self.s, self.V, self.row_perm = reflectors, tau, s, V, row_perm
        self.shape = (reflectors.shape[0], V.shape[0])

    def _U(self, Z):
        """:math:`U Z` for Z (n, k)."""
        N, n = self.reflectors.shape
        padded = torch.zeros(N, Z.shape[1], dtype=Z.dtype, device=Z.device)
        padded[:n] = Z
        return torch.ormqr(self.reflectors, self.tau, padded, left=True, transpose=False)

    def _Ut(self, Z):
        """:math:`U^\\top Z` for Z (N, k)."""
        n = self.reflectors.shape[1]
        return torch.ormqr(self.reflectors, self.tau, Z, left=True, transpose=True)[:n]

    def matvec(self, z):
        """:math:`X z` for z (F,) or (F, k)."""
        Z = z.reshape(self.shape[1], -1)
        out = self._U(self.s[:, None] * (self.V.T @ Z))[self.row_perm]
        return out.reshape((self.shape[0],) + tuple(z.shape[1:]))

    def rmatvec(self, w):
        """:math:`X^\\top w` for w (N,) or (N, k) in the (shuffled) row order of X."""
        W = w.reshape(self.shape[0], -1)
        unshuffled = torch.empty_like(W)
        unshuffled[self.row_perm] = W
        out = self.V @ (self.s[:, None] * self._Ut(unshuffled))
        return out.reshape((self.shape[1],) + tuple(w.shape[1:]))

    def gram(self):
        """:math:`X^\\top X = V_P \\mathrm{diag}(s^2) V_P^\\top` (uses :math:`U^\\top U = I`),
        exactly symmetric."""
        G = (self.V * self.s ** 2) @ self.V.T
        return 0.5 * (G + G.T)

    def dense(self):
        """X itself (N, F): for tests and small sizes."""
        N, n = self.reflectors.shape
        U = torch.linalg.householder_product(self.reflectors, self.tau)
        return ((U * self.s) @ self.V.T)[self.row_perm]


def make_regression_factored(n_samples=100, n_features=100, *, n_informative=10, n_targets=1,
                             bias=0.0, effective_rank=10, tail_strength=0.5, noise=0.0,
                             random_state=None, device="cpu"):
    """:func:`make_regression` with ``effective_rank`` set and ``shuffle=True``, the design
    returned factored: ``(LowRankDesign, y, coef)``, y and coef as float64 tensors on
    ``device``. Same draws, so ``design.dense(), y, coef`` equal ``make_regression(...,
    coef=True)`` up to rounding. Costs one ``geqrf`` of the N x n Gaussian (no explicit Q,
    no N x F product)."""
    _check_regression(n_samples, n_features, n_informative, n_targets, bias, noise, tail_strength)
    if effective_rank is None:
        raise ValueError("effective_rank: make_regression_factored needs a low-rank design (an integer >= 1)")
    n_informative = min(n_features, n_informative)
    generator = check_random_state(random_state)
    dev = torch.device(device)
    g1, g2, s_np = _low_rank_draws(n_samples, n_features, effective_rank, tail_strength, generator)
    with small_cpu_work(dev, g1.size):
        reflectors, tau = torch.geqrf(torch.from_numpy(g1).to(dev))
        del g1
        V = torch.linalg.qr(torch.from_numpy(g2).to(dev), mode="reduced").Q
    s = torch.from_numpy(s_np).to(dev)
    ground_truth = _targets_draws(generator, n_features, n_informative, n_targets)
    gt = torch.from_numpy(ground_truth).to(dev)
    design = LowRankDesign(reflectors, tau, s, V, torch.arange(n_samples, device=dev))
    y = design.matvec(gt) + bias  # unshuffled rows, unpermuted features (as scikit-learn)
    if noise > 0.0:
        y += torch.from_numpy(generator.normal(scale=noise, size=tuple(y.shape))).to(dev)
    row_perm = np.arange(n_samples)
    generator.shuffle(row_perm)
    feature_perm = np.arange(n_features)
    generator.shuffle(feature_perm)
    rp = torch.from_numpy(row_perm).to(dev)
    design.row_perm = rp
    design.V = V[torch.from_numpy(feature_perm).to(dev)]
    y = y[rp].reshape(n_samples, n_targets)
    y = y[:, 0] if n_targets == 1 else y
    coef = torch.from_numpy(np.ascontiguousarray(np.squeeze(ground_truth[feature_perm], axis=1)
                                                 if n_targets == 1 else ground_truth[feature_perm])).to(dev)
    return design, y, coef
