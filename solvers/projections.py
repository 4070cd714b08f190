r"""Sketched projections in factored form.

For a left sketch :math:`B_S \in \mathbb{R}^{m\times r}` and a right sketch
:math:`A_S \in \mathbb{R}^{r\times n}` the Bernoulli-LoRA update uses the
orthogonal projections

.. math::

    H_B = B_S (B_S^\top B_S)^{+} B_S^\top, \qquad
    H_A = A_S^\top (A_S A_S^\top)^{+} A_S .

They are never formed. :math:`H_B G = B_S\,[(B_S^\top B_S)^{+} (B_S^\top G)]`
costs :math:`O(mnr + mr^2 + r^3)` per run (an :math:`r\times r` Gram matrix and its
pseudo-inverse), against :math:`O(m^2 n)` for an explicit :math:`m\times m`
projector. The pseudo-inverse gives the right answer for rank-deficient sketches
(repeated columns, zero columns): the projection onto the range of :math:`B_S`.

``full_rank=True`` replaces the pseudo-inverse by a Cholesky solve (``cholesky_ex``,
no host synchronisation on CUDA, where ``pinv``'s eigendecomposition synchronises
and dominates a step). It is exact when the Gram matrix is positive definite, which
holds with probability one for Gaussian and Haar sketches (the methods use it on CUDA
for those only); a run whose Gram matrix is numerically singular then gets NaN, which
the engine reports as diverged rather than a silently wrong projection.
"""
from __future__ import annotations

import torch

from solvers.linalg import bmm, per_matrix

# relative cut-off for the eigenvalues of the r x r Gram matrix: a Gram matrix
# squares the condition number, so sqrt(eps) ~ 1e-8 separates exact rank
# deficiency (eigenvalues ~ eps * ||B||^2) from genuinely small directions.
_RTOL = 1e-10


def gram_pinv(S: torch.Tensor) -> torch.Tensor:
    r"""Pseudo-inverse of the batched Gram matrix ``S^T S`` (R, r, r), for ``S`` (R, d, r):
    :math:`U\,\mathrm{diag}(1/\lambda_i \text{ where } |\lambda_i| > \mathrm{tol})\,U^\top`
    from the eigendecomposition, ``tol = _RTOL * r * max|lambda|`` (``torch.linalg.pinv``'s
    hermitian rule; its product ``U diag U^T`` is one batched matmul, whose kernel
    depends on the batch size, hence :func:`solvers.linalg.bmm` here)."""
    gram = bmm(S.transpose(-1, -2), S)
    r = gram.shape[-1]
    if r == 1:  # the eigendecomposition of a 1 x 1 matrix, without LAPACK
        evals, U = gram[..., 0], torch.ones_like(gram)
    else:
        evals, U = per_matrix(torch.linalg.eigh, gram)
    tol = _RTOL * r * evals.abs().amax(-1, keepdim=True)
    inv = torch.where(evals.abs() > tol, 1.0 / evals, torch.zeros_like(evals))
    return bmm(U * inv[..., None, :], U.transpose(-1, -2))


def _gram_cholesky_solve(S: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    r"""``(S^T S)^{-1} rhs`` by Cholesky and two triangular solves (no host
    synchronisation; the ``full_rank`` path), NaN for a run whose Gram matrix is
    numerically singular.

    Cholesky often *succeeds* on an exactly singular Gram matrix (a repeated column
    leaves a rounding-sized pivot), so success alone proves nothing. Every pivot
    :math:`L_{ii}^2` is at least :math:`\lambda_{\min}` of the Gram matrix, and a
    rank-deficient one has a pivot of rounding size; a run is flagged when its smallest
    pivot is below the pseudo-inverse's cut-off ``_RTOL * r`` times its largest diagonal
    entry (the scale of :math:`\lambda_{\max}` up to a factor r)."""
    gram = bmm(S.transpose(-1, -2), S)
    chol, info = per_matrix(torch.linalg.cholesky_ex, gram)
    y = per_matrix(lambda c, b: torch.linalg.solve_triangular(c, b, upper=False), chol, rhs)
    x = per_matrix(lambda c, b: torch.linalg.solve_triangular(c, b, upper=True), chol.transpose(-1, -2), y)
    r = gram.shape[-1]
    pivots = torch.diagonal(chol, dim1=-2, dim2=-1) ** 2
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).amax(-1)
    ok = (info == 0) & (pivots.amin(-1) > _RTOL * r * scale)
    return torch.where(ok[..., None, None], x, torch.full_like(x, float("nan")))


def project_left(B: torch.Tensor, G: torch.Tensor, *, full_rank: bool = False) -> torch.Tensor:
    r"""Return :math:`H_B G` for left sketches ``B`` (R, m, r) and ``G`` (R, m, n)."""
    if not full_rank:
        return project_left_pinv(B, gram_pinv(B), G)
    return bmm(B, _gram_cholesky_solve(B, bmm(B.transpose(-1, -2), G)))


def project_left_pinv(B: torch.Tensor, P: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    r""":math:`H_B G = B\,[P\,(B^\top G)]` with ``P`` (R, r, r) the pseudo-inverse of the Gram
    matrix :math:`(B^\top B)^+` (:func:`gram_pinv` of ``B``), computed beforehand: bitwise
    :func:`project_left` (:mod:`solvers.lean` computes ``P`` for a block of steps at once)."""
    return bmm(B, bmm(P, bmm(B.transpose(-1, -2), G)))


def project_right(A: torch.Tensor, G: torch.Tensor, *, full_rank: bool = False) -> torch.Tensor:
    r"""Return :math:`G H_A` for right sketches ``A`` (R, r, n) and ``G`` (R, m, n)."""
    At = A.transpose(-1, -2)  # (R, n, r)
    if not full_rank:
        return project_right_pinv(A, gram_pinv(At), G)
    # G A^T (A A^T)^{-1} = ((A A^T)^{-1} A G^T)^T: the Gram matrix is symmetric
    return bmm(_gram_cholesky_solve(At, bmm(A, G.transpose(-1, -2))).transpose(-1, -2), A)


def project_right_pinv(A: torch.Tensor, P: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    r""":math:`G H_A = [(G A^\top) P]\,A` with ``P`` (R, r, r) :math:`(A A^\top)^+`
    (:func:`gram_pinv` of ``A^T``) computed beforehand: bitwise :func:`project_right`."""
    return bmm(bmm(bmm(G, A.transpose(-1, -2)), P), A)


def dense_projector_left(B: torch.Tensor) -> torch.Tensor:
    """Explicit ``H_B`` (R, m, m) from ``torch.linalg.pinv``: a reference for tests
    and benchmarks, never used by the solvers."""
    return B @ torch.linalg.pinv(B)


def dense_projector_right(A: torch.Tensor) -> torch.Tensor:
    """Explicit ``H_A`` (R, n, n): reference only."""
    return torch.linalg.pinv(A) @ A
