"""Core benchmarks (issue 2): factored vs explicit projection, batched vs one-run engines.

    python -m benchmarks.bench_core [--device cpu|cuda] [--out FILE.json]

1. H_B G at m = n = 1024, r = 4: factored (r x r Gram solve, O(mnr)) against an
   explicit m x m projector B (B^T B)^+ B^T applied to G (O(m^2 n) for the product,
   plus forming it).
2. Throughput on the 64 x 64 isotropic quadratic, rank 1, Bernoulli-LoRA-GD:
   one engine with 64 runs batched against 64 calls of the same engine with one
   run each, in one process.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import describe, machine, spread, write_json
from solvers.engine import run
from solvers.estimators import GD
from solvers.methods import BernoulliLoRA
from solvers.projections import dense_projector_left, project_left


def _timeit(fn, device, repeat=5, times=None):
    """The best of ``repeat`` timings; every timing is appended to ``times`` when given."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
        if times is not None:
            times.append(time.perf_counter() - t)
    return best


class _Iso:
    def __init__(self, m, n, device):
        gen = torch.Generator().manual_seed(0)
        self.shape, self.L, self.f_star, self.n_samples = (m, n), 1.0, 0.0, None
        self.W_star = torch.randn(m, n, generator=gen, dtype=torch.float64).to(device)

    def loss(self, W):
        return 0.5 * ((W - self.W_star) ** 2).sum((-2, -1))

    def grad(self, W):
        return W - self.W_star


def bench_projection(device, m=1024, n=1024, r=4):
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(1, m, r, generator=gen, dtype=torch.float64).to(device)
    G = torch.randn(1, m, n, generator=gen, dtype=torch.float64).to(device)
    tf, te = [], []
    factored = _timeit(lambda: project_left(B, G), device, times=tf)
    explicit = _timeit(lambda: dense_projector_left(B) @ G, device, times=te)
    err = (project_left(B, G) - dense_projector_left(B) @ G).abs().max().item()
    return {"m": m, "n": n, "r": r, "factored_s": factored, "explicit_s": explicit,
            "speedup": explicit / factored, "max_abs_diff": err,
            "factored_spread_s": spread(tf), "explicit_spread_s": spread(te)}


def bench_batching(device, runs=64, m=64, n=64, steps=200):
    prob = _Iso(m, n, device)
    W0 = torch.zeros(m, n, dtype=torch.float64, device=device)
    method = BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=1.0)
    kw = dict(steps=steps, eval_every=steps, track_every_step=False)
    tb = []
    batched = _timeit(lambda: run(method, prob, W0, range(runs), **kw), device, repeat=3, times=tb)
    single = _timeit(lambda: [run(method, prob, W0, [s], **kw) for s in range(runs)], device, repeat=1)
    return {"runs": runs, "m": m, "n": n, "rank": 1, "steps": steps, "batched_s": batched, "one_by_one_s": single,
            "throughput_ratio": single / batched, "batched_spread_s": spread(tb)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    res = {"device": str(device), "machine": machine(device),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "projection": bench_projection(device), "batching": bench_batching(device)}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    text = json.dumps(res, indent=2)
    print(text)
    p, b = res["projection"], res["batching"]
    print(describe("factored H_B G", p["factored_spread_s"], "s") + "; "
          + describe("explicit", p["explicit_spread_s"], "s"))
    print(f"factored / explicit projection: {p['speedup']:.1f}x faster (best of each); "
          f"batched / one-by-one throughput: {b['throughput_ratio']:.1f}x (one-by-one timed once; "
          + describe("batched", b["batched_spread_s"], "s") + f"); {res['machine']['cpu']}, "
          f"load {res['machine']['load_at_start']}")
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
