"""Hydra-free batch entry point for the paper's sweeps (runs on a bare GPU machine).

    python -m experiments.sweep NAME [--size ci|paper] [--device auto|cpu|cuda]
                                [--seeds 20] [--steps N] [--out DIR] [--fast-cpu]

NAME is one of :data:`experiments.sweeps.SWEEPS`. The sweep expands into job
configurations of exactly the form the Hydra app builds, so the results (one
directory per job, ``results.parquet`` + ``config.yaml`` + completion marker,
same config hash) mix freely with Hydra sweeps, and ``collect``, ``verify`` and
``figures.make`` read them alike. Jobs already complete under ``--out`` are
skipped, so an interrupted sweep resumes by rerunning the same command.

For speed, jobs that differ only in p, stepsize factor and seeds are run as ONE
engine call with per-run p and stepsize (the gradient of all of them is then a
single GEMM); each run's numbers still depend only on its own seed and config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _group_key(cfg):
    c = json.loads(json.dumps(cfg, sort_keys=True, default=str))
    c["method"].pop("p", None)
    c.pop("stepsize", None)
    c.pop("seed", None)
    return json.dumps(c, sort_keys=True)


def run_group(cfgs, out_root, log=print):
    """Run configurations that differ only in p / stepsize factor / seed in one batch."""
    import torch

    from experiments.build import build_job
    from experiments.job import attach_bounds, trajectory_table
    from experiments.results import config_hash, write_job
    from solvers.engine import Trajectory, run
    from solvers.methods import BernoulliLoRA, FPFT

    jobs = [build_job(c) for c in cfgs]
    first = jobs[0]
    seeds, ps, gammas, owner = [], [], [], []
    for k, (cfg, job) in enumerate(zip(cfgs, jobs)):
        seeds += job.seeds
        ps += [float(cfg["method"].get("p", 1.0))] * len(job.seeds)
        gammas += [job.gamma] * len(job.seeds)
        owner += [k] * len(job.seeds)
    base = first.method
    if isinstance(base, BernoulliLoRA):
        method = BernoulliLoRA(p=tuple(ps), rank=base.rank, sketch=base.sketch, estimator=base.estimator,
                               stepsize=tuple(gammas))
    elif isinstance(base, FPFT):
        method = FPFT(estimator=base.estimator, stepsize=tuple(gammas))
    else:
        raise ValueError(f"sweep: cannot batch method {type(base).__name__}")
    cfg0 = cfgs[0]
    t0 = time.perf_counter()
    traj = run(method, first.problem, first.problem.W0, seeds, steps=cfg0["steps"], eval_every=cfg0["eval_every"],
               track_every_step=cfg0.get("track_every_step", True))
    wall = time.perf_counter() - t0
    owner = np.asarray(owner)
    for k, (cfg, job) in enumerate(zip(cfgs, jobs)):
        sel = owner == k
        sub = Trajectory(data={f: v[sel] for f, v in traj.data.items()}, seeds=traj.seeds[sel], W=traj.W[torch.as_tensor(sel)])
        h = config_hash(cfg)
        table = attach_bounds(trajectory_table(sub, job, cfg, h), job, cfg)
        table["group_wall_s"] = wall
        write_job(os.path.join(out_root, "jobs", h[:16]), table, cfg)
    log(f"  {len(cfgs)} jobs, {len(seeds)} runs, {cfg0['steps']} steps: {wall:.2f}s on {first.device}")
    return wall


def run_sweep(cfgs, out_root, log=print):
    from experiments.results import config_hash, find_complete

    todo = [c for c in cfgs if find_complete(out_root, config_hash(c)) is None]
    log(f"{len(cfgs)} jobs, {len(cfgs) - len(todo)} already complete under {out_root}")
    groups = {}
    for c in todo:
        groups.setdefault(_group_key(c), []).append(c)
    total = 0.0
    for cfgs_g in groups.values():
        total += run_group(cfgs_g, out_root, log=log)
    return total


def main(argv=None):
    from experiments.sweeps import SWEEPS

    ap = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(SWEEPS))
    ap.add_argument("--size", default="ci", choices=["ci", "paper"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--fast-cpu", action="store_true",
                    help="use one GEMM per contraction on CPU too (faster; batch-invariant only up to rounding)")
    args = ap.parse_args(argv)
    if args.fast_cpu:
        from solvers.linalg import set_invariant

        set_invariant(False)
    out = args.out or os.path.join("results", "sweeps", f"{args.name}_{args.size}")
    try:
        cfgs = SWEEPS[args.name](size=args.size, device=args.device, seeds=args.seeds, steps=args.steps)
        t0 = time.perf_counter()
        engine_s = run_sweep(cfgs, out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    summary = {"sweep": args.name, "size": args.size, "jobs": len(cfgs), "engine_s": engine_s, "wall_s": wall}
    try:
        import torch

        summary["device"] = torch.cuda.get_device_name() if cfgs and "cuda" in str(
            __import__("experiments.build", fromlist=["resolve_device"]).resolve_device(args.device)) else "cpu"
        summary["threads"] = torch.get_num_threads()
    except Exception:  # pragma: no cover - informational only
        pass
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sweep_timing.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
