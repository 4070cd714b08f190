"""Runtime of the exact expectations (theory.exact) per iteration, by problem size.

    python -m benchmarks.bench_exact [--sizes 2x2,4x4,4x8,8x8] [--steps 20] [--out FILE.json]

For each W shape (m, n), d = mn, on a quadratic with 2d samples and 2 clients: the
time to build the maps (``setup_s``: the first call with iterations [0]) and the time
per iteration (``per_step_s``: (time of ``steps`` iterations - setup) / steps) of
Bernoulli-LoRA (p = 0.5, rank 1) with GD (Gaussian and column sketches), minibatch SGD
(b = d/2), PAGE, MARINA (Rand-k, k = d/4) and EF21 (unscaled Rand-k, k = d/4).
``state`` is the size of the propagated state (2d, plus 2d client states for EF21).
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import write_json
from experiments.problems import make_problem
from theory.exact import exact_moments

CASES = (
    ("gd-gaussian", "gaussian", lambda d: dict(name="gd")),
    ("gd-column", "column", lambda d: dict(name="gd")),
    ("sgd-batch", "gaussian", lambda d: dict(name="sgd", batch=max(1, d // 2))),
    ("page", "gaussian", lambda d: dict(name="page", batch=max(1, d // 2), q=0.2)),
    ("marina-randk", "gaussian", lambda d: dict(name="marina", q=0.2, compressor=dict(name="randk", k=max(1, d // 4)))),
    ("ef21-unscaled-randk", "gaussian",
     lambda d: dict(name="ef21", compressor=dict(name="randk", k=max(1, d // 4), scale=1.0))),
)


def _best(fn, repeat=3):
    """Shortest of ``repeat`` wall times of ``fn()`` (the machine is shared)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench(m, n, steps):
    d = m * n
    prob = make_problem("quadratic", m=m, n=n, mu=0.1, L=1.0, seed=0, n_samples=2 * d, n_clients=2)
    model = prob.exact_model()
    out = []
    for name, sketch, est in CASES:
        kw = dict(method="bernoulli_lora", p=0.5, rank=1, sketch=sketch, estimator=est(d), gamma=0.5)
        setup = _best(lambda: exact_moments(model, iterations=[0], **kw))
        total = _best(lambda: exact_moments(model, iterations=[steps], **kw))
        res = exact_moments(model, iterations=[steps], **kw)
        state = 2 * d + (2 * d if name.startswith("ef21") else 0)
        out.append(dict(case=name, m=m, n=n, d=d, state=state, setup_s=setup,
                        per_step_s=max(total - setup, 0.0) / steps, f_gap_at_steps=float(res["f_gap"][0])))
        print(f"{m}x{n} {name:22s} state {state:4d}  setup {setup:8.4f}s  per step {out[-1]['per_step_s']:.5f}s",
              flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2x2,4x4,4x8,8x8")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    with threadpool_limits(1):  # the propagation is small dense algebra: one BLAS thread
        for size in args.sizes.split(","):
            m, n = (int(x) for x in size.split("x"))
            rows.extend(bench(m, n, args.steps))
    report = dict(machine=platform.machine(), numpy=np.__version__, blas_threads=1, steps=args.steps, results=rows)
    if args.out:
        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
