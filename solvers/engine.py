r"""Run a method on an oracle for many seeds at once and record trajectories.

At every evaluation point (iteration 0, every ``eval_every`` steps, and the last)
the engine records per run: the iteration, epochs (gradient evaluations in full
passes), bits, time, loss, :math:`f - f^*`, :math:`\|\nabla f\|_F^2`,
:math:`\|W - W^*\|_F^2`, and the running statistics the theorems bound,

.. math::

    \overline{g}_T = \frac1T\sum_{t<T}\|\nabla f(W_t)\|^2,\quad
    \min_{t<T}\|\nabla f(W_t)\|^2,\quad
    \frac1T\sum_{t<T}(f(W_t)-f^*),\quad \min_{t<T}(f(W_t) - f^*),

computed from every iterate when ``track_every_step`` (else NaN). A run whose
iterate or loss stops being finite, or whose loss exceeds ``divergence_factor``
times its start, is marked diverged and frozen; the other runs go on. A frozen run
keeps its iterate, epochs and bits, and its running statistics cover the iterates
before the one that diverged; it is still recorded at every evaluation point (the
values of its frozen iterate), so its rows are the same alone and in any batch. Once
every run has diverged, no more steps are taken and the remaining points repeat
the frozen values.

Batch invariance (CPU): a run's recorded numbers do not depend on the other runs of
its batch, bitwise. Every per-run computation is elementwise, per-run LAPACK, or a
contraction or reduction through :mod:`solvers.linalg`; nothing is decided from the
batch as a whole except to skip work whose result would be discarded.

One iteration is :func:`solvers.iteration.advance`. The weight-space methods
(Bernoulli-LoRA, FPFT) with every estimator and stepsize rule run it through
:mod:`solvers.fused` on CUDA (block draws, one captured CUDA graph per iteration; the
same numbers), selected by ``graph``; on a CPU, with the full gradient and a constant
stepsize, through :mod:`solvers.lean` (the same numbers with about half the
tensor operations; in fast mode, for a problem with a numpy oracle, its numpy iteration,
the same iteration to rounding); elsewhere this module's loop. On a CPU that loop
takes its random numbers (coins, sketches, minibatches, noise, compressors)
``rng.BLOCK`` steps at a time (:class:`solvers.rng.block_draws`): the same numbers,
bitwise, for a fraction of the small kernels a one-step draw costs.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
import numpy as np
import torch

from solvers import rng
from solvers.fused import check_graph, make_fused
from solvers.lean import make_lean
from solvers.iteration import Carry, RunningStats, advance, as_f64, current, record_values
from solvers.linalg import run_sum


FIELDS = ("iteration", "epochs", "bits", "time_s", "loss", "f_gap", "grad_norm_sq", "dist_sq",
          "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap", "diverged")


@dataclass
class Trajectory:
    """Recorded trajectories: ``data[field]`` is a numpy array (runs, n_points)."""

    data: dict
    seeds: np.ndarray
    W: torch.Tensor  # final iterates (R, m, n)

    def __getitem__(self, key):
        return self.data[key]

    def to_records(self):
        """One dict per (run, evaluation point)."""
        R, P = self.data["iteration"].shape
        out = []
        for r in range(R):
            for k in range(P):
                row = {f: self.data[f][r, k].item() for f in FIELDS}
                row["seed"] = int(self.seeds[r])
                out.append(row)
        return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(method, oracle, W0, seeds, *, steps: int, eval_every: int = 1, f_star=None, W_star=None,
        track_every_step: bool = True, divergence_factor: float = 1e12, progress=None,
        graph: str = "auto") -> Trajectory:
    """Run ``method`` for ``steps`` iterations on all runs of the batch.

    Parameters
    ----------
    method : object with ``init(W0, oracle, seeds)`` and ``step(W, state, oracle)``.
    oracle : the problem (see ARCHITECTURE.md).
    W0 : tensor (m, n) shared by all runs, or (R, m, n).
    seeds : sequence of R ints; run k's randomness depends on seeds[k] only.
    steps, eval_every : ints >= 1 (eval_every >= 1; the last step is always recorded).
    f_star, W_star : optimal value and minimiser (default: the oracle's, if any).
    progress : optional callable(step, steps) called at evaluation points.
    graph : 'auto' | 'off' | 'eager' | 'on' | 'lean': CUDA graphs (:mod:`solvers.fused`), the
        lean CPU iteration (:mod:`solvers.lean`) or this module's loop ('off'); in invariant
        mode none of them changes a number.
    """
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps: must be an integer >= 0, got {steps}")
    if not (isinstance(eval_every, int) and eval_every >= 1):
        raise ValueError(f"eval_every: must be an integer >= 1, got {eval_every}")
    check_graph(graph)
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    R = int(seeds.shape[0])
    if R < 1:
        raise ValueError("seeds: need at least one run")
    W = W0 if W0.ndim == 3 else W0.expand(R, *W0.shape).clone()
    if W.shape[0] != R:
        raise ValueError(f"W0: has {W.shape[0]} runs but {R} seeds were given")
    seeds = seeds.to(W.device)
    f_star = getattr(oracle, "f_star", None) if f_star is None else f_star
    f_star = float(f_star) if f_star is not None and math.isfinite(float(f_star)) else float("nan")
    W_star = getattr(oracle, "W_star", None) if W_star is None else W_star
    device = W.device
    nan = torch.full((R,), float("nan"), dtype=torch.float64, device=device)

    _sync(device)
    t0 = time.perf_counter()
    state = method.init(W, oracle, seeds)
    loss, grad = current(method, oracle, W, state)
    f_start = loss.abs().clamp_min(1.0)
    stats = RunningStats.zeros(R, device)
    diverged = torch.zeros(R, dtype=torch.bool, device=device)
    records = {f: [] for f in FIELDS}
    eval_time = 0.0

    def record(t, values=None):
        """Record evaluation point ``t``: the carry's values (computed here), or ``values``
        (a runner's own, :meth:`solvers.lean.NumpyLeanRun.record_values`)."""
        nonlocal eval_time
        _sync(device)
        now = time.perf_counter() - t0 - eval_time
        e0 = time.perf_counter()
        if values is None:
            g2 = run_sum(grad.to(torch.float64) ** 2)
            dist = run_sum((W - W_star) ** 2).to(torch.float64) if W_star is not None else nan
            values = record_values(epochs=state.est.epochs, bits=state.est.bits, loss=as_f64(loss), g2=g2,
                                   dist=dist, stats=stats, diverged=diverged, f_star=f_star,
                                   tracked=track_every_step and t > 0, nan=nan)
            # the per-run fields, one copy to the host for all of them
            host = torch.stack([as_f64(v.detach()) for v in values.values()]).to("cpu").numpy()
        else:
            host = np.stack([np.asarray(v, dtype=np.float64) for v in values.values()])
        for key, row in zip(values, host):
            records[key].append(row)
        records["iteration"].append(np.full(R, t, dtype=np.float64))
        records["time_s"].append(np.full(R, now, dtype=np.float64))
        eval_time += time.perf_counter() - e0
        if progress is not None:
            progress(t, steps)

    record(0)
    limit = divergence_factor * f_start
    carry = Carry(W, state, loss, grad, stats, diverged)
    runner = None
    if steps > 0:  # CUDA graphs (solvers.fused), the lean CPU iteration (solvers.lean), else the loop below
        kw = dict(f_star=f_star, limit=limit, track=track_every_step, graph=graph)
        runner = make_fused(method, oracle, carry, **kw) or make_lean(method, oracle, carry, steps=steps, **kw)
    # solvers.lean.NumpyLeanRun records from its own arrays (no carry rebuilt at each point)
    runner_values = functools.partial(runner.record_values, f_star=f_star, W_star=W_star,
                                      tracked=track_every_step) if hasattr(runner, "record_values") else None
    plain = lambda W, state: method.step(W, state, oracle)  # noqa: E731
    t = 0
    # on a CPU the plain loop's coins, sketches and other per-step draws come rng.BLOCK steps
    # at a time (bitwise the per-step numbers, far fewer small kernels: solvers.rng.block_draws)
    block = min(rng.BLOCK, steps + 1)  # the steps drawn never exceed the run's
    draws = rng.block_draws(state.seeds, block=block) if runner is None and device.type == "cpu" \
        else contextlib.nullcontext()
    # a diverging run overflows: it is detected and frozen, numpy need not warn (solvers.lean)
    with draws, np.errstate(over="ignore", invalid="ignore"):
        for t in range(1, steps + 1):
            point = t % eval_every == 0 or t == steps
            if runner is not None:  # the same iteration, on block draws (solvers.fused or solvers.lean)
                runner.step(evaluate=track_every_step or point)
                if point and runner_values is not None:
                    record(t, runner_values())
                    if runner.all_diverged():
                        break
                    continue
                if point:
                    carry = runner.snapshot()
            else:
                carry = advance(carry, plain, method=method, oracle=oracle, f_star=f_star, limit=limit,
                                track=track_every_step, evaluate=track_every_step or point)
            if point:
                W, state, loss, grad, stats, diverged = carry
                record(t)
                if bool(diverged.all()):
                    break
    if runner_values is not None:
        W = runner.snapshot().W
    # every run is frozen: the remaining points repeat its values (as they would in a batch)
    for t in range(t + 1, steps + 1):
        if t % eval_every == 0 or t == steps:
            record(t, None if runner_values is None else runner_values())
    data = {k: np.stack(v, axis=1) for k, v in records.items()}
    data["diverged"] = data["diverged"].astype(bool)
    return Trajectory(data=data, seeds=seeds.cpu().numpy(), W=W)
