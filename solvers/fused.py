r"""The engine's iteration on blocks of pre-drawn random numbers, captured as CUDA graphs.

On a GPU a batched step is launch-bound: the gradient of 320 runs of the paper's
linreg problem is one 0.35 ms GEMM, but the step around it (coin, sketches, minibatch,
compressor, Gram solves, bookkeeping) is a hundred or more small kernels, each launched
from Python, and the counter-based draws alone are ~50 integer kernels each. This module
removes both costs for every weight-space method (Bernoulli-LoRA with any sketch, FPFT)
with any estimator that draws its random numbers beforehand (GD, SGD, PAGE, MVR, QGD,
MARINA, EF21, subgradient) and either stepsize rule (constant, Polyak):

* the random numbers of ``K`` steps (coins, sketches, minibatches, noise, compressor
  draws) are drawn at once by ``method.draw(seeds, range(t, t + K), W, oracle)`` into
  static buffers; :mod:`solvers.rng` is counter-based, so element ``[:, k]`` is bitwise
  the draw of step ``t + k`` alone, the numbers the engine's own loop draws;
* one iteration (:func:`solvers.iteration.advance` with ``method.step_given`` on the
  block's current slice, the position advancing inside the graph) is captured once as a
  CUDA graph and replayed; a second graph without the evaluation serves the steps between
  evaluation points when the running statistics are not tracked.

The iteration is the engine's own (:mod:`solvers.iteration`); ``step_given`` computes
every branch and selects per run (``sync_free``), which the engine's loop does on CUDA as
well: on CUDA the two paths differ only in the launch (tests/test_cuda.py compares them),
and on CPU the same body runs eagerly, bitwise the engine's loop (tests/test_fused.py,
tests/test_fused_estimators.py). Capture failure falls back to the eager body with a
warning.

``graph`` (the engine's argument; the ``graph`` key of a job's configuration):
``'auto'`` (captured graphs on CUDA; on a CPU :mod:`solvers.lean` where it applies, else the
engine's own loop), ``'off'`` (the loop), ``'eager'`` (this module without capture), ``'on'``
(captured on CUDA, eager elsewhere), ``'lean'`` (:mod:`solvers.lean` where it applies).
None of them changes a number (in fast mode, :mod:`solvers.lean` agrees to rounding).
"""
from __future__ import annotations

import warnings

import torch

from solvers import rng
from solvers.estimators import _Drawn
from solvers.iteration import Carry, RunningStats, advance
from solvers.methods import FPFT, BernoulliLoRA
from solvers.sketches import make_sketch

GRAPH_MODES = ("auto", "off", "eager", "on", "lean")
_DRAW_ELEMENTS = 1 << 26  # cap on R * K * (per-step draw work), e.g. the minibatch keys R x K x N


def check_graph(graph) -> str:
    if graph not in GRAPH_MODES:
        raise ValueError(f"graph: expected one of {', '.join(GRAPH_MODES)}, got {graph!r}")
    return graph


def mode(graph, device) -> str:
    """'off', 'eager' (fused body, no capture) or 'graph' for ``graph`` on ``device``."""
    check_graph(graph)
    if graph == "lean":  # solvers.lean's choice, never this module's
        return "off"
    if graph in ("off", "eager"):
        return graph
    if graph == "on":
        return "graph" if device.type == "cuda" else "eager"
    return "graph" if device.type == "cuda" else "off"


def eligible(method) -> bool:
    """A weight-space method (exactly Bernoulli-LoRA or FPFT; factor transmission, the
    factor-space methods and any subclass keep the engine's loop) whose estimator draws
    beforehand and computes its ``update`` from ``draw`` and ``update_given`` (an estimator
    that overrides ``update``, or has no ``update_given``, keeps the loop: the fused path
    would not run its ``update``)."""
    est = getattr(method, "estimator", None)
    return type(method) in (BernoulliLoRA, FPFT) and isinstance(est, _Drawn) and type(est).update is _Drawn.update


def capturable(method) -> bool:
    """False where a step synchronises with the host on CUDA, so that it cannot be captured:
    the pseudo-inverse's eigendecomposition of a sketch of rank > 1 that is not of full
    rank almost surely (Rademacher). Such a run takes the fused path eagerly."""
    if isinstance(method, BernoulliLoRA) and method.rank > 1:
        return make_sketch(method.sketch).full_rank_almost_surely
    return True


def block_size(W, oracle, method, block=None) -> int:
    """Steps per block: ``block``, fewer where one step's draws are large (R x N minibatch
    keys, R x clients x m n compressor draws), so a block's draws stay under ~0.5 GB."""
    R, m, n = W.shape
    per_run = max(int(getattr(oracle, "n_samples", 0) or 0),
                  int(getattr(oracle, "n_clients", 0) or 0) * m * n,
                  2 * (m + n) * int(getattr(method, "rank", 1)), 1)
    block = rng.BLOCK if block is None else int(block)
    return max(1, min(block, _DRAW_ELEMENTS // (R * per_run)))


def _leaves(tree):
    """The tensors of a tree of tuples / NamedTuples (None and ints skipped), in order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in _leaves(item)]
    return []


def _map(fn, tree):
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, tuple):
        items = [_map(fn, item) for item in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    return tree


class FusedRun:
    """The engine's iterations on block draws, with the carried tensors in static buffers.

    :meth:`step` advances one iteration (``evaluate`` as in
    :func:`solvers.iteration.advance`); :meth:`snapshot` returns the carry (copies).
    """

    def __init__(self, method, oracle, carry, *, f_star, limit, track, block=None, mode="eager"):
        self.method, self.oracle, self.mode = method, oracle, mode
        self.kw = dict(method=method, oracle=oracle, f_star=f_star, limit=limit, track=track)
        self.carry = _map(torch.clone, carry)  # static buffers, updated in place
        self.first_step = int(carry.state.step)
        self.seeds = carry.state.seeds
        self.block = block_size(carry.W, oracle, method, block)
        self.drawn, self.pos, self.done = None, self.block, 0
        self.kidx = torch.zeros(1, dtype=torch.int64, device=carry.W.device)
        self.graphs = {}

    # ------------------------------------------------------------------ draws
    def _refill(self):
        """The random numbers of the next ``block`` steps (steps past the end are drawn and
        never used: counter-based draws do not depend on what else is drawn)."""
        start = self.first_step + self.done
        fresh = self.method.draw(self.seeds, range(start, start + self.block), self.carry.W, self.oracle)
        fresh = _map(torch.Tensor.contiguous, fresh)
        if self.drawn is None:
            self.drawn = fresh
        else:  # the captured graphs read these buffers
            for buf, new in zip(_leaves(self.drawn), _leaves(fresh)):
                buf.copy_(new)
        self.kidx.zero_()
        self.pos = 0

    # ------------------------------------------------------------------ body
    def _body(self, evaluate):
        k = self.kidx
        drawn = _map(lambda t: t.index_select(1, k).squeeze(1), self.drawn)
        new = advance(self.carry, lambda W, state: self.method.step_given(W, state, self.oracle, drawn),
                      evaluate=evaluate, **self.kw)
        bufs, values = _leaves(self.carry), _leaves(new)
        if len(bufs) != len(values) or any(b.shape != v.shape or b.dtype != v.dtype for b, v in zip(bufs, values)):
            raise RuntimeError("solvers.fused: the method's step changed the structure of its state")
        for buf, value in zip(bufs, values):
            if buf is not value:
                buf.copy_(value)
        self.kidx.add_(1)

    def _carried(self):
        return _leaves(self.carry) + [self.kidx]

    def _capture(self, evaluate):
        """Warm up on a side stream (then restore every carried tensor), capture one body."""
        saved = [t.clone() for t in self._carried()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body(evaluate)
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self._carried(), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(evaluate)
        return graph

    def step(self, evaluate=True):
        if self.pos == self.block:
            self._refill()
        if self.mode == "graph" and evaluate not in self.graphs:
            try:
                self.graphs[evaluate] = self._capture(evaluate)
            except Exception as exc:  # pragma: no cover - depends on the CUDA toolchain
                warnings.warn(f"solvers.fused: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                              "running the fused step eagerly")
                self.mode = "eager"
        if self.mode == "graph":
            self.graphs[evaluate].replay()
        else:
            self._body(evaluate)
        self.pos += 1
        self.done += 1

    def snapshot(self) -> Carry:
        """The carry after the iterations so far (copies: the buffers keep changing)."""
        carry = _map(torch.clone, self.carry)
        return carry._replace(state=carry.state._replace(step=self.first_step + self.done))


def make_fused(method, oracle, carry, *, f_star, limit, track, graph="auto", block=None):
    """A :class:`FusedRun` for this run, or None where the engine's own loop applies."""
    m = mode(graph, carry.W.device)
    if m == "off" or not eligible(method):
        return None
    if m == "graph" and not capturable(method):
        m = "eager"
    return FusedRun(method, oracle, carry, f_star=f_star, limit=limit, track=track, block=block, mode=m)


__all__ = ["FusedRun", "GRAPH_MODES", "RunningStats", "block_size", "capturable", "check_graph", "eligible",
           "make_fused", "mode"]
