r"""Compressed distributed estimators: QGD, MARINA and EF21.

:math:`n_w` clients hold :math:`f_i`, :math:`f = \frac1{n_w}\sum_i f_i`; the oracle's
``client_grads(W)`` gives :math:`(\nabla f_i(W))_i` batched as (R, n_w, m, n), and
its ``grad`` is their mean. Each client compresses what it sends with its own
randomness (stream COMPRESSOR, one sub-stream per client, drawn inside the
compressor). ``state.bits`` adds up, per run, the bits every client sends in
every round (the server's broadcast is not counted).

* QGD: :math:`G_t = \frac1{n_w}\sum_i Q_i(\nabla f_i(W_t))`.
* MARINA (Gorbunov et al., 2021): with probability q (a server coin, stream
  ESTIMATOR) :math:`G_{t+1} = \nabla f(W_{t+1})` sent uncompressed, else
  :math:`G_{t+1} = G_t + \frac1{n_w}\sum_i Q_i(\nabla f_i(W_{t+1}) - \nabla f_i(W_t))`.
  :math:`G_0 = \nabla f(W_0)`.
* EF21 (Richtarik et al., 2021): :math:`G^i_{t+1} = G^i_t + C_i(\nabla f_i(W_{t+1}) - G^i_t)`,
  :math:`G_t = \frac1{n_w}\sum_i G^i_t`, :math:`G^i_0 = \nabla f_i(W_0)` (uncompressed).

With the identity compressor QGD and EF21 send exact gradients and MARINA with
q = 1 sends full gradients: all three are then Bernoulli-LoRA-GD, bitwise (EF21
takes :math:`G^i = \nabla f_i` directly, not :math:`G^i + (\nabla f_i - G^i)`, which
would differ by rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from solvers import rng
from solvers.estimators import EstimatorState


def _uncompressed_bits(X, float_bits=32):
    """Bits of sending every block of X (R, K, m, n) in full: K blocks of m*n floats."""
    R, K = X.shape[:2]
    return torch.full((R,), float(K * X.shape[-1] * X.shape[-2] * float_bits), dtype=torch.float64, device=X.device)


def _is_identity(comp):
    return getattr(comp, "name", "") == "identity"


def _clients(oracle):
    if not getattr(oracle, "n_clients", None):
        raise ValueError("estimator: distributed variants need a problem with clients (set problem.n_clients)")
    return oracle.client_grads


def _compress(comp, X, seeds, step):
    Y, bits = comp.compress(X, seeds, step)
    return Y, bits.reshape(bits.shape[0], -1).sum(-1).to(torch.float64)


@dataclass(frozen=True)
class QGD:
    """Quantized GD: each client sends :math:`Q_i(\\nabla f_i(W_t))`."""

    compressor: Any = None
    name = "qgd"
    exact_gradient = False

    def _estimate(self, W, oracle, seeds, step):
        grads = _clients(oracle)(W)
        if _is_identity(self.compressor):
            return oracle.grad(W), _uncompressed_bits(grads, getattr(self.compressor, "float_bits", 32))
        Y, bits = _compress(self.compressor, grads, seeds, step)
        return Y.mean(1), bits

    def init(self, W, oracle, seeds):
        G, bits = self._estimate(W, oracle, seeds, 0)
        ones = torch.ones(W.shape[0], dtype=torch.float64, device=W.device)
        return EstimatorState(G=G, epochs=ones, bits=bits)

    def update(self, W_new, W_old, state, oracle, seeds, step):
        G, bits = self._estimate(W_new, oracle, seeds, step)
        return state._replace(G=G, epochs=state.epochs + 1.0, bits=state.bits + bits)

    def initial_error(self, oracle):
        return 0.0


@dataclass(frozen=True)
class MARINA:
    """MARINA with probability ``q`` of a full (uncompressed) gradient round."""

    compressor: Any = None
    q: float = 0.1
    name = "marina"
    exact_gradient = False

    def __post_init__(self):
        if not 0.0 < self.q <= 1.0:
            raise ValueError(f"q: must lie in (0, 1], got {self.q}")

    def init(self, W, oracle, seeds):
        grads = _clients(oracle)(W)
        ones = torch.ones(W.shape[0], dtype=torch.float64, device=W.device)
        return EstimatorState(G=oracle.grad(W), epochs=ones,
                              bits=_uncompressed_bits(grads, getattr(self.compressor, "float_bits", 32)))

    def update(self, W_new, W_old, state, oracle, seeds, step):
        coin = rng.bernoulli(seeds, rng.Stream.ESTIMATOR, step, self.q, device=W_new.device)
        G, bits = state.G, torch.zeros_like(state.bits)
        new = _clients(oracle)(W_new)
        if bool(coin.any()):
            full_bits = _uncompressed_bits(new, getattr(self.compressor, "float_bits", 32))
            G = torch.where(coin[:, None, None], oracle.grad(W_new), G)
            bits = torch.where(coin, full_bits, bits)
        if not bool(coin.all()):
            diff = new - _clients(oracle)(W_old)
            Y, cbits = _compress(self.compressor, diff, seeds, step)
            G = torch.where(coin[:, None, None], G, state.G + Y.mean(1))
            bits = torch.where(coin, bits, cbits)
        cost = torch.where(coin, torch.ones_like(bits), torch.full_like(bits, 2.0))
        return state._replace(G=G, epochs=state.epochs + cost, bits=state.bits + bits)

    def initial_error(self, oracle):
        return 0.0


@dataclass(frozen=True)
class EF21:
    """EF21 with a contractive compressor; per-client states :math:`G^i` in ``state.extra``."""

    compressor: Any = None
    name = "ef21"
    exact_gradient = False

    def init(self, W, oracle, seeds):
        grads = _clients(oracle)(W)
        ones = torch.ones(W.shape[0], dtype=torch.float64, device=W.device)
        G = oracle.grad(W) if _is_identity(self.compressor) else grads.mean(1)
        return EstimatorState(G=G, epochs=ones, extra=grads,
                              bits=_uncompressed_bits(grads, getattr(self.compressor, "float_bits", 32)))

    def update(self, W_new, W_old, state, oracle, seeds, step):
        grads = _clients(oracle)(W_new)
        if _is_identity(self.compressor):
            return state._replace(G=oracle.grad(W_new), extra=grads, epochs=state.epochs + 1.0,
                                  bits=state.bits + _uncompressed_bits(grads, getattr(self.compressor, "float_bits", 32)))
        C, bits = _compress(self.compressor, grads - state.extra, seeds, step)
        Gi = state.extra + C
        return state._replace(G=Gi.mean(1), extra=Gi, epochs=state.epochs + 1.0, bits=state.bits + bits)

    def initial_error(self, oracle):
        return 0.0


DISTRIBUTED = {"qgd": QGD, "marina": MARINA, "ef21": EF21}


def make_distributed_estimator(name: str, *, compressor, **params):
    """Distributed estimator by name (qgd, marina, ef21) with a compressor."""
    if name not in DISTRIBUTED:
        raise ValueError(f"estimator: unknown distributed name {name!r}; choose one of {sorted(DISTRIBUTED)}")
    if name == "ef21" and getattr(compressor, "alpha", None) is None:
        raise ValueError(f"compressor: ef21 needs a contractive compressor (topk or identity), got {compressor.name}")
    if name in ("qgd", "marina") and getattr(compressor, "omega", None) is None:
        raise ValueError(f"compressor: {name} needs an unbiased compressor (randk, dither, natural, identity), "
                         f"got {compressor.name}")
    try:
        return DISTRIBUTED[name](compressor=compressor, **params)
    except TypeError as exc:
        raise ValueError(f"estimator {name}: {exc}") from None
