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
* ``weighted_column``: r distinct coordinates drawn with unequal inclusion
  probabilities :math:`\pi_i` (geometric weights, separate for the left and the
  right side), so :math:`\mathbb{E}H = \operatorname{diag}(\pi)` is *not* a
  multiple of the identity: :math:`\lambda_{\min}^p < \lambda_{\max}^p` and p matters
  even on a square W (see :class:`WeightedColumnSketch`).

Every sketch describes its own expectation: :meth:`Sketch.expected_projection_matrix`
returns the exact :math:`\mathbb{E}H` (dim x dim) of one side, or None where no
exact form is known; :func:`lambda_p` uses it.

Randomness comes from :mod:`solvers.rng`, stream ``SKETCH``; sub-stream 0 is the
left sketch and 1 the right sketch, so the two never share numbers.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from solvers import rng
from solvers.inclusion import DEN as _DEN
from solvers.inclusion import (capped_inclusion_probabilities, joint_inclusion_probabilities,
                               quantized_inclusion_probabilities, systematic_sample)
from solvers.linalg import per_matrix
from solvers.projections import dense_projector_left
from solvers.registry import param, register

LEFT, RIGHT = 0, 1


def _check_side(side):
    if side not in ("left", "right"):
        raise ValueError(f"side: expected 'left' or 'right', got {side!r}")


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
    # E[H] = c I (for both sides), by a symmetry of the distribution
    isotropic = True

    def _draw(self, seeds, step, dim, r, sub, device, dtype):  # pragma: no cover
        raise NotImplementedError

    def sample_left(self, seeds, step, m, r, *, device=None, dtype=torch.float64) -> torch.Tensor:
        """Left sketches :math:`B_S`, shape (R, m, r)."""
        return self._draw(seeds, step, m, r, LEFT, device, dtype)

    def sample_right(self, seeds, step, r, n, *, device=None, dtype=torch.float64) -> torch.Tensor:
        """Right sketches :math:`A_S`, shape (R, r, n)."""
        return self._draw(seeds, step, n, r, RIGHT, device, dtype).transpose(-1, -2)

    def expected_projection(self, dim: int, r: int):
        """``c`` with :math:`\\mathbb{E}H = cI` (both sides) in closed form, or None if
        unknown or if :math:`\\mathbb{E}H` is not a multiple of the identity."""
        return min(r, dim) / dim

    def expected_projection_matrix(self, dim: int, r: int, *, side: str = "left"):
        """The exact :math:`\\mathbb{E}H` of one side, a (dim, dim) float64 array
        (``side`` 'left': :math:`H_B`, m = dim; 'right': :math:`H_A`, n = dim), or
        None when no exact form is known."""
        _check_side(side)
        c = self.expected_projection(dim, r)
        return None if c is None else c * np.eye(dim)


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


@functools.lru_cache(maxsize=64)
def _geometric_q(decay: float, dim: int, r: int) -> np.ndarray:
    q = quantized_inclusion_probabilities(capped_inclusion_probabilities(decay ** np.arange(dim), r), r)
    q.setflags(write=False)
    return q


@dataclass(frozen=True)
class WeightedColumnSketch(Sketch):
    r"""r distinct coordinate vectors with unequal, exactly known inclusion probabilities.

    The left sketch :math:`B_S = [e_{i_1},\dots,e_{i_r}] \in \mathbb{R}^{m\times r}`
    (the right one :math:`A_S = [e_{j_1},\dots,e_{j_r}]^\top`) selects r distinct
    coordinates, so :math:`B_S^\top B_S = I_r` and

    .. math:: H_B = B_S B_S^\top = \operatorname{diag}(\mathbf 1[i \in S]),\qquad
              \mathbb{E} H_B = \operatorname{diag}(\pi),\quad \pi_i = \Pr[i \in S].

    **Target probabilities.** Coordinate i of a side of dimension d has weight
    :math:`w_i = \rho^{\,i}` (:math:`\rho` = ``left_decay`` for the m rows,
    ``right_decay`` for the n columns, :math:`0 < \rho \le 1`), and
    :math:`\pi_i = \min(1, c\,w_i)` with :math:`\sum_i \pi_i = r`
    (:func:`capped_inclusion_probabilities`). Then each :math:`\pi_i` is rounded to a
    multiple of :math:`D^{-1}`, :math:`D = 2^{32}`, keeping :math:`\sum_i\pi_i = r`
    and :math:`\pi_i \le 1` (:func:`quantized_inclusion_probabilities`, error
    :math:`< 2^{-32}`); these rounded values are the exact inclusion probabilities of
    the sampler below and the ones :meth:`expected_projection_matrix` returns.
    :math:`\rho = 1` gives :math:`\pi_i = r/d` (up to that rounding), the uniform
    ``column`` sketch's expectation.

    **Sampler (systematic sampling in random order, Hartley and Rao 1962).** With
    integer :math:`q_i = D\pi_i \le D`, :math:`\sum_i q_i = rD`: draw a
    permutation :math:`\sigma` of the coordinates and an integer :math:`U` uniform on
    :math:`\{0,\dots,D-1\}`; lay the coordinates on :math:`[0, rD)` in the order
    :math:`\sigma` as consecutive half-open integer intervals :math:`I_i` of length
    :math:`q_i`, and select the coordinates whose interval contains one of the r
    points :math:`U, U + D, \dots, U + (r-1)D`.

    *Exactly r distinct coordinates:* every point lies in exactly one interval and an
    interval of length :math:`q_i \le D` contains at most one of the points spaced D
    apart.

    *Inclusion probability, derivation:* fix :math:`\sigma`. The points are
    :math:`\{x \in [0, rD) : x \equiv U \pmod D\}`, so coordinate i is selected iff
    :math:`U` lies in the residues :math:`I_i \bmod D`; since
    :math:`|I_i| = q_i \le D` these are :math:`q_i` distinct residues, hence
    :math:`\Pr[i\in S \mid \sigma] = q_i / D = \pi_i` for every :math:`\sigma`, and
    :math:`\Pr[i \in S] = \pi_i`. The argument uses only that U is uniform, not
    the distribution of :math:`\sigma` (which only mixes the joint inclusions), so the
    expectation is exact, not up to the hash's quality: U is one uniform 32-bit word.

    Hence :math:`\mathbb{E} H_B = \operatorname{diag}(\pi^{(m)})`,
    :math:`\mathbb{E} H_A = \operatorname{diag}(\pi^{(n)})`, and
    :math:`\lambda_{\min}^p = p\min_i\pi^{(m)}_i + (1-p)\min_j\pi^{(n)}_j`,
    :math:`\lambda_{\max}^p = p\max_i\pi^{(m)}_i + (1-p)\max_j\pi^{(n)}_j`
    (the largest weight is the first coordinate, the smallest the last).
    Second moments (for exact expectations of whole runs): the only non-zero entries of
    :math:`\mathbb{E}[H\otimes H]` are :math:`\mathbb{E}[H_{ii}H_{jj}] = \Pr[i, j \in S]`,
    returned by :meth:`joint_inclusion_matrix` (enumeration of the orders, dim <= 8).

    Randomness: one draw of ``dim + 1`` words of the SKETCH stream per run and step
    (sub-stream 0 left, 1 right): ``dim`` keys whose stable argsort is
    :math:`\sigma`, and U. Blocks of steps are drawn at once (``block_draws``).

    Parameters (keyword-only)
    -------------------------
    left_decay, right_decay : float in (0, 1]
        Geometric weight ratio :math:`\rho` of the left (m rows) and right (n columns)
        sketch; 1 is uniform.
    """

    left_decay: float = 1.0
    right_decay: float = 1.0
    name = "weighted_column"
    isotropic = False  # the exact E[H] below is used, never a Monte Carlo c
    full_rank_almost_surely = True  # r distinct unit vectors: rank r surely
    block_draws = True

    def __post_init__(self):
        for key in ("left_decay", "right_decay"):
            v = getattr(self, key)
            if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v <= 1):
                raise ValueError(f"sketch.{key}: must be a number in (0, 1], got {v!r}")

    def inclusion_numerators(self, dim: int, r: int, *, side: str = "left") -> np.ndarray:
        """The integers :math:`q_i = 2^{32}\\pi_i` of one side (read-only int64 array)."""
        _check_side(side)
        if not 1 <= r <= dim:
            raise ValueError(f"rank: must lie in [1, dim = {dim}], got {r}")
        key = f"{side}_decay"
        try:
            return _geometric_q(float(getattr(self, key)), int(dim), int(r))
        except ValueError as err:  # weights underflowed to 0: fewer than r usable coordinates
            raise ValueError(f"sketch.{key}: {getattr(self, key)} leaves fewer than r = {r} coordinates "
                             f"of {dim} a weight > 0 ({err})") from None

    def expected_projection(self, dim, r):
        # not c I in general; even with both decays 1 the rounding to multiples of 2^-32
        # leaves pi_i = r/d only up to 2^-32 (exactly when 2^32 r/d is an integer)
        return None

    def expected_projection_matrix(self, dim, r, *, side="left"):
        return np.diag(self.inclusion_numerators(dim, r, side=side) / _DEN)

    def joint_inclusion_matrix(self, dim, r, *, side="left"):
        """:math:`\\Pi_{ij} = \\Pr[i, j \\in S]`, i.e. :math:`\\mathbb{E}[H_{ii}H_{jj}]` (the only
        non-zero second moments of the diagonal H), by enumeration of the orders
        (dim <= 8; :func:`solvers.inclusion.joint_inclusion_probabilities`)."""
        return joint_inclusion_probabilities(self.inclusion_numerators(dim, r, side=side), r)

    def _draw(self, seeds, step, dim, r, sub, device, dtype):
        # even sub-streams are left sketches (LEFT = 0 here; the real-model switcher
        # draws layer l's left / right sketch from sub-streams 2l / 2l + 1)
        q = torch.tensor(self.inclusion_numerators(dim, r, side="left" if sub % 2 == LEFT else "right"),
                            device=device)
        words = rng.random_bits(seeds, rng.Stream.SKETCH, step, (dim + 1,), sub=sub, device=device)
        idx = systematic_sample(q, words[..., :dim], words[..., dim:], r)  # keys of sigma, U
        out = torch.zeros(*idx.shape[:-1], dim, r, device=idx.device, dtype=dtype)
        out.scatter_(-2, idx[..., None, :], 1.0)
        return out


SKETCHES = {cls.name: cls for cls in (GaussianSketch, OrthonormalSketch, RademacherSketch, ColumnSketch,
                                       WeightedColumnSketch)}


@dataclass
class SketchConf:
    """The configuration of a sketch without parameters (its name only)."""

    name: str = "gaussian"


@dataclass
class WeightedColumnConf:
    # r distinct coordinates with inclusion probabilities ~ decay**i, capped at 1
    # (WeightedColumnSketch): E[H_B], E[H_A] are not multiples of I
    name: str = "weighted_column"
    left_decay: float = param(1.0, gt=0, le=1)  # rows of W (the m side, H_B)
    right_decay: float = param(1.0, gt=0, le=1)  # columns of W (the n side, H_A)


for _cls in SKETCHES.values():
    register("sketch", conf=WeightedColumnConf if _cls is WeightedColumnSketch else SketchConf)(_cls)


def make_sketch(name, **params) -> Sketch:
    """Sketch distribution by name (gaussian, orthonormal, rademacher, column,
    weighted_column) and its parameters (the sketch config group's keys), or a
    Sketch returned as is."""
    if isinstance(name, Sketch):
        if params:
            raise ValueError(f"sketch: parameters {sorted(params)} given with a Sketch object")
        return name
    if name not in SKETCHES:
        raise ValueError(f"sketch: unknown name {name!r}; choose one of {sorted(SKETCHES)}")
    keys = [f.name for f in dataclasses.fields(SKETCHES[name])]
    for key in params:
        if key not in keys:
            raise ValueError(f"sketch.{key}: unknown key: {name} takes {keys}")
    return SKETCHES[name](**params)


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
    _check_side(side)
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
    """(lambda_min, lambda_max) of E[H] for one side: the eigenvalues of the sketch's
    exact :meth:`Sketch.expected_projection_matrix` when it has one, else Monte Carlo.
    The Monte Carlo answer is allowed only for sketches that declare ``isotropic``
    (E H = c I by symmetry) and uses the trace estimate ``c`` for both (its estimate
    has far smaller variance than the eigenvalues)."""
    sketch = make_sketch(sketch)
    E = sketch.expected_projection_matrix(dim, r, side=side)
    if E is not None:
        eig = np.linalg.eigvalsh(E)
        return float(eig[0]), float(eig[-1])
    if not sketch.isotropic:
        raise ValueError(f"sketch: {sketch.name} has neither an exact E[H] nor E[H] = cI")
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
