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
"""
from __future__ import annotations

import torch

from solvers.linalg import bmm

# relative cut-off for the eigenvalues of the r x r Gram matrix: a Gram matrix
# squares the condition number, so sqrt(eps) ~ 1e-8 separates exact rank
# deficiency (eigenvalues ~ eps * ||B||^2) from genuinely small directions.
_RTOL = 1e-10


def _gram_pinv(S: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of the batched Gram matrix ``S^T S`` of shape (..., r, r)."""
    gram = bmm(S.transpose(-1, -2), S)
    r = gram.shape[-1]
    return torch.linalg.pinv(gram, hermitian=True, rtol=_RTOL * r)


def project_left(B: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`H_B G` for left sketches ``B`` (R, m, r) and ``G`` (R, m, n)."""
    return bmm(B, bmm(_gram_pinv(B), bmm(B.transpose(-1, -2), G)))


def project_right(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`G H_A` for right sketches ``A`` (R, r, n) and ``G`` (R, m, n)."""
    At = A.transpose(-1, -2)  # (R, n, r)
    return bmm(bmm(bmm(G, At), _gram_pinv(At)), A)


def dense_projector_left(B: torch.Tensor) -> torch.Tensor:
    """Explicit ``H_B`` (R, m, m) from ``torch.linalg.pinv``: a reference for tests
    and benchmarks, never used by the solvers."""
    return B @ torch.linalg.pinv(B)


def dense_projector_right(A: torch.Tensor) -> torch.Tensor:
    """Explicit ``H_A`` (R, n, n): reference only."""
    return torch.linalg.pinv(A) @ A
