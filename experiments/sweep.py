"""Hydra-free batched entry point: the jobs of the Hydra presets, many in one engine call.

    python -m experiments.sweep [PRESET ...] [KEY=VALUE ...] [--out DIR] [--list] [--fast-cpu]

runs, for each PRESET, exactly the jobs of ``python -m experiments.run -m
experiment=PRESET KEY=VALUE ...`` (the same configurations, config hashes and
tables; :mod:`experiments.presets` expands the preset as Hydra does, tested
against Hydra on every preset), e.g. ``python -m experiments.sweep linreg_gd
linreg_gd_fpft size=paper device=cuda``. Without a PRESET, the overrides alone
(``experiment=NAME`` among them) are expanded. The results (one directory per
job, ``results.parquet`` + ``config.yaml`` + completion marker with the job's
overrides) mix freely with Hydra sweeps: a job complete under ``--out``, whichever
path ran it, is skipped, so an interrupted sweep resumes by rerunning the same
command, and ``collect``, ``verify`` and ``figures.make`` read them alike.

For speed, jobs that differ only in p, stepsize factor and seeds are run as ONE
engine call with per-run p and stepsize (the gradient of all of them is then a
single GEMM); each run's numbers still depend only on its own seed and config.
Methods without per-run parameters (LoRA, COLA, ...) run one job at a time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np


def _group_key(cfg, job):
    """Jobs with equal keys differ only in method.p, stepsize.factor and seed, and are
    run as one engine call; a method without per-run parameters is a group of its own."""
    from experiments.results import config_hash

    if _batched([job]) is None:
        return config_hash(cfg)
    c = json.loads(json.dumps(cfg, sort_keys=True, default=str))
    c["method"].pop("p", None)
    c["stepsize"].pop("factor", None)
    c.pop("seed", None)
    return json.dumps(c, sort_keys=True)


def _batched(jobs):
    """One method for the runs of all ``jobs`` (same configuration up to p, stepsize
    factor and seed): the first job's method with per-run p and stepsize, where
    each run's value is the one its own job's method has; None for a method that
    takes no per-run parameters."""
    from solvers.methods import FPFT, BernoulliLoRA

    base = jobs[0].method
    steps = tuple(float(job.method.stepsize) for job in jobs for _ in job.seeds)
    if isinstance(base, BernoulliLoRA):
        ps = tuple(float(job.method.p) for job in jobs for _ in job.seeds)
        return dataclasses.replace(base, p=ps, stepsize=steps)
    if isinstance(base, FPFT):
        return dataclasses.replace(base, stepsize=steps)
    return None


def run_group(cfgs, jobs, out_root, log=print, overrides=None):
    """Run configurations that differ only in p / stepsize factor / seed (built into
    ``jobs`` by :func:`experiments.build.build_job`) as one engine call, and write
    each job's table exactly as the Hydra app's :func:`experiments.job.execute` does,
    with the job's override list (``overrides[k]``, when given) in its marker."""
    import torch

    from experiments.job import engine_options, tabulate
    from experiments.results import config_hash, write_job
    from solvers.engine import Trajectory, run

    first, cfg0 = jobs[0], cfgs[0]
    method = _batched(jobs) if len(jobs) > 1 else first.method
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
        write_job(os.path.join(out_root, "jobs", h[:16]), table, cfg,
                  overrides=None if overrides is None else overrides[k])
    log(f"  {len(cfgs)} jobs, {len(seeds)} runs, {cfg0['steps']} steps: {wall:.2f}s on {first.device}")
    return wall


def run_sweep(cfgs, out_root, log=print, overrides=None):
    """Run the jobs of ``cfgs`` not yet complete under ``out_root``, batched by
    :func:`_group_key`. Every configuration is checked and built before any runs
    (a bad one is refused with one line, and nothing is written). Each job is
    claimed (:mod:`experiments.claims`) before its group runs, exactly as the Hydra
    app claims it, so a Hydra sweep or a second batched sweep into the same root
    never runs it twice; a job claimed by a live process is left to it.
    ``overrides``: each job's override list, recorded in its completion marker."""
    import contextlib

    from experiments.build import build_job
    from experiments.claims import find_recorded, try_claim
    from experiments.results import complete_hashes, config_hash, find_complete
    from experiments.storage import remove_stale_temps

    def complete(h):  # complete under out_root, or recorded there by a Hydra job written elsewhere
        return find_complete(out_root, h) is not None or find_recorded(out_root, h) is not None

    overrides = [None] * len(cfgs) if overrides is None else list(overrides)
    jobs = [build_job(c) for c in cfgs]
    done = complete_hashes(out_root)
    todo = [(c, j, o) for c, j, o in zip(cfgs, jobs, overrides)
            if config_hash(c) not in done and find_recorded(out_root, config_hash(c)) is None]
    log(f"{len(cfgs)} jobs, {len(cfgs) - len(todo)} already complete under {out_root}")
    groups = {}
    for c, j, o in todo:
        groups.setdefault(_group_key(c, j), []).append((c, j, o))
    if os.path.isdir(out_root):
        remove_stale_temps(out_root)
    total = 0.0
    for members in groups.values():
        with contextlib.ExitStack() as held:
            mine = []
            for c, j, o in members:
                h = config_hash(c)
                claim = try_claim(out_root, h, out_dir=os.path.join(out_root, "jobs", h[:16]))
                if claim is None:
                    log(f"  skipped: config {h[:12]} is being run by another process")
                    continue
                held.enter_context(claim)
                if not complete(h):  # finished while we were claiming it
                    mine.append((c, j, o))
            if mine:
                total += run_group([c for c, _, _ in mine], [j for _, j, _ in mine], out_root, log=log,
                                   overrides=[o for _, _, o in mine])
    return total


def expand_command(items) -> list[tuple[dict, list[str]]]:
    """The jobs of the command line's PRESETs and KEY=VALUE overrides (see the module
    docstring): (configuration, override list) pairs, a job named twice once."""
    from experiments.presets import PRESET_GROUP, expand
    from experiments.results import config_hash

    presets = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if presets and any(o.split("=", 1)[0].strip() == PRESET_GROUP for o in overrides):
        raise ValueError(f"{PRESET_GROUP}: give the presets as PRESET names or as one experiment=NAME, not both")
    runs = [[f"{PRESET_GROUP}={p}", *overrides] for p in presets] or [overrides]
    jobs, seen = [], set()
    for run in runs:
        for cfg, ov in expand(run):
            h = config_hash(cfg)
            if h not in seen:
                seen.add(h)
                jobs.append((cfg, ov))
    return jobs


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m experiments.sweep`` (every option says its default)."""
    from experiments.presets import preset_names

    def first_line(name):
        from experiments.presets import CONF_DIR, PRESET_GROUP

        lines = (CONF_DIR / PRESET_GROUP / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
        text = next((ln.lstrip("# ").strip() for ln in lines[1:] if ln.startswith("#")), "")
        return text[:60] + ("..." if len(text) > 60 else "")

    epilog = "presets (experiments/conf/experiment):\n" + "\n".join(
        f"  {name}: {first_line(name)}" for name in preset_names())
    ap = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0],
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("items", nargs="*", metavar="PRESET|KEY=VALUE",
                    help="presets to run (each as `experiment=PRESET`) and Hydra overrides given to every job, "
                         "e.g. size=paper device=cuda problem.variant=authors seeds=5 method.p=0.1,0.5 "
                         "(default: none: the default job)")
    ap.add_argument("--out", default=None,
                    help="sweep root: one folder per job below it; complete jobs there are skipped "
                         "(default: results/sweeps/PRESET_SIZE)")
    ap.add_argument("--list", action="store_true",
                    help="print each job's config hash and overrides, run nothing (default: off)")
    ap.add_argument("--fast-cpu", action="store_true",
                    help="fast mode on CPU too: one GEMM per contraction, and for the quadratics the numpy "
                         "iteration of solvers/lean.py (faster; last bits differ from the default and between "
                         "batch sizes; the results' kernels column says 'fast') (default: off)")
    return ap


def main(argv=None):
    from experiments.results import config_hash

    args = parser().parse_args(argv)
    if args.fast_cpu:
        from solvers.linalg import set_invariant

        set_invariant(False)
    presets = [i for i in args.items if "=" not in i]
    try:
        pairs = expand_command(args.items)
        cfgs, overrides = [c for c, _ in pairs], [o for _, o in pairs]
        if args.list:
            for c, o in pairs:
                print(config_hash(c)[:16], " ".join(o))
            return 0
        name = "+".join(presets) or "jobs"
        out = os.path.join("results", "sweeps", f"{name}_{cfgs[0]['size']}") if args.out is None else args.out
        t0 = time.perf_counter()
        engine_s = run_sweep(cfgs, out, overrides=overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    summary = {"presets": presets, "overrides": [i for i in args.items if "=" in i], "jobs": len(cfgs),
               "engine_s": engine_s, "wall_s": wall}
    try:
        import torch

        from experiments.build import resolve_device

        device = resolve_device(cfgs[0]["device"])
        summary["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        summary["threads"] = torch.get_num_threads()
    except Exception:  # pragma: no cover - informational only
        pass
    from resultstore.files import atomic_write, text_writer

    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "sweep_timing.json"), text_writer(json.dumps(summary, indent=2)))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
