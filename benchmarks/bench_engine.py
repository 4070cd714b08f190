"""Engine step cost on the paper's linreg GD set-up (issue 5: the GD sweep target).

    python -m benchmarks.bench_engine [--device cpu|cuda] [--size ci|paper] [--runs 320]
                                      [--rank 4] [--steps 200] [--profile] [--out FILE.json]

One engine call of Bernoulli-LoRA-GD with ``runs`` runs (eight p values, the shape of
one rank group of the sweep), ``track_every_step`` as in the sweep. Reports ms per
step (GPU-synchronised), the time of the gradient alone at that batch, and with
``--profile`` the kernels launched per step and the top operators by device time.
On CUDA it runs three ways: the fused, graph-captured iteration of :mod:`solvers.fused`
(the default), and the engine's own loop (``graph='off'``) with random-number kernels
compiled by torch.compile (``rng.set_compile(True)``) or eager (the default); it checks
that compiled and eager kernels give the same integers.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from experiments.problems import make_problem
from solvers import rng
from benchmarks.common import write_json
from solvers.engine import run
from solvers.estimators import GD
from solvers.methods import BernoulliLoRA

PS = (0.0, 0.01, 0.2, 0.4, 0.6, 0.8, 0.99, 1.0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_ms(problem, runs, rank, steps, device, graph="auto"):
    ps = tuple(PS[i * len(PS) // runs] for i in range(runs))
    method = BernoulliLoRA(p=ps, rank=rank, estimator=GD(), stepsize=tuple([1.0 / problem.L] * runs))
    seeds = list(range(runs))
    run(method, problem, problem.W0, seeds, steps=5, eval_every=40, track_every_step=True, graph=graph)  # warm-up
    _sync(device)
    t = time.perf_counter()
    run(method, problem, problem.W0, seeds, steps=steps, eval_every=40, track_every_step=True, graph=graph)
    _sync(device)
    return 1e3 * (time.perf_counter() - t) / steps, method, seeds


def gradient_ms(problem, runs, device, repeat=50):
    W = problem.W0.expand(runs, *problem.W0.shape).contiguous()
    problem.loss_and_grad(W)
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        problem.loss_and_grad(W)
    _sync(device)
    return 1e3 * (time.perf_counter() - t) / repeat


def profile(method, problem, seeds, device, steps=40, graph="auto"):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with prof(activities=acts) as p:
        run(method, problem, problem.W0, seeds, steps=steps, eval_every=40, track_every_step=True, graph=graph)
        _sync(device)
    ev = p.key_averages()
    if device.type == "cuda":
        kernels = sum(e.count for e in ev if e.device_type == torch.autograd.DeviceType.CUDA)
        table = p.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    else:
        kernels = sum(e.count for e in ev if e.key.startswith("aten::"))
        table = p.key_averages().table(sort_by="cpu_time_total", row_limit=15)
    return kernels / steps, table


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_engine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", default=None, help="linreg size (default: paper on cuda, ci on cpu)")
    ap.add_argument("--runs", type=int, default=320)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    size = args.size or ("paper" if device.type == "cuda" else "ci")
    problem = make_problem("linreg", size=size, device=str(device))
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "size": size, "shape": list(problem.shape), "runs": args.runs,
              "rank": args.rank, "steps": args.steps, "gradient_ms": gradient_ms(problem, args.runs, device)}
    # graph: solvers.fused (block draws, captured CUDA graph); loop_*: the engine's own
    # loop with compiled / eager random-number kernels
    modes = ("graph", "loop_compiled", "loop_eager") if device.type == "cuda" else ("fused_eager", "loop_eager")
    env = {"graph": ("on", False), "loop_compiled": ("off", True), "loop_eager": ("off", False),
           "fused_eager": ("eager", False)}
    for mode in modes:
        graph, compiled = env[mode]
        rng.set_compile(compiled)
        ms, method, seeds = engine_ms(problem, args.runs, args.rank, args.steps, device, graph)
        entry = {"ms_per_step": ms}
        if args.profile:
            entry["kernels_per_step"], table = profile(method, problem, seeds, device, graph=graph)
            print(f"--- {mode}\n{table}")
        result[mode] = entry
        print(f"{mode}: {ms:.3f} ms/step ({args.runs} runs, rank {args.rank}); gradient alone "
              f"{result['gradient_ms']:.3f} ms", flush=True)
    if device.type == "cuda":  # the compiled random numbers are the eager ones
        s = torch.arange(1000, device=device)
        rng.set_compile(True)
        a = rng.random_bits(s, 2, 12345, (64, 8), sub=3)
        z1 = rng.normal(s, 2, 7, (64, 8))
        rng.set_compile(False)
        b = rng.random_bits(s, 2, 12345, (64, 8), sub=3)
        z0 = rng.normal(s, 2, 7, (64, 8))
        result["compiled_bits_equal"] = bool(torch.equal(a, b))
        result["compiled_normal_max_abs_diff"] = float((z1 - z0).abs().max())
    rng.set_compile(False)
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
