"""The first engine call's extra cost in a fresh process (issue 14: "no compile tax").

    python -m benchmarks.bench_compile_tax [--device auto|cpu|cuda] [--reps 3] [--steps 300]
                                           [--compile] [--out FILE.json]

Each repetition starts a fresh Python process (``--child``), which builds the ci linreg
problem on the device (CUDA context created before timing), then runs the same engine
call twice: Bernoulli-LoRA-SGD and -PAGE (batch 10) and -GD, 12 runs, ``steps`` steps, the
engine's default path (on CUDA the fused, graph-captured one). The tax is the first call's
time minus the second's: everything a process pays once (kernel compilation, cuBLAS and
cuSOLVER set-up, graph capture). The draws are eager integer kernels by default
(:func:`solvers.rng.set_compile`); ``--compile`` measures the same with torch.compile'd
draw kernels, for comparison. Target: under 3 s per process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import write_json


def _child(device_name, steps, compiled):
    from experiments.problems import make_problem
    from solvers import rng
    from solvers.engine import run
    from solvers.estimators import GD, PAGE, SGD
    from solvers.methods import BernoulliLoRA

    device = torch.device(device_name)
    rng.set_compile(compiled)
    prob = make_problem("linreg", size="ci").to(device, torch.float64)
    torch.zeros(1, device=device).sum().item()  # the CUDA context exists before timing
    seeds = list(range(12))
    ps = tuple(float(p) for p in [0.0, 0.1, 0.5, 0.9, 1.0, 0.5] * 2)
    out = {}
    for name, est in (("sgd", SGD(batch=10)), ("page", PAGE(batch=10)), ("gd", GD())):
        method = BernoulliLoRA(p=ps, rank=1, estimator=est, stepsize=tuple([1 / 16 / prob.L] * 12))
        times = []
        for _ in range(2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            run(method, prob, prob.W0, seeds, steps=steps, eval_every=max(1, steps // 20))
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[name] = {"first_s": times[0], "second_s": times[1], "tax_s": times[0] - times[1]}
    print(json.dumps(out))


def _fresh(device, steps, compiled):
    cmd = [sys.executable, "-m", "benchmarks.bench_compile_tax", "--child", "--device", device, "--steps", str(steps)]
    if compiled:
        cmd.append("--compile")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_compile_tax", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--compile", action="store_true", help="torch.compile the draw kernels (the old default on CUDA)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if args.child:
        return _child(device, args.steps, args.compile)
    from benchmarks.bench_finite_sum import machine

    reps = [_fresh(device, args.steps, args.compile) for _ in range(args.reps)]
    result = {"benchmark": "compile_tax", "device": device, "compiled_draws": args.compile, "steps": args.steps,
              "machine": machine(torch.device(device)), "reps": reps, "target_s": 3.0}
    for name in ("sgd", "page", "gd"):
        tax = [r[name]["tax_s"] for r in reps]
        result[name] = {"tax_s": {"min": min(tax), "median": statistics.median(tax), "max": max(tax)},
                        "second_s_median": statistics.median(r[name]["second_s"] for r in reps)}
    total = [sum(r[n]["tax_s"] for n in ("sgd", "page", "gd")) for r in reps]
    result["tax_per_process_s"] = {"min": min(total), "median": statistics.median(total), "max": max(total)}
    print(f"compile tax per fresh process ({device}, {result['machine'].get('gpu', result['machine']['cpu'])}, "
          f"draws {'compiled' if args.compile else 'eager'}): median {result['tax_per_process_s']['median']:.2f} s "
          f"[min {min(total):.2f}, max {max(total):.2f}] over {len(reps)} processes (SGD + PAGE + GD first calls "
          f"minus second calls); target < 3 s", flush=True)
    for name in ("sgd", "page", "gd"):
        r = result[name]
        print(f"  {name}: tax median {r['tax_s']['median']:.2f} s, second call {r['second_s_median']:.2f} s")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
