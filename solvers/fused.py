r"""A fused, CUDA-graph-captured engine step for Bernoulli-LoRA-GD and FPFT-GD.

On a GPU the step of a batched sweep is launch-bound: the gradient of 320 runs of the
paper's linreg problem is one 0.35 ms GEMM, but the step around it (coin, two sketches,
two Gram solves, bookkeeping) is ~150 small kernels, each launched from Python. This
module removes both costs for the common case, the constant-stepsize GD variants:

* the coins and sketches of ``block`` steps are drawn at once (:mod:`solvers.rng` draws a
  block of steps bitwise equal to the per-step draws), into static buffers;
* one iteration of :func:`solvers.engine.run` (running sums, projected step, masked
  update, loss and gradient, divergence masks) is captured once as a CUDA graph and
  replayed, the position in the block advancing inside the graph.

It computes exactly the engine's iteration: the same draws, the sync-free direction of
:meth:`solvers.methods.BernoulliLoRA.direction_sync_free` (Cholesky Gram solves with the
pivot check), the same masks; only the kernels' launch changes (tests/test_cuda.py
compares the two). Where capture is unavailable (CPU, ``BLORA_GRAPH=eager``, or a
capture error) the same fused body runs eagerly; ``BLORA_GRAPH=0`` turns the module off.
"""
from __future__ import annotations

import os
import warnings

import torch

from solvers import rng
from solvers.estimators import GD
from solvers.engine import RunningStats, diverging
from solvers.linalg import run_sum
from solvers.methods import FPFT, BernoulliLoRA, _per_run, projected_direction
from solvers.sketches import make_sketch

_BLOCK = 64


def _mode(device) -> str:
    """'off', 'eager' (fused body, no capture) or 'graph'."""
    flag = os.environ.get("BLORA_GRAPH", "auto")
    if flag in ("0", "off"):
        return "off"
    if flag == "eager":
        return "eager"
    if flag in ("1", "graph"):
        return "graph" if device.type == "cuda" else "eager"
    return "graph" if device.type == "cuda" else "off"


def eligible(method, oracle) -> bool:
    """Constant-stepsize GD on an oracle with ``loss_and_grad``; Bernoulli-LoRA with a
    sketch of full rank almost surely that can draw blocks (Gaussian, Haar), or FPFT."""
    if type(method) not in (BernoulliLoRA, FPFT) or not isinstance(method.estimator, GD):
        return False
    if method.stepsize_rule != "constant" or not hasattr(oracle, "loss_and_grad"):
        return False
    if isinstance(method, BernoulliLoRA):
        sketch = make_sketch(method.sketch)
        return sketch.full_rank_almost_surely and sketch.block_draws
    return True


class FusedGD:
    """The engine's iteration as one fused (and, on CUDA, graph-captured) body.

    Holds the carried tensors of :func:`solvers.engine.run` (iterate, gradient, loss,
    running sums and minima, masks) in static buffers; :meth:`step` advances one
    iteration, :meth:`snapshot` returns them for recording.
    """

    def __init__(self, method, oracle, W, state, *, f_star, limit, track, block=_BLOCK, mode="eager"):
        self.method, self.oracle, self.track, self.mode = method, oracle, track, mode
        self.seeds = state.seeds
        R, m, n = W.shape
        self.W, self.G, self.loss = W.clone(), state.est.G.clone(), state.est.loss.clone()
        self.active = state.active.clone()
        self.diverged = torch.zeros(R, dtype=torch.bool, device=W.device)
        self.stats = RunningStats.zeros(R, W.device)  # static buffers, updated in place
        self.epochs = state.est.epochs.clone()
        self.f_star = float(f_star)
        self.limit = limit
        self.gamma = method.gamma(W, None, state, oracle)  # (R, 1, 1), constant rule
        self.first_step = int(state.step)
        self.lora = isinstance(method, BernoulliLoRA)
        self.block, self.drawn, self.pos = int(block), 0, int(block)
        self.kidx = torch.zeros(1, dtype=torch.int64, device=W.device)
        if self.lora:
            r = method.rank
            self.sketch = make_sketch(method.sketch)
            self.p = _per_run(method.p, W)
            self.left_buf = torch.zeros(R, self.block, dtype=torch.bool, device=W.device)
            self.B_buf = torch.zeros(R, self.block, m, r, dtype=W.dtype, device=W.device)
            self.A_buf = torch.zeros(R, self.block, r, n, dtype=W.dtype, device=W.device)
        self.graph = None

    # ------------------------------------------------------------------ draws
    def _refill(self):
        """Coins and sketches of the next ``block`` steps (step indices of the method)."""
        if self.lora:
            steps = range(self.first_step + self.drawn, self.first_step + self.drawn + self.block)
            p = self.p if isinstance(self.p, float) else self.p[:, None]
            kw = dict(device=self.W.device, dtype=self.W.dtype)
            m, n = self.W.shape[-2:]
            self.left_buf.copy_(rng.uniform(self.seeds, rng.Stream.COIN, steps, ()) < p)
            self.B_buf.copy_(self.sketch.sample_left(self.seeds, steps, m, self.method.rank, **kw))
            self.A_buf.copy_(self.sketch.sample_right(self.seeds, steps, self.method.rank, n, **kw))
        self.kidx.zero_()
        self.drawn += self.block
        self.pos = 0

    # ------------------------------------------------------------------ body
    def _body(self):
        G, loss = self.G, self.loss
        live = self.active
        if self.track:
            g2 = run_sum(G.to(torch.float64) ** 2)
            gap = loss.to(torch.float64) - self.f_star
            for buf, value in zip(self.stats, self.stats.add(gap, g2, live)):
                buf.copy_(value)
        if self.lora:
            left = self.left_buf.index_select(1, self.kidx)[:, 0]
            B = self.B_buf.index_select(1, self.kidx)[:, 0]
            A = self.A_buf.index_select(1, self.kidx)[:, 0]
            D = projected_direction(G, left, B, A, full_rank=True)  # eligible: full rank a.s.
        else:
            D = G
        W_new = torch.where(self.active[:, None, None], self.W - self.gamma * D, self.W)
        loss_new, G_new = self.oracle.loss_and_grad(W_new)
        self.epochs.add_(live.to(torch.float64))  # one gradient per step, none once frozen
        self.diverged.logical_or_(diverging(loss_new, W_new, self.limit))
        self.active.logical_and_(~self.diverged)
        self.W.copy_(W_new)
        self.G.copy_(G_new)
        self.loss.copy_(loss_new)
        self.kidx.add_(1)

    def _carried(self):
        return [self.W, self.G, self.loss, self.active, self.diverged, *self.stats, self.epochs, self.kidx]

    def _capture(self):
        """Warm up on a side stream (then restore every carried tensor), capture one body."""
        saved = [t.clone() for t in self._carried()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body()
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self._carried(), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        return graph

    def step(self):
        if self.pos == self.block:
            self._refill()
        if self.mode == "graph" and self.graph is None:
            try:
                self.graph = self._capture()
            except Exception as exc:  # pragma: no cover - depends on the CUDA toolchain
                warnings.warn(f"solvers.fused: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                              "running the fused step eagerly")
                self.mode = "eager"
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        self.pos += 1

    def snapshot(self, t, state):
        """``(W, loss, grad, state, diverged, stats)`` after ``t`` iterations, ``stats`` a
        :class:`solvers.engine.RunningStats` (copies: the buffers keep changing)."""
        est = state.est._replace(G=self.G.clone(), loss=self.loss.clone(), epochs=self.epochs.clone())
        state = state._replace(step=self.first_step + t, est=est, active=self.active.clone())
        stats = RunningStats(*(buf.clone() for buf in self.stats))
        return self.W.clone(), est.loss, est.G, state, self.diverged.clone(), stats


def make_fused(method, oracle, W, state, *, f_star, limit, track, block=_BLOCK):
    """A :class:`FusedGD` for this run, or None where the engine's own loop applies."""
    mode = _mode(W.device)
    if mode == "off" or not eligible(method, oracle) or state.est.loss is None:
        return None
    return FusedGD(method, oracle, W, state, f_star=f_star, limit=limit, track=track, block=block, mode=mode)
