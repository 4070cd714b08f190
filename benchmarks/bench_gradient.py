"""Gradient-step throughput against the device's dense fp64 GEMM rate (issue 5).

    python -m benchmarks.bench_gradient [--size paper] [--device cuda] [--runs 320] [--out FILE.json]

1. Dense fp64 GEMM peak: the best of a few large square products (n = 8192 on a
   GPU, 2048 on a CPU), 2 n^3 flops each.
2. The sweep's gradient step: ``problem.grad(W)`` of the linreg problem for a
   batch of ``runs`` runs (one (R, d) x (d, d) product with the precomputed
   Gram matrix, d = m n, plus the elementwise regulariser): 2 d^2 R flops.
Reports both rates in TFLOP/s (from the median time) and their ratio (the limit is 1),
the spread of the times over the repetitions, and the machine with its load.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import describe, machine, spread, write_json


def _time(fn, device, repeat=10):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeat):
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
    else:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return spread(times)


def gemm_peak(device, n=None):
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, dtype=torch.float64, device=device)
    b = torch.randn(n, n, dtype=torch.float64, device=device)
    s = _time(lambda: a @ b, device, repeat=5)
    return {"n": n, "seconds": s["median"], "tflops": 2 * n**3 / s["median"] / 1e12, "seconds_spread": s}


def gradient_rate(problem, device, runs):
    m, n = problem.shape
    W = problem.W0.expand(runs, m, n).contiguous() + 0.01 * torch.randn(runs, m, n, dtype=torch.float64, device=device)
    s = _time(lambda: problem.grad(W), device, repeat=20)
    d = m * n
    return {"runs": runs, "d": d, "seconds": s["median"], "tflops": 2 * d * d * runs / s["median"] / 1e12,
            "seconds_spread": s}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="ci")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=320)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from experiments.build import resolve_device
    from experiments.problems import make_problem
    from solvers.linalg import set_invariant

    device = resolve_device(args.device)
    set_invariant(False)  # one GEMM, as the sweeps run it
    problem = make_problem("linreg", size=args.size).to(device, torch.float64)
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "gemm_peak": gemm_peak(device), "gradient": gradient_rate(problem, device, args.runs)}
    res["ratio"] = res["gradient"]["tflops"] / res["gemm_peak"]["tflops"]
    res["machine"] = machine(device)
    text = json.dumps(res, indent=2)
    print(text)
    print(describe("gradient", res["gradient"]["seconds_spread"], "s") + "; "
          + describe("GEMM", res["gemm_peak"]["seconds_spread"], "s"))
    print(f"gradient rate / dense fp64 GEMM rate = {res['ratio']:.2f} (limit 1) on {res['device']}, "
          f"{res['machine']['cpu']}, load {res['machine']['load_at_start']}")
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
