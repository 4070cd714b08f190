r"""Sketch distributions for the frozen LoRA factor.

A left sketch :math:`B_S \in \mathbb{R}^{m\times r}` (the sampled, frozen ``B``)
and a right sketch :math:`A_S \in \mathbb{R}^{r\times n}` (the sampled ``A``).
What matters to the method is the expected projection
:math:`\mathbb{E}[H_B]` (and :math:`\mathbb{E}[H_A]`), whose extreme eigenvalues give

.. math::

    \lambda_{\min}^p = p\,\lambda_{\min}(\mathbb{E} H_B) + (1-p)\,\lambda_{\min}(\mathbb{E} H_A),

and :math:`\lambda_{\max}^p` likewise.

Closed forms (``expected_projection`` returns the scalar ``c`` with
:math:`\mathbb{E} H = c I`):

* ``gaussian`` and ``orthonormal`` (Haar): the range of the sketch is a uniformly
  random r-dimensional subspace, so by rotation invariance
  :math:`\mathbb{E} H = c I` with :math:`c = \operatorname{tr}\mathbb{E}H / m = r/m`.
* ``column``: r distinct coordinate vectors chosen uniformly; :math:`H` is the
  diagonal 0/1 matrix of the chosen coordinates and each coordinate is chosen
  with probability r/m, so :math:`\mathbb{E}H = (r/m) I` exactly.
* ``rademacher``: sign-and-permutation symmetry gives :math:`\mathbb{E}H = cI`,
  but :math:`c = \mathbb{E}[\operatorname{rank} B_S]/m \le r/m`, with strict
  inequality because dependent sign patterns have positive probability. No
  closed form is used: :func:`monte_carlo_expected_projection` estimates it.

Randomness comes from :mod:`solvers.rng`, stream ``SKETCH``; sub-stream 0 is the
left sketch and 1 the right sketch, so the two never share numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from solvers import rng
from solvers.linalg import per_matrix
from solvers.projections import dense_projector_left

LEFT, RIGHT = 0, 1


@dataclass(frozen=True)
class Sketch:
    """A sketch distribution. Subclasses implement :meth:`_draw` for a tall
    (dim x r) matrix; the right sketch is the transpose of a tall draw."""

    name = "base"
    # rank r with probability one (r <= dim): the projections may then use a Cholesky
    # solve instead of a pseudo-inverse (see solvers.projections)
    full_rank_almost_surely = False
    # ``step`` may be a block of steps (a range): draws of shape (R, K, ...), element
    # [:, k] bitwise the draw of step steps[k] (solvers.rng); used by solvers.fused
    block_draws = False

    def _draw(self, seeds, step, dim, r, sub, device, dtype):  # pragma: no cover
        raise NotImplementedError

    def sample_left(self, seeds, step, m, r, *, device=None, dtype=torch.float64) -> torch.Tensor:
        """Left sketches :math:`B_S`, shape (R, m, r)."""
        return self._draw(seeds, step, m, r, LEFT, device, dtype)

    def sample_right(self, seeds, step, r, n, *, device=None, dtype=torch.float64) -> torch.Tensor:
        """Right sketches :math:`A_S`, shape (R, r, n)."""
        return self._draw(seeds, step, n, r, RIGHT, device, dtype).transpose(-1, -2)

    def expected_projection(self, dim: int, r: int):
        """``c`` with :math:`\\mathbb{E}H = cI` in closed form, or None if unknown."""
        return min(r, dim) / dim


@dataclass(frozen=True)
class GaussianSketch(Sketch):
    """Entries i.i.d. N(0, 1/dim)."""

    name = "gaussian"
    full_rank_almost_surely = True
    block_draws = True

    def _draw(self, seeds, step, dim, r, sub, device, dtype):
        return rng.normal(seeds, rng.Stream.SKETCH, step, (dim, r), sub=sub, device=device, dtype=dtype) / math.sqrt(dim)


@dataclass(frozen=True)
class OrthonormalSketch(Sketch):
    """Haar-distributed matrix with orthonormal columns: the Q factor of a
    Gaussian matrix with the signs of diag(R) made positive (Mezzadri 2007)."""

    name = "orthonormal"
    full_rank_almost_surely = True
    block_draws = True

    def _draw(self, seeds, step, dim, r, sub, device, dtype):
        g = rng.normal(seeds, rng.Stream.SKETCH, step, (dim, r), sub=sub, device=device, dtype=dtype)
        q, rr = per_matrix(torch.linalg.qr, g)
        sign = torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        return q * sign[..., None, :]


@dataclass(frozen=True)
class RademacherSketch(Sketch):
    """Entries i.i.d. +-1/sqrt(dim) with probability 1/2."""

    name = "rademacher"
    block_draws = True

    def _draw(self, seeds, step, dim, r, sub, device, dtype):
        return rng.signs(seeds, rng.Stream.SKETCH, step, (dim, r), sub=sub, device=device, dtype=dtype) / math.sqrt(dim)

    def expected_projection(self, dim, r):
        return None


@dataclass(frozen=True)
class ColumnSketch(Sketch):
    """r distinct columns of the identity, chosen uniformly without replacement."""

    name = "column"
    full_rank_almost_surely = True

    def _draw(self, seeds, step, dim, r, sub, device, dtype):
        idx = rng.subset(seeds, rng.Stream.SKETCH, step, dim, r, sub=sub, device=device)  # (R, r)
        out = torch.zeros(idx.shape[0], dim, r, device=idx.device, dtype=dtype)
        out.scatter_(1, idx[:, None, :], 1.0)
        return out


SKETCHES = {cls.name: cls for cls in (GaussianSketch, OrthonormalSketch, RademacherSketch, ColumnSketch)}


def make_sketch(name: str) -> Sketch:
    """Sketch distribution by name: gaussian, orthonormal, rademacher or column."""
    if isinstance(name, Sketch):
        return name
    if name not in SKETCHES:
        raise ValueError(f"sketch: unknown name {name!r}; choose one of {sorted(SKETCHES)}")
    return SKETCHES[name]()


@dataclass(frozen=True)
class MonteCarloProjection:
    """Monte Carlo estimate of :math:`\\mathbb{E}H` (dim x dim).

    ``lambda_min`` / ``lambda_max`` are the extreme eigenvalues of the sample mean;
    ``halfwidth`` is a confidence half-width for both, from Weyl's inequality
    :math:`|\\lambda_i(\\hat E) - \\lambda_i(E)| \\le \\|\\hat E - E\\|_2 \\le \\|\\hat E - E\\|_F`
    and a normal quantile on the entrywise standard errors.
    ``scalar`` / ``scalar_halfwidth``: the estimate of ``c = tr(E H)/dim`` and its CI.
    """

    mean: np.ndarray
    stderr: np.ndarray
    lambda_min: float
    lambda_max: float
    halfwidth: float
    scalar: float
    scalar_halfwidth: float
    samples: int


def monte_carlo_expected_projection(sketch, side: str, dim: int, r: int, *, samples: int = 4000,
                                    seed: int = 0, confidence: float = 0.99, chunk: int = 1000) -> MonteCarloProjection:
    """Estimate :math:`\\mathbb{E}H` for ``side`` 'left' (H_B, m = dim) or 'right'
    (H_A, n = dim) from ``samples`` independent draws (one seed per draw)."""
    from scipy.stats import norm

    sketch = make_sketch(sketch)
    if side not in ("left", "right"):
        raise ValueError(f"side: expected 'left' or 'right', got {side!r}")
    total = torch.zeros(dim, dim, dtype=torch.float64)
    total_sq = torch.zeros(dim, dim, dtype=torch.float64)
    traces = []
    for start in range(0, samples, chunk):
        seeds = torch.arange(seed + start, seed + min(samples, start + chunk), dtype=torch.int64)
        if side == "left":
            H = dense_projector_left(sketch.sample_left(seeds, 0, dim, r))
        else:
            A = sketch.sample_right(seeds, 0, r, dim)
            H = dense_projector_left(A.transpose(-1, -2))  # H_A = A^T (A A^T)^+ A
        total += H.sum(0)
        total_sq += (H * H).sum(0)
        traces.append(torch.diagonal(H, dim1=-2, dim2=-1).sum(-1))
    mean = total / samples
    var = (total_sq / samples - mean**2).clamp_min(0) * samples / max(samples - 1, 1)
    stderr = torch.sqrt(var / samples)
    z = float(norm.ppf(0.5 + confidence / 2))
    eig = torch.linalg.eigvalsh((mean + mean.T) / 2)
    tr = torch.cat(traces) / dim
    return MonteCarloProjection(
        mean=mean.numpy(), stderr=stderr.numpy(),
        lambda_min=float(eig[0]), lambda_max=float(eig[-1]),
        halfwidth=z * float(torch.linalg.norm(stderr)),
        scalar=float(tr.mean()), scalar_halfwidth=z * float(tr.std(unbiased=True)) / math.sqrt(samples),
        samples=samples)


def expected_projection_extremes(sketch, side: str, dim: int, r: int, *, samples: int = 4000, seed: int = 0):
    """(lambda_min, lambda_max) of E[H] for one side: closed form when the sketch
    has one, else Monte Carlo. For the isotropic symmetric sketches used here the
    Monte Carlo answer uses the trace estimate ``c`` for both, since E H = c I by
    symmetry (its estimate has far smaller variance than the eigenvalues)."""
    sketch = make_sketch(sketch)
    c = sketch.expected_projection(dim, r)
    if c is None:
        c = monte_carlo_expected_projection(sketch, side, dim, r, samples=samples, seed=seed).scalar
    return c, c


def lambda_p(sketch, p: float, m: int, n: int, r: int, *, samples: int = 4000, seed: int = 0):
    r""":math:`(\lambda_{\min}^p, \lambda_{\max}^p)` for the Bernoulli(p) mixture.

    .. math:: \lambda_{\min}^p = p\,\lambda_{\min}(\mathbb{E}H_B) + (1-p)\,\lambda_{\min}(\mathbb{E}H_A)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: must lie in [0, 1], got {p}")
    lmin_l, lmax_l = expected_projection_extremes(sketch, "left", m, r, samples=samples, seed=seed)
    lmin_r, lmax_r = expected_projection_extremes(sketch, "right", n, r, samples=samples, seed=seed)
    return p * lmin_l + (1 - p) * lmin_r, p * lmax_l + (1 - p) * lmax_r
