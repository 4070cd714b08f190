r"""The engine's iteration for small problems on a CPU: the same numbers, a fraction of the ops.

On a CPU a small problem's step is bound by per-operation overhead, not arithmetic: at
d = 256 the engine's general loop (:func:`solvers.iteration.advance` around
``method.step``) dispatches about 140 tensor operations a step, each a fixed dispatch
cost, for a few thousand flops (``torch_ops_per_step`` in
``paper_results/cpu/bench_small_cpu.json``, from ``benchmarks/bench_small.py``). This module runs the same iteration for the configurations
that dominate small-problem sweeps, the weight-space methods (Bernoulli-LoRA with any
sketch, FPFT) with the full gradient (:class:`GD`) and a constant stepsize, with about half
the tensor operations per step and, for one or two runs, draws of 256 steps at once:

* the coins and sketches of ``K`` steps come from one block draw (as in
  :mod:`solvers.fused`), and the pseudo-inverses of the Gram matrices of the sketches a
  run will use, :math:`(B_S^\top B_S)^+` or :math:`(A_S A_S^\top)^+`, are computed for the
  whole block at once; per step only the three products of
  :func:`solvers.projections.project_left_pinv` / ``project_right_pinv`` remain;
* the coins are read on the host once per block, so a step projects every run on one
  side when all runs took it (always, for one run), else each run on its own side;
* the running statistics and costs are updated in place, and the masks of
  frozen runs are applied only while some run is frozen (the same values: ``where``
  with an all-true mask is the identity).

Every per-run computation goes through the batch-invariant primitives of
:mod:`solvers.linalg`, so in invariant mode (the CPU default) a run's numbers are
bitwise those of the general loop, alone or in any batch (``tests/test_lean.py``
compares every recorded field). In fast mode (``set_invariant(False)``, not
batch-invariant by design) the block's pseudo-inverses are one batched call over
``R x K`` matrices, so the numbers match the loop's to rounding, not bitwise.

Selected by the engine's ``graph`` argument: ``'auto'`` uses it on a CPU where
:func:`eligible`, ``'off'`` keeps the general loop (the reference), ``'lean'`` asks for
it (the general loop where not eligible).
"""
from __future__ import annotations

import torch

from solvers import rng
from solvers.estimators import GD, EstimatorState, _value_and_grad
from solvers.iteration import Carry, RunningStats, as_f64, diverging
from solvers.linalg import run_sum
from solvers.methods import FPFT, BernoulliLoRA, MethodState
from solvers.projections import gram_pinv, project_left_pinv, project_right_pinv


def eligible(method, oracle, device) -> bool:
    """Bernoulli-LoRA or FPFT (exactly; subclasses keep the loop) with :class:`GD` and a
    constant stepsize, on a CPU."""
    return (device.type == "cpu" and type(method) in (BernoulliLoRA, FPFT)
            and type(getattr(method, "estimator", None)) is GD and method.stepsize_rule == "constant")


def _block_pinvs(S, use):
    """``gram_pinv`` of the sketches ``S`` (R, K, d, r) where ``use`` (R, K) is true, zeros
    elsewhere (R, K, r, r): one call over the used ones (per-matrix values, so bitwise
    the per-step call in invariant mode)."""
    R, K, _, r = S.shape
    out = torch.zeros(R, K, r, r, dtype=S.dtype, device=S.device)
    if bool(use.any()):
        out[use] = gram_pinv(S[use])
    return out


class LeanRun:
    """The general loop's iterations (:func:`solvers.iteration.advance` with ``method.step``)
    for an :func:`eligible` configuration; :meth:`step` and :meth:`snapshot` as
    :class:`solvers.fused.FusedRun`."""

    def __init__(self, method, oracle, carry, *, f_star, limit, track, steps):
        self.method, self.oracle, self.track = method, oracle, track
        self.f_star, self.limit = f_star, limit
        W, state = carry.W, carry.state
        self.seeds, self.first_step, self.steps = state.seeds, int(state.step), int(steps)
        self.W = W.clone()
        self.G, self.est_loss = state.est.G.clone(), state.est.loss
        self.epochs, self.bits = state.est.epochs.clone(), state.est.bits.clone()
        self.loss, self.grad = carry.loss.clone(), carry.grad.clone()
        self.stats = RunningStats(*(t.clone() for t in carry.stats))
        self.diverged, self.active = carry.diverged.clone(), state.active.clone()
        self.left = state.left.clone()
        self.frozen = bool(self.diverged.any()) or not bool(self.active.all())
        self.gamma = method.gamma(W, None, state, oracle)  # constant rule: (R, 1, 1)
        self.sided = isinstance(method, BernoulliLoRA)
        self.done, self.pos, self.block = 0, 0, 0
        # steps drawn at once, a cost knob only (the draws are counter-based): one or two
        # runs amortise the draws' fixed cost over 4 x rng.BLOCK steps, batches over rng.BLOCK
        self.block_steps = rng.BLOCK * (4 if W.shape[0] <= 2 else 1)

    def _refill(self):
        start = self.first_step + self.done
        self.block = K = min(self.block_steps, self.steps - self.done)
        self.pos = 0
        if not self.sided:
            return
        method, seeds, W = self.method, self.seeds, self.W
        left = method.coins(seeds, range(start, start + K), W)
        self.sides = [(all(c), any(c)) for c in left.T.tolist()]  # per step: every run left, any
        # per step (left coins, B, (B^T B)^+, A, (A A^T)^+) as views; a side no run takes at a
        # step is not drawn (counter-based: the drawn steps' numbers do not change)
        per_step = [[c, None, None, None, None] for c in left.unbind(1)]
        for side, slot, need in (("left", 1, lambda e, s: s), ("right", 3, lambda e, s: not e)):
            ks = [k for k, (every, some) in enumerate(self.sides) if need(every, some)]
            if not ks:
                continue
            S = method.sketches(seeds, [start + k for k in ks], W, side)
            use = left[:, ks] if side == "left" else ~left[:, ks]
            P = _block_pinvs(S if side == "left" else S.transpose(-1, -2), use)
            for k, s, p in zip(ks, S.unbind(1), P.unbind(1)):
                per_step[k][slot], per_step[k][slot + 1] = s, p
        self.drawn = per_step

    def _direction(self):
        if not self.sided:
            return self.G
        every, some = self.sides[self.pos]
        self.left, B, PL, A, PR = self.drawn[self.pos]
        if every:
            return project_left_pinv(B, PL, self.G)
        if not some:
            return project_right_pinv(A, PR, self.G)
        # a mixed batch: each run projected on its own side only (per-run values: the same bits)
        left, right, G = self.left, ~self.left, self.G
        D = torch.empty_like(G)
        D[left] = project_left_pinv(B[left], PL[left], G[left])
        D[right] = project_right_pinv(A[right], PR[right], G[right])
        return D

    def step(self, evaluate=True):
        if self.pos == self.block:
            self._refill()
        if self.track:
            gap, g2 = as_f64(self.loss) - self.f_star, run_sum(as_f64(self.grad) ** 2)
            self.stats = self.stats.add(gap, g2, ~self.diverged) if self.frozen else self.stats.add_live_(gap, g2)
        W_new = self.W - self.gamma * self._direction()
        if self.frozen:
            W_new = torch.where(self.active[:, None, None], W_new, self.W)
            self.epochs = torch.where(self.active, self.epochs + 1.0, self.epochs)
        else:
            self.epochs.add_(1.0)
        self.W = W_new
        self.est_loss, self.G = _value_and_grad(self.oracle, W_new)  # GD.update_given
        if evaluate:
            self.loss = self.est_loss if self.est_loss is not None else self.oracle.loss(W_new)
            self.grad = self.G
            bad = diverging(self.loss, W_new, self.limit)
            if bool(bad.any()):
                self.diverged = self.diverged | bad
                self.active = self.active & ~self.diverged
                self.frozen = True
        self.pos += 1
        self.done += 1

    def snapshot(self) -> Carry:
        """The carry after the iterations so far, as the general loop holds it (copies)."""
        c = torch.clone
        est = EstimatorState(G=c(self.G), epochs=c(self.epochs), bits=c(self.bits),
                             loss=None if self.est_loss is None else c(self.est_loss))
        state = MethodState(step=self.first_step + self.done, seeds=self.seeds, est=est,
                            active=c(self.active), left=c(self.left))
        stats = RunningStats(*(c(t) for t in self.stats))
        return Carry(c(self.W), state, c(self.loss), c(self.grad), stats, c(self.diverged))


def make_lean(method, oracle, carry, *, f_star, limit, track, steps, graph="auto"):
    """A :class:`LeanRun` for this run, or None where the general loop applies."""
    if graph not in ("auto", "lean") or not eligible(method, oracle, carry.W.device):
        return None
    return LeanRun(method, oracle, carry, f_star=f_star, limit=limit, track=track, steps=steps)


__all__ = ["LeanRun", "eligible", "make_lean"]
