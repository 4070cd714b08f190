r"""Exact expectations for a job on a quadratic problem (bridge to :mod:`theory.exact`).

``exact_expectations(problem, method_cfg, estimator_cfg, gamma, iterations, ...)`` reads
the problem's numbers (:meth:`experiments.problems.quadratic.Quadratic.exact_model`) and
the configuration groups, and returns :func:`theory.exact.exact_moments`'s dict.
``attach_exact(table, job, cfg)`` adds to a job's results table (one value per iteration,
the same for every seed):

* ``exact_<metric>`` for every metric of :data:`EXACT_METRICS`: the exact expectation of
  the engine's column ``<metric>``. The running averages are exact too, by linearity:
  :math:`\mathbb E\,\frac1T\sum_{t<T} X_t = \frac1T\sum_{t<T}\mathbb E X_t` (NaN at T = 0);
  the running minima are not (:math:`\mathbb E\min \ne \min\mathbb E`).
* ``exact`` and ``exact_metric``: the exact expectation of the row's ``bound_metric`` when
  it is one of :data:`EXACT_METRICS`, else of ``f_gap`` (what :mod:`theory.verify` tests
  the seeds' mean against: ``agrees`` / ``disagrees``);
* ``exact_status``: ``computed`` or ``not applicable: <why>``.
"""
from __future__ import annotations

import numpy as np

from theory.exact import METRICS, exact_moments

EXACT_METRICS = METRICS + ("avg_f_gap", "avg_grad_norm_sq")
EXACT_COLUMNS = tuple(f"exact_{m}" for m in EXACT_METRICS) + ("exact", "exact_metric", "exact_status")


def _compressor_spec(compressor, d):
    """The compressor as :func:`theory.exact.exact_moments` takes it: None (identity) or
    ``{'name': 'randk', 'k', 'scale'}``; ``scale`` d/k for the unbiased Rand-k, 1 for an
    unscaled one (a compressor object with ``scaled = False``)."""
    if compressor is None:
        return None
    name = getattr(compressor, "name", None) if not isinstance(compressor, dict) else compressor.get("name")
    get = compressor.get if isinstance(compressor, dict) else (lambda key, default=None: getattr(compressor, key, default))
    if name == "identity":
        return None
    if name != "randk":
        raise ValueError(f"compressor.name: exact expectations need a compressor linear given its draw "
                         f"(identity, randk), got {name!r}")
    k = get("k")
    return {"name": "randk", "k": k, "scale": d / k if get("scaled", True) else 1.0}


def exact_expectations(problem, method_cfg, estimator_cfg, gamma, iterations, *, sketch_cfg=None,
                       compressor=None):
    """Exact E[f - f*], E||grad f||^2, E||W - W*||^2 (and E[W] - W*) of a job on a quadratic.

    Parameters
    ----------
    problem : a quadratic problem (:mod:`experiments.problems.quadratic`).
    method_cfg : mapping with ``name`` ('fpft', 'bernoulli_lora') and ``p``, ``rank``.
    estimator_cfg : mapping with ``name`` and its parameters (as in the job configuration).
    gamma : float, the constant stepsize.
    iterations : iterable of ints.
    sketch_cfg : mapping with ``name`` (default gaussian).
    compressor : compressor object or config mapping (qgd, marina, ef21), None for identity.
    """
    if not hasattr(problem, "exact_model"):
        raise ValueError(f"problem.name: exact expectations need a quadratic problem, got "
                         f"{getattr(problem, 'name', problem)!r}")
    model = problem.exact_model()
    est = {k: v for k, v in dict(estimator_cfg).items() if v is not None}
    est["compressor"] = _compressor_spec(compressor, model.d)
    mc = dict(method_cfg)
    return exact_moments(model, method=mc["name"], estimator=est, gamma=float(gamma), iterations=iterations,
                         p=float(mc.get("p", 1.0)), rank=mc.get("rank", 1),
                         sketch=(sketch_cfg or {}).get("name", "gaussian"))


def applicable(job, cfg):
    """``None`` when the exact expectations apply to the job, else the reason (one line)."""
    if not hasattr(job.problem, "exact_model"):
        return f"not a quadratic problem ({cfg['problem']['name']})"
    if cfg["method"]["name"] not in ("fpft", "bernoulli_lora"):
        return f"method {cfg['method']['name']} is not affine in W"
    if (cfg.get("stepsize") or {}).get("rule", "constant") != "constant":
        return "the Polyak stepsize is not affine"
    if cfg["estimator"].get("transmit", "weights") != "weights":
        return "factor transmission is not covered"
    comp = getattr(job.estimator, "compressor", None)
    try:
        _compressor_spec(comp, job.problem.shape[0] * job.problem.shape[1])
    except ValueError:
        return f"compressor {getattr(comp, 'name', comp)} is not linear given its draw"
    return None


def exact_columns(job, cfg, iterations):
    """``{metric: values at iterations}`` for :data:`EXACT_METRICS` (the moments are
    propagated through every step up to the last iteration anyway)."""
    its = np.asarray(iterations, dtype=np.int64)
    res = exact_expectations(job.problem, cfg["method"], cfg["estimator"], job.gamma, range(int(its.max()) + 1),
                             sketch_cfg=cfg.get("sketch"), compressor=getattr(job.estimator, "compressor", None))
    out = {m: res[m][its] for m in METRICS}
    for m in ("f_gap", "grad_norm_sq"):
        running = np.concatenate([[np.nan], np.cumsum(res[m])[:-1] / np.arange(1, res[m].size)])
        out[f"avg_{m}"] = running[its]
    return out


def attach_exact(table, job, cfg):
    """Add :data:`EXACT_COLUMNS` to a job's table (module docstring)."""
    why = applicable(job, cfg)
    metric = table["bound_metric"] if "bound_metric" in table.columns else "f_gap"
    table["exact_metric"] = np.where(np.isin(metric, EXACT_METRICS), metric, "f_gap")
    if why is not None:
        for m in EXACT_METRICS:
            table[f"exact_{m}"] = np.nan
        table["exact"] = np.nan
        table["exact_status"] = f"not applicable: {why}"
        return table
    values = exact_columns(job, cfg, table["iteration"].to_numpy().astype(np.int64))
    for m in EXACT_METRICS:
        table[f"exact_{m}"] = values[m]
    pick, exact = table["exact_metric"].to_numpy(), np.full(len(table), np.nan)
    for m in EXACT_METRICS:
        exact[pick == m] = values[m][pick == m]
    table["exact"] = exact
    table["exact_status"] = "computed"
    return table
