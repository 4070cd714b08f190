r"""Compressed distributed Bernoulli-LoRA: QGD, MARINA, EF21, and factor transmission.

:math:`n_w` clients hold :math:`f_i`, :math:`f = \frac1{n_w}\sum_i f_i`. The oracle gives
``n_clients`` and ``client_grads(W)`` :math:`= (\nabla f_i(W))_i`, batched as
(R, n_w, m, n). The server flips the Bernoulli(p) coin and draws the sketch
(:class:`solvers.methods.BernoulliLoRA`); the clients send compressed messages.

Weight-space estimators (``init``/``update`` as in :mod:`solvers.estimators`):

* QGD: :math:`G_t = \frac1{n_w}\sum_i Q_i(\nabla f_i(W_t))`.
* MARINA (Gorbunov et al., 2021): with probability q (a server coin, stream
  ESTIMATOR) :math:`G_{t+1} = \nabla f(W_{t+1})`, sent uncompressed, else
  :math:`G_{t+1} = G_t + \frac1{n_w}\sum_i Q_i(\nabla f_i(W_{t+1}) - \nabla f_i(W_t))`;
  :math:`G_0 = \nabla f(W_0)`. Each client keeps its last gradient (``state.extra``),
  so every round costs it one local gradient.
* EF21 (Richtarik et al., 2021): :math:`G^i_{t+1} = G^i_t + C_i(\nabla f_i(W_{t+1}) - G^i_t)`,
  :math:`G_t = \frac1{n_w}\sum_i G^i_t`, :math:`G^i_0 = \nabla f_i(W_0)` sent
  uncompressed; the :math:`G^i` are ``state.extra`` (R, n_w, m, n).

Factor transmission (:class:`FactorQGDBernoulliLoRA`, ``QGD(transmit='factor')``):
the server broadcasts the sketch first, then client i sends the compressed factor
gradient, :math:`Q_i(B_S^\top\nabla f_i)` (r x n) after a left coin or
:math:`Q_i(\nabla f_i A_S^\top)` (m x r) after a right one, and the server steps

.. math:: W \leftarrow W - \gamma B_S(B_S^\top B_S)^+\tfrac1{n_w}\textstyle\sum_i Q_i(B_S^\top\nabla f_i)
          \quad\text{or}\quad
          W \leftarrow W - \gamma\,\tfrac1{n_w}\textstyle\sum_i Q_i(\nabla f_i A_S^\top)(A_SA_S^\top)^+A_S .

With the identity compressor this is Bernoulli-LoRA-GD (up to rounding: the
client mean is taken after the product with the sketch). With an unbiased Q and
sketches with :math:`B_S^\top B_S = cI` (orthonormal, column) the proof of docs/theory.md#t5
goes through unchanged with :math:`\omega` of the compressor at the factor's
block size (:meth:`FactorQGDBernoulliLoRA.theory_omega`); for other sketches
:math:`\|B_S(B_S^\top B_S)^+e\|` is not bounded by :math:`\|e\|` and there is no theorem.

Randomness: each client compresses with its own counter range of stream
COMPRESSOR at the round's step (see :mod:`solvers.compressors`), so client j's
message depends only on (seed, step, j, its own vector).

Bits (``state.bits``, the results column ``bits``): per run, the sum over rounds
and clients of what the clients send; the server's broadcast (coin, sketch seed,
W or G) is not counted. Uncompressed messages cost ``float_bits`` (32) per
entry; compressed ones what the compressor reports. Per-client bits are
``bits / n_clients`` (every client sends the same amount). The weight-space
estimators send eagerly (round 0 at ``init``; the bits recorded at iteration T
include the round at :math:`W_T`), factor transmission lazily (rounds 0..T-1).

With the identity compressor QGD and EF21 send exact gradients and MARINA with
q = 1 sends full gradients: all three are then Bernoulli-LoRA-GD bitwise,
provided the oracle's ``grad`` equals ``client_grads(W).mean(1)`` bitwise (EF21
takes :math:`G^i = \nabla f_i` directly, not :math:`G^i + (\nabla f_i - G^i)`, and the
exact paths use ``oracle.grad``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from solvers import rng
from solvers.compressors import Identity
from solvers.estimators import EstimatorState, _Drawn
from solvers.linalg import bmm
from solvers.methods import (BernoulliLoRA, BernoulliLoRAConf, MethodState, _check_W0, _per_run, _seeds_tensor,
                             _values, bernoulli_lora_lambdas)
from solvers.projections import gram_pinv
from solvers.registry import param, register
from solvers.sketches import make_sketch

TRANSMIT = ("weights", "factor")
_ISOMETRIC_SKETCHES = ("orthonormal", "column")  # B^T B = I: factor-QGD keeps the QGD theorem


# --------------------------------------------------------------------------- helpers

def _float_bits(comp) -> int:
    return int(getattr(comp, "float_bits", 32))


def _is_identity(comp) -> bool:
    return getattr(comp, "name", "") == "identity"


def n_clients_of(oracle) -> int:
    """Number of clients of ``oracle``; fails with one line if it has none."""
    K = getattr(oracle, "n_clients", None)
    if not K or not hasattr(oracle, "client_grads"):
        raise ValueError("problem.n_clients: the distributed estimators (qgd, marina, ef21) need a problem with "
                         "clients, e.g. problem=logistic problem.n_clients=4")
    return int(K)


def _full_bits(W, K, comp):
    """Bits of every client sending one uncompressed (m, n) block, per run: (R,)."""
    m, n = W.shape[-2:]
    return torch.full((W.shape[0],), float(K * m * n * _float_bits(comp)), dtype=torch.float64, device=W.device)


def _compress(comp, X, seeds, step):
    """Compress every client's block of X (R, K, a, b): messages and bits per run (R,)."""
    Y, bits = comp.compress(X, seeds, step)
    return Y, bits.reshape(bits.shape[0], -1).sum(-1).to(torch.float64)


def _apply(comp, X, drawn):
    """:func:`_compress` with the compressor's draws of the round given."""
    Y, bits = comp.apply(X, drawn)
    return Y, bits.reshape(bits.shape[0], -1).sum(-1).to(torch.float64)


def _client_draws(comp, seeds, step, W, oracle):
    """The compressor's draws for the K client blocks of size m n (None if it draws none)."""
    m, n = W.shape[-2:]
    return comp.draw(seeds, step, n_clients_of(oracle), m * n, device=W.device, dtype=W.dtype)


def _defined_in(cls, name):
    """The class of ``cls``'s MRO whose body defines ``name``."""
    return next((k for k in cls.__mro__ if name in vars(k)), object)


def _check_compressor(owner, comp, need):
    if comp is None:
        comp = Identity()
    if not all(callable(getattr(comp, f, None)) for f in ("draw", "apply")):
        raise ValueError(f"compressor: {owner} needs a compressor object with draw and apply "
                         f"(solvers.compressors), got {comp!r}")
    if _defined_in(type(comp), "compress") is not _defined_in(type(comp), "apply") and \
            issubclass(_defined_in(type(comp), "compress"), _defined_in(type(comp), "apply")):
        raise ValueError(f"compressor: {type(comp).__name__} overrides compress but not apply; the estimators "
                         f"call draw and apply (compress is derived from them): override apply instead")
    name = getattr(comp, "name", type(comp).__name__)
    if need == "unbiased" and getattr(comp, "omega", None) is None:
        raise ValueError(f"compressor: {owner} needs an unbiased compressor (identity, randk, dither, natural), "
                         f"got {name} (biased; use it with ef21)")
    if need == "contractive" and getattr(comp, "alpha", None) is None:
        raise ValueError(f"compressor: {owner} needs a contractive compressor (identity, topk, randk_unscaled), "
                         f"got {name} (unbiased but not contractive; use it with qgd or marina)")
    return comp


def _start(W, G, bits, extra=None):
    ones = torch.ones(W.shape[0], dtype=torch.float64, device=W.device)
    return EstimatorState(G=G, epochs=ones, bits=bits, extra=extra)


# --------------------------------------------------------------------------- configuration schemas

@dataclass
class QGDConf:
    name: str = "qgd"
    # weights | factor (clients send compressed r x n / m x r factor gradients)
    transmit: str = param("weights", choices=TRANSMIT)


@dataclass
class MARINAConf:
    name: str = "marina"
    q: float = 0.1


@dataclass
class EF21Conf:
    name: str = "ef21"


class _Compressed:
    """What the distributed estimators report to their theorems: the compressor's
    omega / alpha, and G0 = grad f(W0) (sent uncompressed or exactly: no initial error)."""

    def initial_error(self, oracle):
        return 0.0

    def theory_constants(self, problem) -> dict:
        comp = self.compressor
        return {"omega": getattr(comp, "omega", None), "alpha": getattr(comp, "alpha", None),
                "G0_err": self.initial_error(problem)}


# --------------------------------------------------------------------------- estimators

@register("estimator", conf=QGDConf, needs=("clients",), uses=("compressor",), theorem="qgd", label="QGD",
          style={"linestyle": (0, (8, 2, 2, 2)), "marker": "v"})
@dataclass(frozen=True)
class QGD(_Compressed, _Drawn):
    """Quantized GD: each client sends :math:`Q_i(\\nabla f_i(W_t))` (``transmit='weights'``),
    or, with :class:`FactorQGDBernoulliLoRA`, its compressed factor gradient
    (``transmit='factor'``). ``compressor``: unbiased (default identity)."""

    compressor: Any = None
    transmit: str = "weights"
    name = "qgd"
    exact_gradient = False

    def __post_init__(self):
        object.__setattr__(self, "compressor", _check_compressor("qgd", self.compressor, "unbiased"))
        if self.transmit not in TRANSMIT:
            raise ValueError(f"estimator.transmit: expected 'weights' or 'factor', got {self.transmit!r}")

    def messages(self, W, oracle, seeds, step):
        """What the clients send at ``W`` in round ``step``: (R, K, m, n) and bits (R, K)."""
        n_clients_of(oracle)
        return self.compressor.compress(oracle.client_grads(W), seeds, step)

    def _round(self, W, oracle, drawn):
        K = n_clients_of(oracle)
        if _is_identity(self.compressor):
            return oracle.grad(W), _full_bits(W, K, self.compressor)
        Y, bits = _apply(self.compressor, oracle.client_grads(W), drawn)
        return Y.mean(1), bits

    def draw(self, seeds, step, W, oracle):
        """The compressor's draws for the clients' messages (None if it draws none)."""
        return _client_draws(self.compressor, seeds, step, W, oracle)

    def _weights_only(self):
        if self.transmit == "factor":
            raise ValueError("estimator.transmit: 'factor' needs the sketch before the clients send; "
                             "run it with solvers.distributed.FactorQGDBernoulliLoRA (method=bernoulli_lora)")

    def init(self, W, oracle, seeds):
        self._weights_only()
        return _start(W, *self._round(W, oracle, self.draw(seeds, 0, W, oracle)))

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        self._weights_only()
        G, bits = self._round(W_new, oracle, drawn)
        return state._replace(G=G, epochs=state.epochs + 1.0, bits=state.bits + bits)

    @property
    def method_required(self):
        """(the setting, the only method it runs with), or None: any method.
        Factor transmission projects on the sketch of Bernoulli-LoRA."""
        return ("transmit", "bernoulli_lora") if self.transmit == "factor" else None

    # ---- factor transmission (called by FactorQGDBernoulliLoRA)
    def factor_round_left(self, B, grads, seeds, step):
        r"""Left sketch B (R, m, r), client gradients (R, K, m, n): the step direction
        :math:`B(B^\top B)^+\frac1K\sum_i Q_i(B^\top\nabla f_i)` (R, m, n) and bits (R,)."""
        R, K, m, n = grads.shape
        r = B.shape[-1]
        Bt = B.transpose(-1, -2)[:, None].expand(R, K, r, m).reshape(R * K, r, m)
        X = bmm(Bt, grads.reshape(R * K, m, n)).reshape(R, K, r, n)
        Y, bits = _compress(self.compressor, X, seeds, step)
        return bmm(B, bmm(gram_pinv(B), Y.mean(1))), bits

    def factor_round_right(self, A, grads, seeds, step):
        r"""Right sketch A (R, r, n): :math:`\frac1K\sum_i Q_i(\nabla f_i A^\top)(AA^\top)^+A` and bits."""
        R, K, m, n = grads.shape
        r = A.shape[-2]
        At = A.transpose(-1, -2)
        X = bmm(grads.reshape(R * K, m, n), At[:, None].expand(R, K, n, r).reshape(R * K, n, r)).reshape(R, K, m, r)
        Y, bits = _compress(self.compressor, X, seeds, step)
        return bmm(bmm(Y.mean(1), gram_pinv(At)), A), bits


@register("estimator", conf=MARINAConf, needs=("clients",), uses=("compressor",), theorem="marina",
          label="MARINA", style={"linestyle": (0, (4, 1)), "marker": "D"})
@dataclass(frozen=True)
class MARINA(_Compressed, _Drawn):
    """MARINA with probability ``q`` of a full (uncompressed) gradient round;
    ``compressor``: unbiased (default identity)."""

    compressor: Any = None
    q: float = 0.1
    name = "marina"
    exact_gradient = False

    def __post_init__(self):
        object.__setattr__(self, "compressor", _check_compressor("marina", self.compressor, "unbiased"))
        if isinstance(self.q, bool) or not isinstance(self.q, (int, float)) or not 0.0 < self.q <= 1.0:
            raise ValueError(f"estimator.q: must lie in (0, 1], got {self.q!r}")

    def init(self, W, oracle, seeds):
        K = n_clients_of(oracle)
        return _start(W, oracle.grad(W), _full_bits(W, K, self.compressor), extra=oracle.client_grads(W))

    def draw(self, seeds, step, W, oracle):
        """The full-round coin (R, [K]) and the compressor's draws."""
        full = rng.bernoulli(seeds, rng.Stream.ESTIMATOR, step, float(self.q), device=W.device)
        return full, _client_draws(self.compressor, seeds, step, W, oracle)

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        K = n_clients_of(oracle)
        full, cdraws = drawn
        new = oracle.client_grads(W_new)
        G, bits = state.G, torch.zeros_like(state.bits)
        if sync_free or bool(full.any()):
            G = torch.where(full[:, None, None], oracle.grad(W_new), G)
            bits = torch.where(full, _full_bits(W_new, K, self.compressor), bits)
        if sync_free or not bool(full.all()):
            Y, cbits = _apply(self.compressor, new - state.extra, cdraws)
            G = torch.where(full[:, None, None], G, state.G + Y.mean(1))
            bits = torch.where(full, bits, cbits)
        return state._replace(G=G, epochs=state.epochs + 1.0, bits=state.bits + bits, extra=new)

    def theory_constants(self, problem) -> dict:
        return dict(super().theory_constants(problem), q=self.q)


@register("estimator", conf=EF21Conf, needs=("clients",), uses=("compressor",), theorem="ef21", label="EF21",
          style={"linestyle": (0, (2, 1, 6, 1)), "marker": "P"})
@dataclass(frozen=True)
class EF21(_Compressed, _Drawn):
    """EF21 with a contractive compressor (default identity); per-client states
    :math:`G^i` in ``state.extra``."""

    compressor: Any = None
    name = "ef21"
    exact_gradient = False

    def __post_init__(self):
        object.__setattr__(self, "compressor", _check_compressor("ef21", self.compressor, "contractive"))

    def init(self, W, oracle, seeds):
        K = n_clients_of(oracle)
        grads = oracle.client_grads(W)
        G = oracle.grad(W) if _is_identity(self.compressor) else grads.mean(1)
        return _start(W, G, _full_bits(W, K, self.compressor), extra=grads)

    def draw(self, seeds, step, W, oracle):
        """The compressor's draws (None for the deterministic identity and top-k)."""
        return _client_draws(self.compressor, seeds, step, W, oracle)

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        K = n_clients_of(oracle)
        grads = oracle.client_grads(W_new)
        if _is_identity(self.compressor):
            return state._replace(G=oracle.grad(W_new), extra=grads, epochs=state.epochs + 1.0,
                                  bits=state.bits + _full_bits(W_new, K, self.compressor))
        C, bits = _apply(self.compressor, grads - state.extra, drawn)
        Gi = state.extra + C
        return state._replace(G=Gi.mean(1), extra=Gi, epochs=state.epochs + 1.0, bits=state.bits + bits)


DISTRIBUTED = {"qgd": QGD, "marina": MARINA, "ef21": EF21}


def make_distributed_estimator(name: str, *, compressor=None, **params):
    """Distributed estimator by name: qgd (transmit), marina (q), ef21; checks that
    the compressor fits (unbiased for qgd/marina, contractive for ef21)."""
    if name not in DISTRIBUTED:
        raise ValueError(f"estimator: unknown distributed name {name!r}; choose one of {sorted(DISTRIBUTED)}")
    try:
        return DISTRIBUTED[name](compressor=compressor, **params)
    except TypeError as exc:
        raise ValueError(f"estimator {name}: {exc}") from None


# --------------------------------------------------------------------------- factor transmission

@dataclass(frozen=True)
class FactorQGDBernoulliLoRA(BernoulliLoRA):
    r"""Bernoulli-LoRA-QGD with factor transmission (module docstring): per step the
    server draws the coin and sketch (the same streams as :class:`BernoulliLoRA`),
    the clients send compressed r x n (left) or m x r (right) factor gradients at
    :math:`W_t`, and the server steps with the lifted mean. ``estimator`` must be
    ``QGD(transmit='factor')``; constant stepsize only. ``state.est``: ``G`` the
    last step direction, ``epochs`` and ``bits`` of the rounds so far."""

    def _validate(self, m, n):
        super()._validate(m, n)
        est = self.estimator
        if not (isinstance(est, QGD) and est.transmit == "factor"):
            raise ValueError("estimator: factor transmission needs QGD(transmit='factor'), "
                             f"got {getattr(est, 'name', est)!r}")
        if self.stepsize_rule != "constant":
            raise ValueError("stepsize.rule: factor transmission supports the constant rule only")
        k = getattr(est.compressor, "k", None)
        limit = min(self._block_sizes(m, n))
        if k is not None and k > limit:
            raise ValueError(f"compressor.k: factor transmission sends blocks of {limit} entries "
                             f"(rank x n or m x rank), need k <= {limit}, got {k}")

    def _block_sizes(self, m, n):
        ps = _values(self.p)
        return ([self.rank * n] if any(p > 0 for p in ps) else []) + ([m * self.rank] if any(p < 1 for p in ps) else [])

    def theory_constants(self, problem) -> dict:
        """The omega of the theorem with factor transmission (:meth:`theory_omega`)."""
        return {"omega": self.theory_omega(*problem.shape)}

    def theory_omega(self, m, n):
        """:math:`\\omega` for docs/theory.md#t5 with factor transmission: the compressor's
        omega at the largest factor block used, if the sketch is isometric
        (orthonormal, column) or the compressor is the identity; else NaN (no theorem)."""
        comp = self.estimator.compressor
        if _is_identity(comp):
            return 0.0
        name = self.sketch if isinstance(self.sketch, str) else getattr(self.sketch, "name", "")
        if name not in _ISOMETRIC_SKETCHES or not hasattr(comp, "omega_at"):
            return float("nan")
        return max(float(comp.omega_at(d)) for d in self._block_sizes(m, n))

    def init(self, W0, oracle, seeds):
        _check_W0(W0)
        R, m, n = W0.shape
        self._validate(m, n)
        n_clients_of(oracle)
        seeds = _seeds_tensor(seeds, W0.device)
        if seeds.shape[0] != R:
            raise ValueError(f"seeds: need one per run ({R}), got {seeds.shape[0]}")
        zeros = torch.zeros(R, dtype=torch.float64, device=W0.device)
        est = EstimatorState(G=torch.zeros_like(W0), epochs=zeros, bits=zeros.clone())
        ones = torch.ones(R, dtype=torch.bool, device=W0.device)
        return MethodState(step=0, seeds=seeds, est=est, active=ones, left=ones)

    def step(self, W, state, oracle):
        t, seeds, est = state.step, state.seeds, self.estimator
        sketch = make_sketch(self.sketch)
        R, m, n = W.shape
        left = rng.bernoulli(seeds, rng.Stream.COIN, t, _per_run(self.p, W), device=W.device)
        grads = oracle.client_grads(W)
        kw = dict(device=W.device, dtype=W.dtype)
        if bool(left.all()):
            D, bits = est.factor_round_left(sketch.sample_left(seeds, t, m, self.rank, **kw), grads, seeds, t)
        elif not bool(left.any()):
            D, bits = est.factor_round_right(sketch.sample_right(seeds, t, self.rank, n, **kw), grads, seeds, t)
        else:  # mixed batch: each run on its own side; a run's numbers do not depend on the split
            D = torch.empty_like(W)
            bits = torch.empty(R, dtype=torch.float64, device=W.device)
            sl, sr = seeds[left], seeds[~left]
            D[left], bits[left] = est.factor_round_left(sketch.sample_left(sl, t, m, self.rank, **kw),
                                                        grads[left], sl, t)
            D[~left], bits[~left] = est.factor_round_right(sketch.sample_right(sr, t, self.rank, n, **kw),
                                                           grads[~left], sr, t)
        W_new = W - self.gamma(W, D, state, oracle) * D
        W_new = torch.where(state.active[:, None, None], W_new, W)
        new_est = state.est._replace(G=D, epochs=state.est.epochs + 1.0, bits=state.est.bits + bits)
        return W_new, state._replace(step=t + 1, est=new_est, left=left)


@register("method", "bernoulli_lora", conf=BernoulliLoRAConf, uses=("sketch",), lambdas=bernoulli_lora_lambdas,
          label="Bernoulli-LoRA", color="tab:cyan")
def bernoulli_lora_method(*, estimator, **params):
    """The Bernoulli-LoRA method for ``estimator``: :class:`FactorQGDBernoulliLoRA`
    when it is ``QGD(transmit='factor')``, else :class:`BernoulliLoRA`."""
    cls = FactorQGDBernoulliLoRA if getattr(estimator, "transmit", "weights") == "factor" else BernoulliLoRA
    try:
        return cls(estimator=estimator, **params)
    except TypeError as exc:
        raise ValueError(f"method bernoulli_lora: {exc}") from None
