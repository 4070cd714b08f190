r"""Exact moment propagation through random affine maps (numpy only).

A state :math:`x \in \mathbb R^D` is carried in homogeneous coordinates
:math:`\tilde x = (x, 1)`, and its moments as the single matrix
:math:`S = \mathbb E[\tilde x \tilde x^\top]` (the last column holds the mean
:math:`\mathbb E x`, the top-left block the raw second moment). A random affine map
:math:`x' = M x + c` is the random matrix :math:`T = \begin{pmatrix} M & c\\ 0 & 1\end{pmatrix}`,
and for :math:`T` independent of :math:`x`

.. math:: S' = \mathbb E[T S T^\top].

The maps met in the suite are **mixtures** (a coin picks a component) of
**sums of independent pieces** :math:`T = T_0 + \sum_j T_j(\xi_j)` with the
:math:`\xi_j` independent. For such a component

.. math:: \mathbb E[TST^\top] = \bar T S \bar T^\top
          + \sum_j \big(\mathbb E[T_j S T_j^\top] - \bar T_j S \bar T_j^\top\big),
          \qquad \bar T = T_0 + \sum_j \bar T_j,

since the cross terms of two independent pieces factor into their means. Each
piece gives its mean and :math:`X \mapsto \mathbb E[T_j X T_j^\top]` in closed form:

* :class:`Subset`: :math:`T = s\sum_i z_i T^{(i)}`, z the indicator of a uniformly
  random k-subset of N (without replacement), with
  :math:`\mathbb E z_i = k/N`, :math:`\mathbb E z_i z_j = k(k-1)/(N(N-1))` (i != j):
  Rand-k (scaled or not), minibatches, the identity (k = N).
* :class:`Projection`: :math:`T = L (H\otimes I_n) R` or :math:`L (I_m\otimes H) R` with
  H a random orthogonal projection, through its moments :math:`\mathbb E H` and
  :math:`\mathbb E[H_{ik}H_{jl}]`: the projection onto a uniformly random r-dimensional
  subspace (Gaussian and Haar-orthonormal sketches, :func:`haar_projection_moments`),
  a uniform set of r coordinates (column sketches), any random set of coordinates given
  its inclusion probabilities and pair inclusion probabilities (:func:`diagonal_moments`:
  weighted column sketches), or any enumerated distribution (Rademacher sketches).
* :class:`Noise`: an additive :math:`C z`, z standard normal.
* :class:`Finite`: any finite list of outcomes with probabilities (enumeration; tests).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def haar_projection_moments(dim: int, r: int):
    r"""``(alpha, beta)`` with :math:`\mathbb E[H_{ik}H_{jl}] = \alpha\delta_{ik}\delta_{jl}
    + \beta(\delta_{ij}\delta_{kl} + \delta_{il}\delta_{jk})` for the orthogonal projection
    H onto a uniformly random r-dimensional subspace of :math:`\mathbb R^{dim}`.

    The tensor is O(dim)-invariant, so of this form with two constants (H symmetric
    makes the two last coefficients equal). :math:`H^2 = H` with
    :math:`\mathbb E H = (r/dim) I` gives :math:`\alpha + (dim+1)\beta = r/dim`, and
    :math:`(\operatorname{tr} H)^2 = r^2` gives :math:`dim^2\alpha + 2 dim\,\beta = r^2`; hence

    .. math:: \beta = \frac{r(dim - r)}{dim(dim-1)(dim+2)},\qquad
              \alpha = \frac r{dim} - (dim+1)\beta.
    """
    if not (1 <= r <= dim):
        raise ValueError(f"rank: must lie in [1, {dim}], got {r}")
    if dim == 1:
        return 1.0, 0.0
    beta = r * (dim - r) / (dim * (dim - 1) * (dim + 2))
    return r / dim - (dim + 1) * beta, beta


class _Sparse:
    """Outcomes ``terms`` (K, a, b) kept on their support (the rows and columns where some
    outcome is nonzero: the maps are sparse), computed once per piece."""

    @functools.cached_property
    def _compact(self):
        nz = self.terms != 0
        rows, cols = np.flatnonzero(nz.any((0, 2))), np.flatnonzero(nz.any((0, 1)))
        return rows, cols, np.ascontiguousarray(self.terms[:, rows][:, :, cols])

    def _sandwich(self, weights, S):
        """:math:`\\sum_k w_k T_k S T_k^\\top`."""
        rows, cols, T = self._compact
        U = np.einsum("k,kab,bc->kac", weights, T, S[np.ix_(cols, cols)], optimize=True)
        out = np.zeros((self.terms.shape[1], self.terms.shape[1]))
        out[np.ix_(rows, rows)] = np.einsum("kac,kdc->ad", U, T, optimize=True)
        return out


@dataclass(frozen=True)
class Subset(_Sparse):
    """:math:`T = s\\sum_i z_i T^{(i)}`, ``terms`` (N, a, b), z a uniform k-subset of N."""

    terms: np.ndarray
    k: int
    scale: float = 1.0

    def _c(self):
        N, k = self.terms.shape[0], self.k
        return k / N, (k * (k - 1) / (N * (N - 1)) if N > 1 else 0.0)

    @functools.cached_property
    def _total(self):
        return self.terms.sum(0)

    def mean(self):
        return self.scale * self._c()[0] * self._total

    def second(self, S):
        c_diag, c_off = self._c()
        tot = self._total
        diag = self._sandwich(np.ones(self.terms.shape[0]), S)
        return self.scale ** 2 * (c_off * tot @ S @ tot.T + (c_diag - c_off) * diag)


def haar_moments(dim: int, r: int):
    """``(E H, E[H_ik H_jl])`` of the uniform random rank-r projection (:func:`haar_projection_moments`)."""
    alpha, beta = haar_projection_moments(dim, r)
    eye = np.eye(dim)
    fourth = alpha * np.einsum("ik,jl->ikjl", eye, eye) + beta * (np.einsum("ij,kl->ikjl", eye, eye)
                                                                 + np.einsum("il,jk->ikjl", eye, eye))
    return (r / dim) * eye, fourth


def diagonal_moments(first: np.ndarray, joint: np.ndarray):
    r"""``(E H, E[H_ik H_jl])`` of a random diagonal projection :math:`H = \operatorname{diag}(z)`,
    z the indicator of a random set S of coordinates, from ``first`` :math:`= \mathbb E H
    = \operatorname{diag}(\pi)` and ``joint`` :math:`\Pi_{ij} = \Pr[i, j \in S]
    = \mathbb E z_iz_j` (:math:`\Pi_{ii} = \pi_i` since :math:`z_i^2 = z_i`): the only
    non-zero fourth moments are :math:`\mathbb E[H_{ii}H_{jj}] = \Pi_{ij}`.

    Refuses (``sketch.name``) a ``first`` that is not diagonal, a ``joint`` that is not
    symmetric, or whose diagonal is not ``diag(first)`` (to 1e-12): the two descriptions
    of one sketch must agree."""
    first, joint = np.asarray(first, dtype=float), np.asarray(joint, dtype=float)
    dim = first.shape[0]
    pi = np.diag(first)
    if (first.shape != (dim, dim) or joint.shape != (dim, dim) or np.any(first - np.diag(pi))
            or not np.allclose(joint, joint.T, rtol=0, atol=1e-15)
            or not np.allclose(np.diag(joint), pi, rtol=0, atol=1e-12)):
        raise ValueError("sketch.name: a diagonal random projection needs a diagonal E[H] and a symmetric "
                         "joint inclusion matrix with diagonal diag(E[H])")
    eye = np.eye(dim)
    return first.copy(), np.einsum("ik,jl,ij->ikjl", eye, eye, joint)


def column_moments(dim: int, r: int):
    """``(E H, E[H_ik H_jl])`` of H = diag(z), z the indicator of a uniform r-subset of dim
    coordinates: :math:`\\mathbb E z_i = r/dim`, :math:`\\mathbb E z_iz_j = r(r-1)/(dim(dim-1))`
    (:func:`diagonal_moments`)."""
    c_off = r * (r - 1) / (dim * (dim - 1)) if dim > 1 else 0.0
    pair = np.full((dim, dim), c_off)
    np.fill_diagonal(pair, r / dim)
    return diagonal_moments((r / dim) * np.eye(dim), pair)


def enumerated_moments(H: np.ndarray, probs: np.ndarray, chunk: int = 4096):
    """``(E H, E[H_ik H_jl])`` over the outcomes ``H`` (K, dim, dim) with ``probs`` (K,)."""
    dim = H.shape[1]
    first, fourth = np.zeros((dim, dim)), np.zeros((dim,) * 4)
    for start in range(0, H.shape[0], chunk):
        h, w = H[start:start + chunk], probs[start:start + chunk]
        first += np.einsum("k,kij->ij", w, h)
        fourth += np.einsum("k,kij,klm->ijlm", w, h, h, optimize=True)
    return first, fourth


@dataclass(frozen=True)
class Projection:
    r""":math:`T = L\,(H\otimes I_n)\,R` (``side='left'``, H of size m) or
    :math:`L\,(I_m\otimes H)\,R` (``'right'``, H of size n), row-major vec of m x n
    matrices, ``L`` (a, mn), ``R`` (mn, b), for a random H with ``first`` :math:`= \mathbb E H`
    and ``fourth[i, k, j, l]`` :math:`= \mathbb E[H_{ik}H_{jl}]` (:func:`haar_moments`,
    :func:`column_moments`, :func:`diagonal_moments`, :func:`enumerated_moments`)."""

    L: np.ndarray
    R: np.ndarray
    m: int
    n: int
    side: str
    first: np.ndarray
    fourth: np.ndarray

    def mean(self):
        m, n = self.m, self.n
        lift = np.kron(self.first, np.eye(n)) if self.side == "left" else np.kron(np.eye(m), self.first)
        return self.L @ lift @ self.R

    def second(self, S):
        m, n = self.m, self.n
        X = (self.R @ S @ self.R.T).reshape(m, n, m, n)
        if self.side == "left":  # Y[i,a,j,b] = sum_kl E[H_ik H_jl] X[k,a,l,b]
            Y = np.einsum("ikjl,kalb->iajb", self.fourth, X, optimize=True)
        else:  # Y[a,i,b,j] = sum_kl E[H_ik H_jl] X[a,k,b,l]
            Y = np.einsum("ikjl,akbl->aibj", self.fourth, X, optimize=True)
        return self.L @ Y.reshape(m * n, m * n) @ self.L.T


@dataclass(frozen=True)
class Noise:
    """:math:`T = C z e_h^\\top`: adds :math:`Cz` (z standard normal) to the output;
    ``shape`` (a, b) of T and ``h`` the index of the homogeneous coordinate."""

    C: np.ndarray
    shape: tuple
    h: int

    def mean(self):
        return np.zeros(self.shape)

    def second(self, S):
        return S[self.h, self.h] * self.C @ self.C.T


@dataclass(frozen=True)
class Finite(_Sparse):
    """Outcomes ``terms`` (K, a, b) with probabilities ``probs`` (K,) (exact enumeration)."""

    terms: np.ndarray
    probs: np.ndarray

    def mean(self):
        return np.einsum("k,kab->ab", self.probs, self.terms)

    def second(self, S):
        return self._sandwich(self.probs, S)


@dataclass(frozen=True)
class Component:
    """:math:`T = T_0 + \\sum_j T_j` with independent pieces."""

    T0: np.ndarray
    pieces: Sequence = ()

    @functools.cached_property
    def _means(self):
        r"""The pieces' means and :math:`\bar T`: the same at every step, made at the first
        (the component is frozen; its pieces are frozen too)."""
        means = [p.mean() for p in self.pieces]
        return means, self.T0 + sum(means, np.zeros_like(self.T0))

    def mean(self):
        return self._means[1].copy()

    def push(self, S):
        means, Tbar = self._means
        out = Tbar @ S @ Tbar.T
        for piece, M in zip(self.pieces, means):
            out += piece.second(S) - M @ S @ M.T
        return out


@dataclass(frozen=True)
class RandomAffine:
    """A mixture ``[(weight, Component), ...]`` (weights summing to 1)."""

    components: Sequence

    def push(self, S):
        """:math:`\\mathbb E[T S T^\\top]` for T independent of the state."""
        out = sum(w * c.push(S) for w, c in self.components if w > 0)
        return 0.5 * (out + out.T)


class Layout:
    """Named blocks of a state vector, in order, plus the homogeneous coordinate ``h``."""

    def __init__(self, blocks):
        self.offsets, start = {}, 0
        for name, size in blocks:
            self.offsets[name] = slice(start, start + size)
            start += size
        self.h = start
        self.size = start + 1

    def __getitem__(self, name):
        return self.offsets[name]

    def __contains__(self, name):
        return name in self.offsets


def embed(out: Layout, inp: Layout, entries):
    """Dense (out.size, inp.size) matrix from ``[(out_block, in_block, matrix), ...]``;
    a block name ``'h'`` is the homogeneous coordinate (a vector block)."""
    T = np.zeros((out.size, inp.size))
    for o, i, block in entries:
        os_ = slice(out.h, out.h + 1) if o == "h" else out[o]
        is_ = slice(inp.h, inp.h + 1) if i == "h" else inp[i]
        T[os_, is_] += np.asarray(block, dtype=float).reshape(os_.stop - os_.start, is_.stop - is_.start)
    return T


def selector(out: Layout, name: str, d: int):
    """The (out.size, d) matrix putting a d-vector into block ``name``."""
    L = np.zeros((out.size, d))
    L[out[name], :] = np.eye(d)
    return L
