r"""Spectral constants of the Bernoulli-LoRA sketch mixture.

One step applies :math:`\hat H(G) = H_B G` with probability :math:`p` (left sketch)
or :math:`G H_A` with probability :math:`1-p` (right sketch). In expectation this
is the self-adjoint linear operator on :math:`\mathbb R^{m\times n}`

.. math:: \mathcal H_p(X) = p\,\mathbb E[H_B]\,X + (1-p)\,X\,\mathbb E[H_A],

whose eigenvalues are :math:`p\,a_i + (1-p)\,b_j` for the eigenvalues
:math:`a_i` of :math:`\mathbb E[H_B]` and :math:`b_j` of :math:`\mathbb E[H_A]`.
Hence (docs/theory.md#notation)

.. math::

    \lambda_{\min}^p = p\,\lambda_{\min}(\mathbb E H_B) + (1-p)\,\lambda_{\min}(\mathbb E H_A),\qquad
    \lambda_{\max}^p = p\,\lambda_{\max}(\mathbb E H_B) + (1-p)\,\lambda_{\max}(\mathbb E H_A).

Because every :math:`H` is an orthogonal projection,
:math:`\mathbb E\|\hat H X\|^2 = \langle X, \mathcal H_p X\rangle \in
[\lambda_{\min}^p\|X\|^2, \lambda_{\max}^p\|X\|^2]`; every bound in
:mod:`theory.bounds` uses only these two numbers.

Rotation-invariant sketches (Gaussian, Haar-orthonormal) and the uniform column
subset give :math:`\mathbb E H_B = (r/m) I_m`, :math:`\mathbb E H_A = (r/n) I_n`; then
:math:`\lambda_{\min}^p = \lambda_{\max}^p`, and for m = n both equal r/n for every p.
Coordinate sketches with unequal inclusion probabilities :math:`\pi_i`
(``weighted_column`` in :mod:`solvers.sketches`) give the diagonal
:math:`\mathbb E H = \operatorname{diag}(\pi)`, so :math:`\lambda_{\min}^p < \lambda_{\max}^p`
and p matters on a square W; :func:`lambda_p_from_expectations` takes such an
expectation as its diagonal.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "lambda_min_p",
    "lambda_max_p",
    "lambda_p_from_expectations",
    "isotropic_expected_projection",
    "isotropic_lambda_p",
]


def _check_p(p):
    p = np.asarray(p, dtype=float)
    if np.any(~((p >= 0) & (p <= 1))):
        raise ValueError(f"p: must lie in [0, 1], got {p}")
    return p


def _result(x):
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else x


def lambda_min_p(p, lmin_left, lmin_right):
    r""":math:`\lambda_{\min}^p = p\,\lambda_{\min}(\mathbb E H_B) + (1-p)\,\lambda_{\min}(\mathbb E H_A)`.

    Parameters
    ----------
    p : float or array_like
        Probability of the left sketch (B sampled, A trained), in [0, 1].
    lmin_left, lmin_right : float or array_like
        Smallest eigenvalues of :math:`\mathbb E[H_B]` (m x m) and
        :math:`\mathbb E[H_A]` (n x n), each in [0, 1].

    Returns
    -------
    float or ndarray (broadcast shape)
    """
    p = _check_p(p)
    return _result(p * np.asarray(lmin_left, float) + (1 - p) * np.asarray(lmin_right, float))


def lambda_max_p(p, lmax_left, lmax_right):
    r""":math:`\lambda_{\max}^p = p\,\lambda_{\max}(\mathbb E H_B) + (1-p)\,\lambda_{\max}(\mathbb E H_A)`.

    Same conventions as :func:`lambda_min_p`.
    """
    p = _check_p(p)
    return _result(p * np.asarray(lmax_left, float) + (1 - p) * np.asarray(lmax_right, float))


def lambda_p_from_expectations(p, expected_left, expected_right):
    r"""Both constants from the expected projection matrices themselves.

    Parameters
    ----------
    p : float
        Probability of the left sketch.
    expected_left : (m, m) or (m,) array_like
        :math:`\mathbb E[H_B]` (symmetric positive semidefinite), or its diagonal
        when it is diagonal (its eigenvalues are then the entries).
    expected_right : (n, n) or (n,) array_like
        :math:`\mathbb E[H_A]`, likewise.

    Returns
    -------
    (lambda_min_p, lambda_max_p) : tuple of float
    """
    el, er = _eigenvalues(expected_left, "expected_left"), _eigenvalues(expected_right, "expected_right")
    return lambda_min_p(p, el[0], er[0]), lambda_max_p(p, el[-1], er[-1])


def _eigenvalues(E, field):
    E = np.asarray(E, dtype=float)
    if E.ndim == 1 and E.size:
        return np.sort(E)
    if E.ndim == 2 and E.shape[0] == E.shape[1] and E.size:
        return np.linalg.eigvalsh(E)
    raise ValueError(f"{field}: expected a square matrix or its diagonal, got shape {E.shape}")


def isotropic_expected_projection(dim, rank):
    r""":math:`\mathbb E[H] = (r/d) I` for a rotation-invariant rank-``rank`` sketch of a
    ``dim``-dimensional side: returns the scalar :math:`r/d`.

    Exact for Gaussian, Haar-orthonormal and uniform column-subset sketches: the
    projection has trace r almost surely and its expectation commutes with every
    rotation (resp. permutation and sign flip), hence is :math:`(r/d) I`.
    """
    dim, rank = int(dim), int(rank)
    if dim < 1 or not 1 <= rank <= dim:
        raise ValueError(f"rank: must lie in [1, dim = {dim}], got {rank}")
    return rank / dim


def isotropic_lambda_p(p, m, n, rank):
    r""":math:`\lambda_{\min}^p = \lambda_{\max}^p = p\,r/m + (1-p)\,r/n` for
    rotation-invariant sketches (equal to r/n for every p when m = n).

    Returns
    -------
    (lambda_min_p, lambda_max_p) : tuple of float (equal)
    """
    left = isotropic_expected_projection(m, rank)
    right = isotropic_expected_projection(n, rank)
    return lambda_min_p(p, left, right), lambda_max_p(p, left, right)
