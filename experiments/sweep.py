"""Hydra-free batch entry point for the paper's sweeps (runs on a bare GPU machine).

    python -m experiments.sweep NAME [--size ci|paper] [--device auto|cpu|cuda]
                                [--seeds N] [--steps N] [--set KEY=VALUE ...] [--out DIR] [--fast-cpu]

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
import dataclasses
import json
import os
import sys
import textwrap
import time

import numpy as np


def _group_key(cfg):
    """Jobs with equal keys differ only in method.p, stepsize.factor and seed."""
    c = json.loads(json.dumps(cfg, sort_keys=True, default=str))
    c["method"].pop("p", None)
    c["stepsize"].pop("factor", None)
    c.pop("seed", None)
    return json.dumps(c, sort_keys=True)


def _batched(jobs):
    """One method for the runs of all ``jobs`` (same configuration up to p, stepsize
    factor and seed): the first job's method with per-run p and stepsize, where
    each run's value is the one its own job's method has."""
    from solvers.methods import FPFT, BernoulliLoRA

    base = jobs[0].method
    steps = tuple(float(job.method.stepsize) for job in jobs for _ in job.seeds)
    if isinstance(base, BernoulliLoRA):
        ps = tuple(float(job.method.p) for job in jobs for _ in job.seeds)
        return dataclasses.replace(base, p=ps, stepsize=steps)
    if isinstance(base, FPFT):
        return dataclasses.replace(base, stepsize=steps)
    raise ValueError(f"method: the batched sweep runs bernoulli_lora and fpft only, not {base.name}")


def run_group(cfgs, jobs, out_root, log=print):
    """Run configurations that differ only in p / stepsize factor / seed (built into
    ``jobs`` by :func:`experiments.build.build_job`) as one engine call, and write
    each job's table exactly as the Hydra app's :func:`experiments.job.execute` does."""
    import torch

    from experiments.job import engine_options, tabulate
    from experiments.results import config_hash, write_job
    from solvers.engine import Trajectory, run

    first, cfg0 = jobs[0], cfgs[0]
    method = _batched(jobs)
    seeds = [s for job in jobs for s in job.seeds]
    owner = np.repeat(np.arange(len(jobs)), [len(job.seeds) for job in jobs])
    t0 = time.perf_counter()
    traj = run(method, first.problem, first.problem.W0, seeds, steps=cfg0["steps"], eval_every=cfg0["eval_every"],
               track_every_step=cfg0["track_every_step"], **engine_options(cfg0))
    wall = time.perf_counter() - t0
    for k, (cfg, job) in enumerate(zip(cfgs, jobs)):
        sel = owner == k
        sub = Trajectory(data={f: v[sel] for f, v in traj.data.items()}, seeds=traj.seeds[sel], W=traj.W[torch.as_tensor(sel)])
        h = config_hash(cfg)
        table = tabulate(sub, job, cfg, h)
        write_job(os.path.join(out_root, "jobs", h[:16]), table, cfg)
    log(f"  {len(cfgs)} jobs, {len(seeds)} runs, {cfg0['steps']} steps: {wall:.2f}s on {first.device}")
    return wall


def run_sweep(cfgs, out_root, log=print):
    """Run the jobs of ``cfgs`` not yet complete under ``out_root``, batched by
    :func:`_group_key`. Every configuration is checked and built before any runs
    (a bad one is refused with one line, and nothing is written). Each job is
    claimed (:mod:`experiments.claims`) before its group runs, exactly as the Hydra
    app claims it, so a Hydra sweep or a second batched sweep into the same root
    never runs it twice; a job claimed by a live process is left to it."""
    import contextlib

    from experiments.build import build_job
    from experiments.claims import try_claim
    from experiments.results import config_hash, find_complete
    from experiments.storage import remove_stale_temps

    jobs = [build_job(c) for c in cfgs]
    todo = [(c, j) for c, j in zip(cfgs, jobs) if find_complete(out_root, config_hash(c)) is None]
    log(f"{len(cfgs)} jobs, {len(cfgs) - len(todo)} already complete under {out_root}")
    groups = {}
    for c, j in todo:
        groups.setdefault(_group_key(c), []).append((c, j))
    for members in groups.values():
        _batched([j for _, j in members])  # refuses a method it cannot batch, before any run
    if os.path.isdir(out_root):
        remove_stale_temps(out_root)
    total = 0.0
    for members in groups.values():
        with contextlib.ExitStack() as held:
            mine = []
            for c, j in members:
                h = config_hash(c)
                claim = try_claim(out_root, h, out_dir=os.path.join(out_root, "jobs", h[:16]))
                if claim is None:
                    log(f"  skipped: config {h[:12]} is being run by another process")
                    continue
                held.enter_context(claim)
                if find_complete(out_root, h) is None:  # finished while we were claiming it
                    mine.append((c, j))
            if mine:
                total += run_group([c for c, _ in mine], [j for _, j in mine], out_root, log=log)
    return total


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m experiments.sweep`` (every option says its default)."""
    from experiments.sweeps import SEEDS, SWEEPS

    epilog = "sweeps:\n" + "\n".join(textwrap.fill(f"{name}: {' '.join(fn.__doc__.split())}", 79, initial_indent="  ",
                                                   subsequent_indent="    ") for name, fn in sorted(SWEEPS.items()))
    ap = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0],
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(SWEEPS), help="the sweep to run (described below)")
    ap.add_argument("--size", default="ci", choices=sorted(SEEDS),
                    help="ci: small sizes that run in seconds; paper: the paper's set-up (default: ci)")
    ap.add_argument("--device", default="auto",
                    help="auto (cuda when available), cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="runs per job, seeds 0..SEEDS-1 (default: "
                         + ", ".join(f"{n} for --size {k}" for k, n in SEEDS.items()) + ")")
    ap.add_argument("--steps", type=int, default=None,
                    help="iterations per run (default: the sweep's own, given below for each sweep)")
    ap.add_argument("--out", default=None,
                    help="sweep root: one folder per job below it; complete jobs there are skipped "
                         "(default: results/sweeps/NAME_SIZE)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="set a configuration key of every job, as a Hydra override would (repeatable; "
                         "VALUE read as YAML), e.g. --set problem.variant=authors (default: none)")
    ap.add_argument("--fast-cpu", action="store_true",
                    help="use one GEMM per contraction on CPU too (faster; batch-invariant only up to "
                         "rounding) (default: off)")
    return ap


def parse_sets(items) -> dict:
    """``['a.b=1', ...]`` -> ``{'a.b': 1, ...}`` (values read as YAML); one line naming
    the option for an item without ``=``."""
    import yaml

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv=None):
    from experiments.conf.schema import set_key
    from experiments.sweeps import SWEEPS

    args = parser().parse_args(argv)
    if args.fast_cpu:
        from solvers.linalg import set_invariant

        set_invariant(False)
    out = os.path.join("results", "sweeps", f"{args.name}_{args.size}") if args.out is None else args.out
    try:
        cfgs = SWEEPS[args.name](size=args.size, device=args.device, seeds=args.seeds, steps=args.steps)
        overrides = parse_sets(args.set)
        for cfg in cfgs:
            for key, value in overrides.items():
                set_key(cfg, key, value)
        t0 = time.perf_counter()
        engine_s = run_sweep(cfgs, out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    summary = {"sweep": args.name, "size": args.size, "jobs": len(cfgs), "engine_s": engine_s, "wall_s": wall}
    if overrides:
        summary["set"] = overrides
    try:
        import torch

        from experiments.build import resolve_device

        device = resolve_device(args.device)
        summary["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
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
