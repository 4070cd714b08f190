r"""Small problems on a CPU (issue 14, item 3): the engine against a plain numpy loop.

    python -m benchmarks.bench_small [--m 16] [--n 16] [--rank 2] [--runs 20] [--steps 300]
                                     [--reps 5] [--threads T] [--out FILE.json]

Bernoulli-LoRA-GD (p = 0.5, Gaussian sketch, gamma = 1/L) on the dense quadratic
:math:`f(W) = \tfrac12 e^\top Q e`, :math:`e = \operatorname{vec}(W - W^*)`, of
:mod:`experiments.problems.quadratic` (m x n = 16 x 16: d = 256, mu = 1, L = 4), three ways,
side by side in each repetition (their order rotating):

* ``numpy``: one run as a plain numpy loop of the same step: the gradient :math:`Qe` and
  the loss, the running sums and minima of :math:`\|\nabla f\|^2` and :math:`f - f^*`, a
  coin, a Gaussian sketch (numpy's generator), the projected direction by an r x r
  solve, the update, a finiteness check, and a record every ``eval_every`` steps;
* ``torch_eager_floor``: the same loop with torch's eager operations instead of numpy's
  (torch's generator, ``torch.linalg.solve``, no engine): what any implementation that
  dispatches one torch operation per array operation pays at least;
* ``single``: one run through :func:`solvers.engine.run` (``track_every_step``, a record
  every ``eval_every`` steps, its counter-based random numbers, batch-invariant kernels;
  on a CPU the lean iteration of :mod:`solvers.lean`);
* ``single_general_loop``: the same run through the engine's general loop (``graph='off'``),
  bitwise the same numbers;
* ``batched``: ``runs`` runs in one engine call;
* ``single_fast``, ``batched_fast``: the same in fast mode (``set_invariant(False)``, what
  ``python -m experiments.sweep --fast-cpu`` uses): the engine runs the numpy iteration of
  :mod:`solvers.lean` (:class:`~solvers.lean.NumpyLeanRun`; the quadratic has a numpy
  oracle), one BLAS call per batch, so a run's last bits differ from invariant mode's and
  depend on its batch (documented in :mod:`solvers.linalg`).

Reported per repetition and as median [min, max]: milliseconds per step (wall and process
CPU time) and the two ratios the issue's targets are stated in: ``single / numpy`` (target
at most 3) and the throughput of ``runs`` batched runs against ``runs`` single runs,
``runs * single / batched`` (target at least 5), in each mode; and ``torch_eager_floor / numpy`` (the part
of the first ratio no torch-eager engine can remove), ``single / torch_eager_floor`` and
``general loop / single`` (what the lean iteration saves); and the torch operations each
way dispatches per step (``torch_ops_per_step``, counted by torch.profiler). The machine, its load average before and
after, and the threads go into the output. In the default (invariant) mode the batched
run of seed 0 is checked to record the single run's rows, bitwise.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks.common import describe, load, machine, spread, write_json
from experiments.problems import make_problem
from solvers.engine import run
from solvers.estimators import GD
from solvers.linalg import set_invariant
from solvers.methods import BernoulliLoRA

TARGETS = {"single_over_numpy": 3.0, "batched_throughput": 5.0}  # at most, at least (issue 14)


def plain_loop(Q, w_star, w0, m, n, r, p, gamma, steps, eval_every, *, rand, randn, solve):
    """One run of Bernoulli-LoRA-GD on ``f = e^T Q e / 2``, one array operation per step of
    the math, on numpy arrays or torch tensors (``rand()``, ``randn(shape)``, ``solve(M, B)``
    of that library); returns the recorded ``(iteration, loss, ||grad||^2)`` rows."""
    w = w0
    e = w - w_star
    g = Q @ e
    loss = 0.5 * float(e @ g)
    sum_g = sum_f = 0.0
    min_g = min_f = math.inf
    rows = [(0, loss, float(g @ g))]
    for t in range(1, steps + 1):
        g2 = float(g @ g)
        sum_g, sum_f = sum_g + g2, sum_f + loss
        min_g, min_f = min(min_g, g2), min(min_f, loss)
        G = g.reshape(m, n)
        if rand() < p:
            B = randn((m, r)) / math.sqrt(m)
            D = B @ solve(B.T @ B, B.T @ G)
        else:
            A = randn((r, n)) / math.sqrt(n)
            D = solve(A @ A.T, A @ G.T).T @ A
        w = w - gamma * D.reshape(-1)
        e = w - w_star
        g = Q @ e
        loss = 0.5 * float(e @ g)
        if not math.isfinite(loss):
            break
        if t % eval_every == 0 or t == steps:
            rows.append((t, loss, float(g @ g)))
    return rows


def numpy_loop(Q, w_star, w0, m, n, r, p, gamma, steps, eval_every, seed):
    """:func:`plain_loop` in numpy (numpy's generator, ``np.linalg.solve``)."""
    gen = np.random.default_rng(seed)
    return plain_loop(Q, w_star, w0.copy(), m, n, r, p, gamma, steps, eval_every,
                      rand=gen.random, randn=gen.standard_normal, solve=np.linalg.solve)


def torch_loop(Q, w_star, w0, m, n, r, p, gamma, steps, eval_every, seed):
    """:func:`plain_loop` with torch's eager operations (float64, torch's generator,
    ``torch.linalg.solve``), no engine: the floor of ANY implementation that dispatches one
    torch operation per array operation, as the engine does."""
    gen = torch.Generator().manual_seed(seed)
    kw = dict(generator=gen, dtype=torch.float64)
    return plain_loop(*(torch.from_numpy(a) for a in (Q, w_star, w0.copy())), m, n, r, p, gamma, steps, eval_every,
                      rand=lambda: float(torch.rand((), **kw)), randn=lambda shape: torch.randn(shape, **kw),
                      solve=torch.linalg.solve)


def ops_per_step(fn, steps):
    """Top-level torch operations dispatched per step by ``fn`` (torch.profiler, one call)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(e.cpu_parent is None for e in prof.events()) / steps


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def bench(*, m=16, n=16, rank=2, runs=20, steps=300, reps=5, eval_every=10):
    prob = make_problem("quadratic", m=m, n=n, mu=1.0, L=4.0)
    gamma = 1.0 / prob.L
    method = BernoulliLoRA(p=0.5, rank=rank, estimator=GD(), stepsize=gamma)
    Q = prob.Q.numpy()
    w_star, w0 = prob.W_star.reshape(-1).numpy(), prob.W0.reshape(-1).numpy()
    kw = dict(steps=steps, eval_every=eval_every, track_every_step=True)
    def fast(fn):  # solvers.linalg's fast mode: one BLAS/LAPACK call per batch, not batch-invariant
        def go():
            set_invariant(False)
            try:
                return fn()
            finally:
                set_invariant(None)
        return go

    ways = {
        "numpy": lambda: numpy_loop(Q, w_star, w0, m, n, rank, 0.5, gamma, steps, eval_every, 0),
        "torch_eager_floor": lambda: torch_loop(Q, w_star, w0, m, n, rank, 0.5, gamma, steps, eval_every, 0),
        "single_general_loop": lambda: run(method, prob, prob.W0, [0], graph="off", **kw),
        "single": lambda: run(method, prob, prob.W0, [0], **kw),
        "batched": lambda: run(method, prob, prob.W0, list(range(runs)), **kw),
        "single_fast": fast(lambda: run(method, prob, prob.W0, [0], **kw)),
        "batched_fast": fast(lambda: run(method, prob, prob.W0, list(range(runs)), **kw)),
    }
    for fn in ways.values():  # warm-up
        fn()
    wall = {k: [] for k in ways}
    cpu = {k: [] for k in ways}
    names = list(ways)
    for rep in range(reps):
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            w, c, out = _timed(ways[k])
            wall[k].append(1e3 * w / steps)
            cpu[k].append(1e3 * c / steps)
            if k == "single":
                single_rows = out
            elif k == "batched":
                batched_rows = out
    res_ops = {k: ops_per_step(ways[k], steps) for k in ("torch_eager_floor", "single_general_loop", "single")}
    invariant = all(np.array_equal(single_rows[f][0], batched_rows[f][0], equal_nan=True)
                    for f in ("loss", "grad_norm_sq", "dist_sq", "avg_grad_norm_sq", "min_f_gap"))
    res = {"problem": {"name": "quadratic", "m": m, "n": n, "d": m * n, "mu": 1.0, "L": 4.0},
           "method": {"name": "bernoulli_lora", "p": 0.5, "rank": rank, "sketch": "gaussian", "gamma": gamma},
           "runs": runs, "steps": steps, "eval_every": eval_every, "reps": reps,
           "batched_row_of_seed0_equals_single": bool(invariant), "targets": TARGETS,
           "torch_ops_per_step": res_ops}
    for clock, t in (("wall", wall), ("cpu", cpu)):
        res[f"ms_per_step_{clock}"] = {k: {"per_rep": v, **spread(v)} for k, v in t.items()}
        ratios = {"single_over_numpy": [s / q for s, q in zip(t["single"], t["numpy"])],
                  "batched_throughput": [runs * s / b for s, b in zip(t["single"], t["batched"])],
                  "single_fast_over_numpy": [s / q for s, q in zip(t["single_fast"], t["numpy"])],
                  "batched_fast_throughput": [runs * s / b for s, b in zip(t["single_fast"], t["batched_fast"])],
                  "torch_eager_floor_over_numpy": [f / q for f, q in zip(t["torch_eager_floor"], t["numpy"])],
                  "single_over_torch_eager_floor": [s / f for s, f in zip(t["single"], t["torch_eager_floor"])],
                  "general_loop_over_single": [g / s for g, s in zip(t["single_general_loop"], t["single"])]}
        res[f"ratios_{clock}"] = {k: {"per_rep": v, **spread(v)} for k, v in ratios.items()}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_small", description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch's intra-op threads (default: torch's own choice); recorded in the output")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine(torch.device("cpu"))
    res = bench(m=args.m, n=args.n, rank=args.rank, runs=args.runs, steps=args.steps, reps=args.reps)
    res["machine"] = dict(info, load_at_end=load())
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['threads']} threads), "
          f"load {info['load_at_start']} -> {res['machine']['load_at_end']}")
    for clock in ("wall", "cpu"):
        ms, ratio = res[f"ms_per_step_{clock}"], res[f"ratios_{clock}"]
        print(f"[{clock}] " + "; ".join(describe(k, ms[k], "ms/step") for k in ms))
        for mode in ("", "_fast"):
            name = " (fast mode, not batch-invariant)" if mode else " (batch-invariant)"
            print(f"[{clock}] " + describe("single / numpy loop" + name, ratio[f"single{mode}_over_numpy"], "x")
                  + f" (target <= {TARGETS['single_over_numpy']:g})")
            print(f"[{clock}] " + describe(f"throughput {args.runs} batched / {args.runs} single" + name,
                                           ratio[f"batched{mode}_throughput"], "x")
                  + f" (target >= {TARGETS['batched_throughput']:g})")
        print(f"[{clock}] " + describe("torch eager floor / numpy loop (the same step, one torch op per array op)",
                                       ratio["torch_eager_floor_over_numpy"], "x"))
        print(f"[{clock}] " + describe("engine single / torch eager floor", ratio["single_over_torch_eager_floor"], "x"))
        print(f"[{clock}] " + describe("general loop / lean path (single run)", ratio["general_loop_over_single"], "x"))
    print("torch operations per step: " + ", ".join(f"{k} {v:.0f}" for k, v in res["torch_ops_per_step"].items()))
    print(f"batched run of seed 0 equals the single run bitwise: {res['batched_row_of_seed0_equals_single']}")
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
