r"""Compressors for the distributed estimators (QGD, MARINA, EF21), batched.

A compressor maps every block of ``X`` (shape ``(R, *lead, m, n)``: R runs, then
leading axes such as the K clients) to a compressed block of the same shape. A
block is treated as a vector :math:`x \in \mathbb{R}^d`, :math:`d = mn`. The
interface is optax-like and stateless::

    Y, bits = comp.compress(X, seeds, step, sub=0)

``bits`` (float64, shape ``X.shape[:-2]``) is what each block sends. ``compress`` is
``apply(X, draw(seeds, step, B, d))``: :meth:`draw` takes the random numbers of B blocks
of size d (None for a deterministic compressor), for one step or, with ``step`` a range
of K steps, for all of them at once, ``(R, K, ...)`` with element ``[:, k]`` bitwise the
draw of step ``step[k]`` (:mod:`solvers.rng`); :meth:`apply` uses the draws of one step
and never synchronises with the host (the fused engine path captures it in a CUDA graph).

Classes of compressors (``omega`` / ``alpha`` attributes)
---------------------------------------------------------
* unbiased, :math:`\mathbb{E} Q(x) = x`, :math:`\mathbb{E}\|Q(x) - x\|^2 \le \omega \|x\|^2`:
  Identity (:math:`\omega = 0`), RandK (:math:`\omega = d/k - 1`, with equality),
  Dithering / QSGD (:math:`\omega = \min(d/s^2, \sqrt d / s)`, Alistarh et al. 2017,
  Lemma 3.1), Natural compression (:math:`\omega = 1/8`, Horvath et al. 2019).
* contractive, :math:`\|C(x) - x\|^2 \le (1 - \alpha)\|x\|^2`: Identity
  (:math:`\alpha = 1`), TopK (:math:`\alpha = k/d`, deterministic).

``omega`` is None for a biased compressor and ``alpha`` None for one that is not
contractive as it stands (an unbiased Q is, only after scaling by 1/(1+omega)).
For RandK, Dithering and TopK the constant depends on d: build the compressor
with ``d=`` (or call :meth:`bind`), else ``omega`` / ``alpha`` is NaN (unknown
but of the right class: QGD and MARINA test ``omega is None``); ``omega_at(d)``
and ``alpha_at(d)`` give it for any d.

Bit-count conventions (``float_bits`` = 32 by default, or 64, or 16)
--------------------------------------------------------------------
* Identity: :math:`32 d` (d floats).
* RandK, TopK: :math:`k (32 + \lceil \log_2 d \rceil)`: k values and k indices
  (index of a d-vector in :math:`\lceil \log_2 d\rceil` bits). RandK's indices
  are counted although a receiver sharing the seed could regenerate them: this
  is the convention of the compressed-communication literature when sender and
  receiver do not share randomness, and it makes RandK and TopK comparable.
* Dithering with s levels: :math:`32 + d (1 + \lceil \log_2(s+1) \rceil)`: the
  l2 norm as one float, then per coordinate a sign bit and the level in
  :math:`\{0, \dots, s\}` in fixed-length code (no Elias coding).
* Natural: :math:`d (1 + e)` with e the exponent width of the float format (8
  for 32-bit, 11 for 64-bit, 5 for 16-bit): a sign and an exponent, no mantissa;
  9 bits per coordinate by default.

Randomness
----------
Every draw is from :mod:`solvers.rng`, stream ``COMPRESSOR`` at ``(step, sub)``.
Per-block (per-client) independence is derived inside: the blocks, flattened
over the leading axes after R in C order (client j = block j for
``(R, K, m, n)``), read disjoint counter ranges of that stream (block j reads
elements ``[j c d, (j + 1) c d)``, c draws per coordinate). Counter-based draws at
distinct counters are independent, so each client's compressor is independent
of every other's, and a client's draws depend only on (seed, step, sub, its
index, d): not on the number of clients nor on the number of runs in the batch.
Pass a different ``sub`` for two compressions within one step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from solvers import rng
from solvers.linalg import row_sum
from solvers.registry import param, register

_EXPONENT_BITS = {16: 5, 32: 8, 64: 11}


def _index_bits(d: int) -> int:
    return math.ceil(math.log2(d)) if d > 1 else 0


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_float_bits(float_bits, natural=False):
    if natural:
        if float_bits not in _EXPONENT_BITS or isinstance(float_bits, bool):
            raise ValueError(f"compressor.float_bits: natural compression needs 16, 32 or 64, got {float_bits!r}")
    elif not (_is_int(float_bits) and float_bits >= 1):
        raise ValueError(f"compressor.float_bits: must be an integer >= 1, got {float_bits!r}")


def _check_d(d):
    if d is not None and not (_is_int(d) and d >= 1):
        raise ValueError(f"compressor.d: must be an integer >= 1 (block size m*n) or None, got {d!r}")


def _blocks(X: torch.Tensor):
    """View X (R, *lead, m, n) as (R, B, d) and return (view, B, d)."""
    if X.ndim < 3:
        raise ValueError(f"X: expected shape (R, ..., m, n) with at least 3 axes, got {tuple(X.shape)}")
    R = X.shape[0]
    d = X.shape[-1] * X.shape[-2]
    B = math.prod(X.shape[1:-2])
    return X.reshape(R, B, d), B, d


def _seeds(seeds, X):
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=X.device)
    if seeds.ndim != 1 or seeds.shape[0] != X.shape[0]:
        raise ValueError(f"seeds: expected shape ({X.shape[0]},) (one per run), got {tuple(seeds.shape)}")
    return seeds


def _bits(X: torch.Tensor, per_block: float) -> torch.Tensor:
    return torch.full(X.shape[:-2], float(per_block), dtype=torch.float64, device=X.device)


def _compress(comp, X, seeds, step, sub):
    """``comp.apply(X, comp.draw(...))`` for one step, after checking X and the seeds."""
    _, B, d = _blocks(X)
    seeds = _seeds(seeds, X)
    return comp.apply(X, comp.draw(seeds, step, B, d, sub=sub, device=X.device, dtype=X.dtype))


@dataclass(frozen=True)
class Identity:
    """No compression: Q(x) = x; omega = 0, alpha = 1, 32 d bits per block."""

    float_bits: int = 32
    d: Optional[int] = None
    name = "identity"
    unbiased = True

    def __post_init__(self):
        _check_float_bits(self.float_bits)
        _check_d(self.d)

    omega = 0.0
    alpha = 1.0

    def omega_at(self, d):
        return 0.0

    def alpha_at(self, d):
        return 1.0

    def bind(self, d):
        return replace(self, d=d)

    def bits_per_block(self, d):
        return self.float_bits * d

    def draw(self, seeds, step, B, d, *, sub=0, device=None, dtype=torch.float64):
        return None

    def apply(self, X, drawn):
        """Return X itself (no copy) and the bits of sending it in full."""
        _blocks(X)
        return X, _bits(X, self.bits_per_block(X.shape[-1] * X.shape[-2]))

    def compress(self, X, seeds, step, *, sub=0):
        return _compress(self, X, seeds, step, sub)


class _KCompressor:
    """Shared parts of RandK and TopK (k coordinates of the d per block)."""

    def __post_init__(self):
        if not (_is_int(self.k) and self.k >= 1):
            raise ValueError(f"compressor.k: must be an integer >= 1, got {self.k!r}")
        _check_float_bits(self.float_bits)
        _check_d(self.d)
        if self.d is not None:
            self._check_k(self.d)

    def _check_k(self, d):
        if self.k > d:
            raise ValueError(f"compressor.k: must satisfy 1 <= k <= d = {d} (block size m*n), got {self.k}")

    def bind(self, d):
        return replace(self, d=d)

    def bits_per_block(self, d):
        return self.k * (self.float_bits + _index_bits(d))

    def _keep(self, Xb, idx, scale):
        mask = torch.zeros_like(Xb, dtype=torch.bool).scatter_(-1, idx, True)
        return torch.where(mask, Xb * scale, torch.zeros((), dtype=Xb.dtype, device=Xb.device))


@dataclass(frozen=True)
class RandK(_KCompressor):
    r"""Random-k sparsification: k distinct coordinates uniformly without
    replacement, scaled by d/k. Unbiased with
    :math:`\mathbb{E}\|Q(x)-x\|^2 = (d/k - 1)\|x\|^2` exactly."""

    k: int = 1
    float_bits: int = 32
    d: Optional[int] = None
    name = "randk"
    unbiased = True
    alpha = None

    def omega_at(self, d):
        self._check_k(d)
        return d / self.k - 1.0

    def alpha_at(self, d):
        return None

    @property
    def omega(self):
        return self.omega_at(self.d) if self.d is not None else float("nan")

    def draw(self, seeds, step, B, d, *, sub=0, device=None, dtype=torch.float64):
        """The k kept coordinates of each block, (R, [K,] B, k) int64."""
        self._check_k(d)
        # a uniformly random permutation per block: sort 53-bit uniform keys
        # (ties have probability ~ d^2 / 2^53; the stable sort keeps them deterministic)
        keys = rng.uniform(seeds, rng.Stream.COMPRESSOR, step, (B, d), sub=sub, device=device)
        return torch.argsort(keys, dim=-1, stable=True)[..., : self.k]

    def apply(self, X, idx):
        Xb, B, d = _blocks(X)
        Y = self._keep(Xb, idx, d / self.k)
        return Y.reshape(X.shape), _bits(X, self.bits_per_block(d))

    def compress(self, X, seeds, step, *, sub=0):
        return _compress(self, X, seeds, step, sub)


@dataclass(frozen=True)
class RandKUnscaled(RandK):
    r"""Random-k sparsification without the d/k scaling: the same draws as :class:`RandK`,
    times k/d. Biased (:math:`\mathbb{E} C(x) = \frac kd x`) and contractive in
    expectation, :math:`\mathbb{E}\|C(x)-x\|^2 = (1 - k/d)\|x\|^2` (EF21's class,
    :math:`\alpha = k/d`), and linear given its draw (so :mod:`theory.exact` knows it)."""

    name = "randk_unscaled"
    unbiased = False
    omega = None
    scaled = False

    def omega_at(self, d):
        return None

    def alpha_at(self, d):
        self._check_k(d)
        return self.k / d

    @property
    def alpha(self):
        return self.alpha_at(self.d) if self.d is not None else float("nan")

    def apply(self, X, idx):
        Y, bits = super().apply(X, idx)
        return Y * (self.k / (X.shape[-1] * X.shape[-2])), bits


@dataclass(frozen=True)
class TopK(_KCompressor):
    r"""Top-k (largest magnitudes) sparsification, deterministic and biased:
    :math:`\|C(x)-x\|^2 \le (1 - k/d)\|x\|^2` for every x (the d - k dropped
    squares are the smallest, so at most their average share). Ties in
    magnitude go to the lower index."""

    k: int = 1
    float_bits: int = 32
    d: Optional[int] = None
    name = "topk"
    unbiased = False
    omega = None

    def omega_at(self, d):
        return None

    def alpha_at(self, d):
        self._check_k(d)
        return self.k / d

    @property
    def alpha(self):
        return self.alpha_at(self.d) if self.d is not None else float("nan")

    def draw(self, seeds, step, B, d, *, sub=0, device=None, dtype=torch.float64):
        self._check_k(d)
        return None

    def apply(self, X, drawn):
        Xb, B, d = _blocks(X)
        idx = torch.argsort(Xb.abs(), dim=-1, descending=True, stable=True)[..., : self.k]
        Y = self._keep(Xb, idx, 1.0)
        return Y.reshape(X.shape), _bits(X, self.bits_per_block(d))

    def compress(self, X, seeds, step, *, sub=0):
        return _compress(self, X, seeds, step, sub)


@dataclass(frozen=True)
class Dithering:
    r"""Random dithering / QSGD with s levels and the l2 norm (Alistarh et al., 2017):

    .. math:: Q(x)_i = \|x\|_2 \, \mathrm{sign}(x_i) \, \xi_i / s, \quad
              \xi_i = \lfloor s|x_i|/\|x\|_2 + u_i \rfloor,\ u_i \sim U(0, 1),

    i.e. :math:`s|x_i|/\|x\|` rounded stochastically to a neighbouring integer
    level in {0, ..., s}. Unbiased; per coordinate the variance is
    :math:`(\|x\|/s)^2 f_i(1-f_i)` (f_i the fractional part), whence
    :math:`\omega = \min(d/s^2, \sqrt d/s)`. Q(0) = 0."""

    s: int = 1
    float_bits: int = 32
    d: Optional[int] = None
    name = "dither"
    unbiased = True
    alpha = None

    def __post_init__(self):
        if not (_is_int(self.s) and self.s >= 1):
            raise ValueError(f"compressor.s: must be an integer >= 1 (number of levels), got {self.s!r}")
        _check_float_bits(self.float_bits)
        _check_d(self.d)

    def omega_at(self, d):
        return min(d / self.s ** 2, math.sqrt(d) / self.s)

    def alpha_at(self, d):
        return None

    @property
    def omega(self):
        return self.omega_at(self.d) if self.d is not None else float("nan")

    def bind(self, d):
        return replace(self, d=d)

    def bits_per_block(self, d):
        return self.float_bits + d * (1 + math.ceil(math.log2(self.s + 1)))

    def draw(self, seeds, step, B, d, *, sub=0, device=None, dtype=torch.float64):
        """The uniforms u of the stochastic rounding, (R, [K,] B, d) in ``dtype``."""
        return rng.uniform(seeds, rng.Stream.COMPRESSOR, step, (B, d), sub=sub, device=device, dtype=dtype)

    def compress(self, X, seeds, step, *, sub=0):
        return _compress(self, X, seeds, step, sub)

    def apply(self, X, u):
        Xb, B, d = _blocks(X)
        norm = torch.sqrt(row_sum(Xb * Xb))[..., None]
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        level = torch.floor(self.s * Xb.abs() / safe + u)
        Y = torch.where(norm > 0, safe * torch.sign(Xb) * level / self.s, torch.zeros_like(Xb))
        return Y.reshape(X.shape), _bits(X, self.bits_per_block(d))


@dataclass(frozen=True)
class Natural:
    r"""Natural compression (Horvath et al., 2019): each coordinate with
    :math:`2^a \le |x_i| < 2^{a+1}` becomes :math:`\mathrm{sign}(x_i) 2^a` with
    probability :math:`(2^{a+1} - |x_i|)/2^a`, else :math:`\mathrm{sign}(x_i) 2^{a+1}`.
    Unbiased; per coordinate :math:`\mathbb{E}(Q_i - x_i)^2 = (|x_i| - 2^a)(2^{a+1} - |x_i|)
    \le x_i^2/8`, with equality at :math:`|x_i| = \tfrac43 2^a`: :math:`\omega = 1/8`."""

    float_bits: int = 32
    d: Optional[int] = None
    name = "natural"
    unbiased = True
    omega = 0.125
    alpha = None

    def __post_init__(self):
        _check_float_bits(self.float_bits, natural=True)
        _check_d(self.d)

    def omega_at(self, d):
        return 0.125

    def alpha_at(self, d):
        return None

    def bind(self, d):
        return replace(self, d=d)

    def bits_per_block(self, d):
        return d * (1 + _EXPONENT_BITS[self.float_bits])

    def draw(self, seeds, step, B, d, *, sub=0, device=None, dtype=torch.float64):
        """The uniforms deciding each coordinate's rounding, (R, [K,] B, d) float64."""
        return rng.uniform(seeds, rng.Stream.COMPRESSOR, step, (B, d), sub=sub, device=device, dtype=torch.float64)

    def compress(self, X, seeds, step, *, sub=0):
        return _compress(self, X, seeds, step, sub)

    def apply(self, X, u):
        Xb, B, d = _blocks(X)
        mantissa, exponent = torch.frexp(Xb.abs())  # |x| = mantissa 2^exponent, mantissa in [1/2, 1)
        low = torch.ldexp(torch.ones_like(Xb), exponent - 1)  # 2^a
        p_up = (2.0 * mantissa - 1.0).to(torch.float64)  # (|x| - 2^a) / 2^a, exact
        Y = torch.sign(Xb) * low * torch.where(u < p_up, 2.0, 1.0).to(Xb.dtype)
        return Y.reshape(X.shape), _bits(X, self.bits_per_block(d))


# configuration schemas (the build passes d = m n, the block size of a gradient)


@dataclass
class IdentityConf:
    name: str = "identity"


@dataclass
class RandKConf:
    name: str = "randk"
    k: int = param(4, ge=1)


@dataclass
class RandKUnscaledConf:
    name: str = "randk_unscaled"
    k: int = param(4, ge=1)


@dataclass
class TopKConf:
    name: str = "topk"
    k: int = param(4, ge=1)


@dataclass
class DitherConf:
    name: str = "dither"
    s: int = param(4, ge=1)


@dataclass
class NaturalConf:
    name: str = "natural"


_BUILT_IN = ((Identity, IdentityConf), (RandK, RandKConf), (RandKUnscaled, RandKUnscaledConf), (TopK, TopKConf),
             (Dithering, DitherConf), (Natural, NaturalConf))
for _cls, _conf in _BUILT_IN:
    register("compressor", conf=_conf)(_cls)
#: name -> class, and name -> the parameters its configuration declares (all required here)
COMPRESSORS = {_conf().name: _cls for _cls, _conf in _BUILT_IN}
_PARAMS = {_conf().name: tuple(f.name for f in fields(_conf) if f.name != "name") for _, _conf in _BUILT_IN}


def make_compressor(name: str, **params):
    """Compressor by name: identity, randk (k), randk_unscaled (k), topk (k), dither (s), natural.

    Every compressor also takes ``float_bits`` (32) and ``d`` (None: the block
    size, needed only for the attributes omega / alpha of randk, topk, dither).
    ``k <= d`` is checked when d is known, at the latest at the first call.
    """
    if name not in COMPRESSORS:
        raise ValueError(f"compressor: unknown name {name!r}; choose one of {sorted(COMPRESSORS)}")
    allowed = set(_PARAMS[name]) | {"float_bits", "d"}
    for key in params:
        if key not in allowed:
            raise ValueError(f"compressor.{key}: not a parameter of {name} (it takes {sorted(allowed)})")
    for key in _PARAMS[name]:
        if key not in params:
            raise ValueError(f"compressor.{key}: required by {name}")
    return COMPRESSORS[name](**params)
