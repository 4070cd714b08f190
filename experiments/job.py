"""One job: a configuration with all its seeds batched -> a results table.

``run_job(cfg, out_dir, results_root=...)`` skips the job when a complete result
with the same config hash exists, claims it (so that two sweeps never run it
twice), validates and builds it, runs the engine, attaches to every row the
bound of the matching theorem (:func:`theory.dispatch.bound_for`, from the
problem's own constants), and writes ``results.parquet`` and ``config.yaml``
atomically.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.build import build_job
from experiments.exact import attach_exact
from solvers.engine import FIELDS, run
from solvers.linalg import one_thread

log = logging.getLogger(__name__)

NAN = float("nan")


def _f(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return NAN
    return x


def theory_constants(job, cfg=None):
    """The numbers the bounds need (:class:`theory.dispatch.Constants`), NaN where
    unknown: the problem's constants, the method's lambda^p, and what the built
    estimator (and method) report of themselves (``theory_constants(problem)``).
    ``cfg`` is not needed (the built objects carry their configuration)."""
    from theory.dispatch import Constants

    prob, est = job.problem, job.estimator
    W0 = prob.W0[None]
    f0 = float(prob.loss(W0)[0])
    grad = getattr(prob, "grad", None)  # non-smooth problems have subgradients only
    grad0_sq = float((grad(W0) ** 2).sum()) if callable(grad) else NAN
    f_star, f_inf = _f(getattr(prob, "f_star", NAN)), _f(getattr(prob, "f_inf", NAN))
    if math.isnan(f_inf):
        f_inf = f_star
    W_star = getattr(prob, "W_star", None)
    dist0 = float(((prob.W0 - W_star) ** 2).sum()) if W_star is not None else NAN
    own = dict(est.theory_constants(prob)) if hasattr(est, "theory_constants") else {}
    if hasattr(job.method, "theory_constants"):
        own.update(job.method.theory_constants(prob))
    own = {k: _f(v) for k, v in own.items()}
    return Constants(**{
        "L": _f(getattr(prob, "L", NAN)), "mu": _f(getattr(prob, "mu", NAN)), "L_avg": _f(getattr(prob, "L_avg", NAN)),
        "L_max": _f(getattr(prob, "L_max", NAN)), "L0": _f(getattr(prob, "L0", NAN)),
        "f0_gap": f0 - f_star, "grad0_sq": grad0_sq, "delta0": f0 - f_inf, "dist0_sq": dist0,
        "lmin_p": job.lmin_p, "lmax_p": job.lmax_p, "n_samples": _f(getattr(prob, "n_samples", NAN)),
        "n_clients": _f(getattr(prob, "n_clients", NAN)), "delta_inf": _f(getattr(prob, "delta_inf", NAN)),
        **own})


def attach_bounds(table: pd.DataFrame, job, cfg) -> pd.DataFrame:
    """Columns ``bound``, ``bound_metric``, ``bound_status``: the bound of the theorem
    the estimator names (its ``theorem`` in :mod:`solvers.registry`), for the method
    (:data:`theory.dispatch.METHODS`), from :func:`theory_constants` of the built job
    (``cfg`` gives only the components' names)."""
    from solvers import registry
    from theory.dispatch import bound_for

    why = getattr(job.problem, "no_theorem", None)
    variant = registry.spec("estimator", cfg["estimator"]["name"]).theorem
    if variant is None and not why:
        why = f"no theorem registered for estimator {cfg['estimator']['name']}"
    if why:
        table["bound"], table["bound_metric"] = NAN, "none"
        table["bound_status"] = f"not applicable: {why}"
        return table
    c = theory_constants(job)
    its = table["iteration"].to_numpy()
    res = bound_for(variant, iterations=its, gamma=job.gamma, stepsize_rule=job.stepsize_rule, c=c,
                    method=cfg["method"]["name"], polyak_factor=job.stepsize_factor)
    table["bound"] = np.asarray(res.values, dtype=float) * np.ones(len(table))
    table["bound_metric"] = res.metric
    table["bound_status"] = res.status
    return table


def trajectory_table(traj, job, cfg, config_hash) -> pd.DataFrame:
    """The results table of one job: one row per (run, evaluation point).

    Columns: every key of the job's configuration
    (:func:`experiments.conf.check.config_columns`: ``problem``, ``problem_L``,
    ``method``, ``p``, ``rank``, ``estimator``, ``estimator_batch``, ``sketch``,
    ``compressor``, ``compressor_k``, ``stepsize_rule``, ``stepsize_factor``,
    ``steps``, ...), then the engine's measurements (:data:`solvers.engine.FIELDS`)
    and the run's ``seed``, then what the job derived from its configuration:
    ``gamma`` (the stepsize used), ``lambda_min_p``, ``lambda_max_p``, the
    problem's shape ``m``, ``n``, the ``device``, the ``kernels`` (``'invariant'`` or
    ``'fast'``: :func:`solvers.linalg.kernels`, whose last bits differ) and the ``config_hash``.
    """
    from experiments.conf.check import config_columns
    from solvers.linalg import kernels

    R, P = traj["iteration"].shape
    conf = config_columns(cfg)
    derived = {"seed": np.repeat(traj.seeds, P), "gamma": job.gamma, "lambda_min_p": job.lmin_p,
               "lambda_max_p": job.lmax_p, "m": job.problem.shape[0], "n": job.problem.shape[1],
               "device": str(job.device), "kernels": kernels(job.device), "config_hash": config_hash}
    clash = (set(conf) & (set(FIELDS) | set(derived))) | (set(FIELDS) & set(derived))
    if clash:
        raise AssertionError(f"results columns named twice: {sorted(clash)}")
    cols = {f: traj[f].reshape(-1) for f in FIELDS}
    cols["diverged"] = cols["diverged"].astype(bool)
    table = pd.DataFrame(cols)
    for i, (name, value) in enumerate(conf.items()):
        table.insert(i, name, value)
    for name, value in derived.items():
        table[name] = value
    return table


def engine_options(cfg) -> dict:
    """The engine's keyword arguments from the job's settings that do not change the
    numbers: ``graph`` (:mod:`solvers.fused`); ``compile_rng`` is applied here
    (:func:`solvers.rng.set_compile`, process-wide)."""
    from solvers import rng

    rng.set_compile(bool(cfg.get("compile_rng", False)))
    return {"graph": cfg.get("graph", "auto")}


def execute(cfg, *, progress=None, job=None):
    """Build (unless ``job`` is given), run and tabulate one job (no file I/O).
    Returns (table, job)."""
    from experiments.results import config_hash as make_hash

    job = build_job(cfg) if job is None else job
    h = make_hash(cfg)
    t0 = time.perf_counter()
    traj = run(job.method, job.problem, job.problem.W0, job.seeds, steps=cfg["steps"],
               eval_every=cfg["eval_every"], track_every_step=cfg.get("track_every_step", True), progress=progress,
               **engine_options(cfg))
    log.info("ran %d seeds x %d steps in %.2fs on %s", len(job.seeds), cfg["steps"], time.perf_counter() - t0, job.device)
    return tabulate(traj, job, cfg, h), job


def tabulate(traj, job, cfg, config_hash) -> pd.DataFrame:
    """The results table of one job's trajectory: its rows and configuration
    columns, the bound of its theorem and, where computable, the exact expectation.
    The one place both the Hydra app and the batched sweep make a job's table."""
    table = trajectory_table(traj, job, cfg, config_hash)
    with one_thread():  # the theorems' constants and exact expectations use LAPACK (solvers.linalg)
        table = attach_bounds(table, job, cfg)
        return attach_exact(table, job, cfg)


@dataclass
class Outcome:
    """What :func:`run_job` did: ``status`` is ``"ran"`` (``table``, ``seconds``),
    ``"skipped"`` (complete result at ``where``) or ``"claimed"`` (a live process
    runs it: ``holder`` = its pid, host, start time and output folder)."""

    status: str
    config_hash: str
    table: pd.DataFrame | None = None
    seconds: float = NAN
    where: Path | None = None
    holder: dict | None = None


def _complete_result(root, h, out_dir):
    from experiments.claims import find_recorded
    from experiments.results import find_complete, is_complete

    if is_complete(out_dir, h):
        return Path(out_dir)
    if root is None:
        return None
    return find_complete(root, h) or find_recorded(root, h)


def run_job(cfg, out_dir, *, results_root=None, progress=None, dir_field="out_dir", overrides=None) -> Outcome:
    """Run one job into ``out_dir`` unless a complete result with the same config
    hash exists (in ``out_dir``, under ``results_root``, or recorded there).

    With ``results_root``: leftover temporary files under it are removed first
    (:func:`experiments.storage.remove_stale_temps`), the job is claimed
    atomically before it runs (:mod:`experiments.claims`; a job claimed by a live
    process is not run twice), and a result written outside ``results_root`` is
    recorded there so that later sweeps find it. ``overrides`` (the job's override
    list) is kept in its completion marker.

    Raises
    ------
    ValueError
        A bad configuration or ``results_root``, or ``out_dir`` already holds
        another job's files (message ``"<dir_field>: ..."``).
    OSError
        The results cannot be written (see :func:`experiments.storage.is_storage_error`).
    """
    from experiments.claims import holder, record_location, try_claim
    from experiments.conf.check import check_config
    from experiments.results import JOB_FILES
    from experiments.results import config_hash as make_hash
    from experiments.results import write_job
    from experiments.storage import check_results_root, remove_stale_temps

    check_config(cfg)  # a refused configuration is never "skipped" as complete
    h = make_hash(cfg)
    root = check_results_root(results_root) if results_root is not None else None
    done = _complete_result(root, h, out_dir)
    if done is not None:
        return Outcome("skipped", h, where=done)
    job = build_job(cfg)  # refuses a bad value before anything is written
    if root is not None and root.is_dir():
        removed = remove_stale_temps(root)
        if removed:
            log.info("removed %d leftover temporary file(s) under %s", len(removed), root)
    taken = [n for n in JOB_FILES if (Path(out_dir) / n).exists()]
    if taken:
        raise ValueError(f"{dir_field}: {out_dir} already holds another job's {taken[0]}; "
                         "name a new folder (nothing was overwritten)")
    claim = try_claim(root, h, out_dir=out_dir) if root is not None else contextlib.nullcontext()
    if claim is None:
        return Outcome("claimed", h, holder=holder(root, h))
    with claim:
        done = _complete_result(root, h, out_dir)  # finished while we were claiming it
        if done is not None:
            return Outcome("skipped", h, where=done)
        t0 = time.perf_counter()
        table, _ = execute(cfg, progress=progress, job=job)
        write_job(out_dir, table, dict(cfg), overrides=overrides)
        if root is not None:
            record_location(root, h, out_dir)
    log.info("results: %s/results.parquet (%d rows)", out_dir, len(table))
    return Outcome("ran", h, table=table, seconds=time.perf_counter() - t0)
