r"""Inclusion probabilities for sampling r distinct coordinates with unequal probabilities.

Used by :class:`solvers.sketches.WeightedColumnSketch`: target probabilities
proportional to weights, capped at 1 (:func:`capped_inclusion_probabilities`), and
their rounding to multiples of :math:`1/D`, :math:`D = 2^{32}`, that the
systematic sampler (:func:`systematic_sample`) realises exactly
(:func:`quantized_inclusion_probabilities`), and its pair inclusion probabilities
(:func:`joint_inclusion_probabilities`).
"""
from __future__ import annotations

import numpy as np
import torch

#: the sampler's inclusion probabilities are multiples of 1 / DEN (U is one 32-bit word)
DEN = 1 << 32


def capped_inclusion_probabilities(weights, r: int) -> np.ndarray:
    r"""Inclusion probabilities proportional to ``weights``, capped at 1, summing to r.

    :math:`\pi_i = \min(1, c\,w_i)` with the unique :math:`c > 0` such that
    :math:`\sum_i \pi_i = r` (the classical "probability proportional to size"
    rule). Computed exactly in finitely many steps: with the weights sorted in
    decreasing order, the k largest are capped for the smallest k such that
    :math:`c_k w_{(k+1)} \le 1`, :math:`c_k = (r - k) / \sum_{j > k} w_{(j)}`.

    Parameters
    ----------
    weights : (dim,) array_like of finite numbers >= 0, at least r of them > 0
    r : int in [1, dim]
    """
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or not 1 <= r <= w.size:
        raise ValueError(f"rank: must lie in [1, dim = {w.size}], got {r}")
    if not np.all(np.isfinite(w) & (w >= 0)) or np.count_nonzero(w) < r:
        raise ValueError(f"weights: need finite numbers >= 0, at least r = {r} of them > 0")
    order = np.argsort(-w, kind="stable")
    ws = w[order]
    tails = np.cumsum(ws[::-1])[::-1]  # tails[k] = sum_{j >= k} ws[j]
    for k in range(r):  # stops at k = r - 1 at the latest: ws[r-1] / tails[r-1] <= 1
        c = (r - k) / tails[k]
        if c * ws[k] <= 1.0:
            break
    pi = np.empty_like(w)
    pi[order] = np.concatenate([np.ones(k), np.minimum(1.0, c * ws[k:])])
    return pi


def quantized_inclusion_probabilities(pi, r: int, den: int = DEN) -> np.ndarray:
    """Integers q (int64) with q_i <= den, sum(q) = r den and |q_i / den - pi_i| < 1 / den
    (largest-remainder rounding of ``pi * den``): the sampler's exact probabilities."""
    x = np.asarray(pi, dtype=float) * den
    q = np.floor(x).astype(np.int64)
    deficit = int(r * den - q.sum())
    frac = x - q
    if deficit:
        q[np.argsort(-frac, kind="stable")[:deficit]] += 1
    if q.sum() != r * den or q.min() < 0 or q.max() > den:  # pragma: no cover - guards the rounding
        raise ValueError(f"weights: inclusion probabilities {pi} cannot be rounded to sum to r = {r}")
    return q


def systematic_sample(q: torch.Tensor, keys: torch.Tensor, u: torch.Tensor, r: int, den: int = DEN) -> torch.Tensor:
    r"""Systematic sampling in random order: r distinct indices, index i with probability q_i / den.

    Parameters
    ----------
    q : (dim,) int64 tensor, :math:`0 \le q_i \le` ``den``, :math:`\sum_i q_i = r\,`\ ``den``
    keys : (..., dim) int64 tensor; its stable argsort is the order :math:`\sigma`
    u : (..., 1) int64 tensor of values in ``range(den)`` (uniform for the stated law)
    r : int, the number of indices

    Returns
    -------
    (..., r) int64 tensor: the index whose interval, in the order :math:`\sigma`, holds
    the point :math:`u + j\,` ``den``, for j = 0, ..., r-1 (see
    :class:`solvers.sketches.WeightedColumnSketch` for the law and its derivation).
    """
    order = torch.argsort(keys, dim=-1, stable=True)
    ends = torch.cumsum(q.to(keys.device)[order], dim=-1)  # right ends of the intervals, in order sigma
    points = u + den * torch.arange(r, device=keys.device)
    pos = torch.searchsorted(ends.contiguous(), points.contiguous(), right=True)
    return torch.gather(order, -1, pos)


#: :func:`joint_inclusion_probabilities` enumerates dim! orders up to this dim
MAX_JOINT_DIM = 8


def joint_inclusion_probabilities(q, r: int, den: int = DEN) -> np.ndarray:
    r""":math:`\Pi_{ij} = \Pr[i \in S,\ j \in S]` of :func:`systematic_sample` with a uniformly
    random order, by enumeration of the dim! orders (dim <= :data:`MAX_JOINT_DIM`).

    Given the order, coordinate i is selected iff U lies in the arc :math:`I_i \bmod D` of the
    circle :math:`\mathbb Z / D` (length :math:`q_i`), so
    :math:`\Pr[i, j \in S \mid \sigma] = |(I_i \bmod D)\cap(I_j \bmod D)| / D`; the mean over
    all orders is :math:`\Pi`. ``diag(Pi) = q / den`` and, since :math:`|S| = r`,
    :math:`\sum_j \Pi_{ij} = r\,q_i/\mathrm{den}`. (The sampler's order is the stable argsort
    of dim 32-bit keys: uniform up to ties, of probability below :math:`\mathrm{dim}^2/2^{33}`.)
    """
    import itertools
    import math

    q = np.asarray(q, dtype=np.int64)
    dim = q.size
    if dim > MAX_JOINT_DIM:
        raise ValueError(f"rank: joint inclusion probabilities are enumerated for dim <= {MAX_JOINT_DIM}, got {dim}")
    perms = np.array(list(itertools.permutations(range(dim))), dtype=np.int64)  # (P, dim): order -> index
    ends = np.cumsum(q[perms], axis=1)
    starts = np.zeros((perms.shape[0], dim), dtype=np.int64)
    np.put_along_axis(starts, perms, (ends - q[perms]) % den, axis=1)  # arc start of each index
    a, b = starts[:, :, None], starts[:, None, :]
    la, lb = q[None, :, None], q[None, None, :]
    overlap = np.zeros((perms.shape[0], dim, dim), dtype=np.int64)
    for k in (-1, 0, 1):
        lo = np.maximum(a, b + k * den)
        hi = np.minimum(a + la, b + k * den + lb)
        overlap += np.clip(hi - lo, 0, None)
    return overlap.sum(0) / (den * math.factorial(dim))
