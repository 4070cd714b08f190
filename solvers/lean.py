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

In fast mode a second form, :class:`NumpyLeanRun`, keeps the block draws but does each
step's arithmetic in numpy, for problems that give a numpy form of their oracle
(:meth:`~experiments.problems.base.Problem.numpy_oracle`; the quadratics do): a numpy call
costs a fraction of a torch operation's dispatch, which is what a small problem's step is
made of (``benchmarks/bench_small.py``: the numpy loop's step written in torch's eager
operations is about 3 times the numpy loop itself, so no torch-dispatching step reaches a
plain numpy loop's speed). Its numbers are the loop's to rounding, not bitwise (numpy's
BLAS and sums), and the batch's gradients are one GEMM, so it is used only where that is
the contract: fast mode (``tests/test_lean_numpy.py``).

Selected by the engine's ``graph`` argument: ``'auto'`` uses it on a CPU where
:func:`eligible` (in fast mode the numpy form where the problem has one), ``'off'`` keeps
the general loop (the reference), ``'lean'`` asks for the torch form (the general loop
where not eligible).
"""
from __future__ import annotations

import numpy as np
import torch

from solvers import rng
from solvers.estimators import GD, EstimatorState, _value_and_grad
from solvers.iteration import Carry, RunningStats, as_f64, diverging, record_values
from solvers.linalg import invariant, one_thread, run_sum
from solvers.methods import FPFT, BernoulliLoRA, MethodState
from solvers.projections import gram_pinv, project_left_pinv, project_right_pinv
from solvers.sketches import make_sketch


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

    def _next_block(self):
        """Start the next block (up to ``block_steps`` steps, position 0); its first step."""
        self.block, self.pos = min(self.block_steps, self.steps - self.done), 0
        return self.first_step + self.done

    def _block_coins(self):
        """Start the next block: its first step and coins (R, K), True: left."""
        start = self._next_block()
        left = self.method.coins(self.seeds, range(start, start + self.block), self._W_tensor())
        self.sides = [(all(c), any(c)) for c in left.T.tolist()]  # per step: every run left, any
        return start, left

    def _draw_block(self, start, left):
        """The block's draws per side some run takes at some step: ``(ks, S, P)``, the
        steps ``ks`` (block positions) where it is drawn, their sketches ``S`` (R, len(ks),
        ...) and Gram pseudo-inverses ``P``. A side no run takes at a step is not drawn
        (counter-based: the drawn steps' numbers do not change)."""
        method, seeds, W = self.method, self.seeds, self._W_tensor()
        drawn = {}
        for side, need in (("left", lambda e, s: s), ("right", lambda e, s: not e)):
            ks = [k for k, (every, some) in enumerate(self.sides) if need(every, some)]
            if ks:
                S = method.sketches(seeds, [start + k for k in ks], W, side)
                use = left[:, ks] if side == "left" else ~left[:, ks]
                drawn[side] = ks, S, _block_pinvs(S if side == "left" else S.transpose(-1, -2), use)
        return drawn

    def _refill(self):
        if not self.sided:
            self._next_block()
            return
        start, left = self._block_coins()
        drawn = self._draw_block(start, left)
        # per step (left coins, B, (B^T B)^+, A, (A A^T)^+) as views
        per_step = [[c, None, None, None, None] for c in left.unbind(1)]
        for side, slot in (("left", 1), ("right", 3)):
            if side in drawn:
                ks, S, P = drawn[side]
                for k, s, p in zip(ks, S.unbind(1), P.unbind(1)):
                    per_step[k][slot], per_step[k][slot + 1] = s, p
        self.drawn = per_step

    def _W_tensor(self):
        return self.W

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
            gap, g2 = as_f64(self.loss) - self.f_star, self._sq_norms(as_f64(self.grad))
            self.stats = self.stats.add(gap, g2, ~self.diverged) if self.frozen else self.stats.add_live_(gap, g2)
        W_new = self.W - self.gamma * self._direction()
        if self.frozen:
            W_new = self._where(self.active[:, None, None], W_new, self.W)
            self.epochs = self._where(self.active, self.epochs + 1.0, self.epochs)
        else:
            self.epochs += 1.0
        self.W = W_new
        self.est_loss, self.G = self._value_and_grad(W_new)  # GD.update_given
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

    # the array operations a step needs beyond the shared helpers (NumpyLeanRun: numpy's)
    _where = staticmethod(torch.where)

    @staticmethod
    def _sq_norms(X):
        return run_sum(X ** 2)

    def _value_and_grad(self, W):
        return _value_and_grad(self.oracle, W)

    @staticmethod
    def _copy(t):
        """A copy of the iterated value ``t`` as a torch tensor."""
        return torch.clone(t)

    def snapshot(self) -> Carry:
        """The carry after the iterations so far, as the general loop holds it (copies)."""
        c = self._copy
        est = EstimatorState(G=c(self.G), epochs=c(self.epochs), bits=c(self.bits),
                             loss=None if self.est_loss is None else c(self.est_loss))
        state = MethodState(step=self.first_step + self.done, seeds=self.seeds, est=est,
                            active=c(self.active), left=c(self.left))
        stats = RunningStats(*(c(t) for t in self.stats))
        return Carry(c(self.W), state, c(self.loss), c(self.grad), stats, c(self.diverged))


#: sketch entries (both sides) :class:`NumpyLeanRun` draws at once, at least rng.BLOCK steps
BLOCK_ENTRIES = 1 << 20


def _run_sq(X):
    """Per-run squared norm of an (R, ...) array (numpy's contraction)."""
    X = X.reshape(X.shape[0], -1)
    return np.einsum("ri,ri->r", X, X)


class NumpyLeanRun(LeanRun):
    """:class:`LeanRun` with the per-step arithmetic in numpy, for the CPU fast mode.

    The block draws (coins, sketches, Gram pseudo-inverses) are made in torch once per
    block, a run's sketch of a side only at its own steps that take that side (per-run
    step arrays of :mod:`solvers.rng`; the same numbers as :class:`LeanRun`'s draws, about
    half as many for a batch); each step's projection, update, gradient (the problem's
    :meth:`~experiments.problems.base.Problem.numpy_oracle`), statistics and divergence test
    are numpy operations on arrays that live across steps, a fraction of a torch
    operation's fixed cost each. The same iteration with other kernels (numpy's BLAS and
    sums), so the numbers agree with :class:`LeanRun`'s to rounding, not bitwise, and a
    run's last bits depend on its batch (one GEMM for the batch's gradients): hence only
    in fast mode, where that is the documented contract (:mod:`solvers.linalg`)."""

    def __init__(self, method, oracle, carry, *, f_star, limit, track, steps, loss_and_grad):
        super().__init__(method, oracle, carry, f_star=f_star, limit=limit, track=track, steps=steps)
        self.loss_and_grad = loss_and_grad
        arr = lambda t: t.detach().numpy()  # noqa: E731  (super() made the copies)
        self.W, self.G, self.loss, self.grad = arr(self.W), arr(self.G), arr(self.loss), arr(self.grad)
        self.est_loss = self.loss if self.est_loss is None else arr(self.est_loss).copy()
        self.epochs, self.limit, self.gamma = arr(self.epochs), arr(limit).copy(), arr(self.gamma)
        self.stats = RunningStats(*(arr(t) for t in self.stats))
        self.diverged, self.active, self.left = arr(self.diverged), arr(self.active), arr(self.left)
        self.W_star = None  # the minimiser as a float64 array, at the first record
        # steps drawn at once (a cost knob only): up to BLOCK_ENTRIES sketch entries a block,
        # so one or a few draws serve a small problem's whole run
        m, n = self.W.shape[-2:]
        rank = getattr(method, "rank", 1)
        self.block_steps = max(rng.BLOCK, BLOCK_ENTRIES // (self.W.shape[0] * (m + n) * rank))

    def _W_tensor(self):
        return torch.from_numpy(self.W)

    def _refill(self):
        if not self.sided:
            self._next_block()
            return
        # the draws on one torch thread: a second one would compete for the cores with
        # the BLAS threads numpy's products use between the draws
        with one_thread():
            self._draw_numpy()

    def _draw_numpy(self):
        start, left = self._block_coins()
        L = left.numpy()
        R, K = L.shape
        self.coins = np.ascontiguousarray(L.T)  # (K, R): step-major, one view a step
        self.drawn = {}
        if make_sketch(self.method.sketch).block_draws:
            # each run draws a side only at its own steps that take it: the first J positions
            # of its order "this side first" (J: the most any run takes; the rest of a short
            # row are real steps of that run too, drawn and unused), so a batch draws about
            # half of what drawing both sides of every step would
            method, seeds, W = self.method, self.seeds, self._W_tensor()
            sides = {}
            for side, take in (("left", L), ("right", ~L)):
                J = int(take.sum(1).max())
                if J:
                    order = np.argsort(~take, axis=1, kind="stable")[:, :J]  # (R, J) block positions
                    S = method.sketches(seeds, start + order, W, side)
                    flat = S.reshape(-1, *S.shape[2:])
                    P = gram_pinv(flat if side == "left" else flat.transpose(-1, -2))
                    at = np.zeros((K, R), dtype=np.int64)  # run r's column of block position k
                    at[order.T, np.arange(R)] = np.arange(J)[:, None]
                    sides[side] = at, S, P.reshape(*S.shape[:2], *P.shape[1:])
        else:  # LeanRun's draws: the steps some run takes a side at, for every run
            sides = {}
            for side, (ks, S, P) in self._draw_block(start, left).items():
                at = np.zeros((K, R), dtype=np.int64)
                at[ks] = np.arange(len(ks))[:, None]
                sides[side] = at, S, P
        # per side: the sketches and the sketches times their Gram pseudo-inverses, runs and
        # columns flattened, and per block position the rows of each run's (one take a step),
        # so a step is two products: H_B G = (B P)(B^T G), G H_A = (G A^T)(P A)
        for side, (at, S, P) in sides.items():
            S, P = S.numpy(), P.numpy()
            SP = S @ P if side == "left" else P @ S
            flat = lambda X: X.reshape(-1, *X.shape[2:])  # noqa: E731
            self.drawn[side] = (np.ascontiguousarray(at + np.arange(R) * S.shape[1]), flat(S), flat(SP))

    def _direction(self):
        if not self.sided:
            return self.G
        pos, G = self.pos, self.G
        every, some = self.sides[pos]
        self.left = left = self.coins[pos]
        if some:
            at, S, SP = self.drawn["left"]
            DL = SP.take(at[pos], 0) @ (S.take(at[pos], 0).transpose(0, 2, 1) @ G)
        if not every:
            at, S, SP = self.drawn["right"]
            DR = (G @ S.take(at[pos], 0).transpose(0, 2, 1)) @ SP.take(at[pos], 0)
        if every:
            return DL
        return DR if not some else np.where(left[:, None, None], DL, DR)

    _where = staticmethod(np.where)
    _sq_norms = staticmethod(_run_sq)

    def _value_and_grad(self, W):
        return self.loss_and_grad(W)

    @staticmethod
    def _copy(a):
        return torch.from_numpy(a.copy()) if isinstance(a, np.ndarray) else torch.clone(a)  # bits: a tensor

    def record_values(self, *, f_star, W_star, tracked) -> dict:
        """:func:`solvers.iteration.record_values` of the current iterate from the arrays
        (what the engine would compute from :meth:`snapshot`, in numpy: one array
        operation each instead of a carry rebuilt and a dozen torch operations)."""
        nan = np.full(self.W.shape[0], np.nan)
        if W_star is not None and self.W_star is None:
            self.W_star = W_star.detach().to("cpu", torch.float64).numpy()
        dist = nan if W_star is None else _run_sq(self.W - self.W_star)
        return record_values(epochs=self.epochs, bits=self.bits.numpy(), loss=as_f64(self.loss),
                             g2=_run_sq(as_f64(self.grad)), dist=dist, stats=self.stats,
                             diverged=self.diverged, f_star=f_star, tracked=tracked, nan=nan)

    def all_diverged(self) -> bool:
        return bool(self.diverged.all())


def make_lean(method, oracle, carry, *, f_star, limit, track, steps, graph="auto"):
    """A :class:`LeanRun` for this run (with ``graph='auto'`` in fast mode a
    :class:`NumpyLeanRun` where the problem has a numpy oracle), or None where the general
    loop applies."""
    if graph not in ("auto", "lean") or not eligible(method, oracle, carry.W.device):
        return None
    kw = dict(f_star=f_star, limit=limit, track=track, steps=steps)
    numpy_oracle = getattr(oracle, "numpy_oracle", None)
    if graph == "auto" and not invariant(carry.W.device) and numpy_oracle is not None:
        loss_and_grad = numpy_oracle()
        if loss_and_grad is not None:
            return NumpyLeanRun(method, oracle, carry, loss_and_grad=loss_and_grad, **kw)
    return LeanRun(method, oracle, carry, **kw)


__all__ = ["LeanRun", "NumpyLeanRun", "eligible", "make_lean"]
