r"""Exact expectations for a job on a quadratic problem (bridge to :mod:`theory.exact`).

``exact_for_method(problem, method, iterations)`` reads the problem's numbers
(:meth:`experiments.problems.quadratic.Quadratic.exact_model`) and the solver's method
object (its estimator, sketch, p, rank, stepsize: the very object a job runs), and returns
:func:`theory.exact.exact_moments`'s dict; ``exact_expectations(problem, method_cfg,
estimator_cfg, gamma, iterations, ...)`` does the same from configuration groups.
``attach_exact(table, job, cfg)`` adds to a job's results table (one value per iteration,
the same for every seed):

* ``exact_<metric>`` for every metric of :data:`EXACT_METRICS`: the exact expectation of
  the engine's column ``<metric>``. The running averages are exact too, by linearity:
  :math:`\mathbb E\,\frac1T\sum_{t<T} X_t = \frac1T\sum_{t<T}\mathbb E X_t` (NaN at T = 0);
  the running minima are not (:math:`\mathbb E\min \ne \min\mathbb E`).
* ``exact`` and ``exact_metric``: the exact expectation of the row's ``bound_metric`` when
  it is one of :data:`EXACT_METRICS`, else of ``f_gap`` (what :mod:`theory.verify` tests
  the seeds' mean against: ``agrees`` / ``disagrees``);
* ``exact_bounded``: the exact value of the quantity the row's bound bounds: the
  expectation for the metrics above, and :math:`\min_{t<T}\mathbb E X_t` for the running
  minima (``min_f_gap``, ``min_grad_norm_sq``: the theorems bound the minimum of the
  expectations). ``bound >= exact_bounded`` is then a check of the theorem with no
  sampling error at all;
* ``exact_status``: ``computed`` or ``not applicable: <why>``.
"""
from __future__ import annotations

import numpy as np

from solvers.sketches import make_sketch
from theory.exact import METRICS, check_size, exact_moments

EXACT_METRICS = METRICS + ("avg_f_gap", "avg_grad_norm_sq")
MIN_METRICS = ("min_f_gap", "min_grad_norm_sq")
EXACT_COLUMNS = tuple(f"exact_{m}" for m in EXACT_METRICS) + ("exact", "exact_metric", "exact_bounded",
                                                              "exact_status")


def _compressor_spec(compressor, d):
    """The compressor object as :func:`theory.exact.exact_moments` takes it: None (identity)
    or ``{'name': 'randk', 'k', 'scale'}``, ``scale`` d/k for the solvers' unbiased Rand-k,
    1 for an unscaled one (``randk_unscaled``, or any object with ``scaled = False``); others pass their name on
    (theory refuses them)."""
    name = getattr(compressor, "name", None)
    if compressor is None or name == "identity":
        return None
    if name not in ("randk", "randk_unscaled"):
        return {"name": name}
    k = compressor.k
    return {"name": "randk", "k": k, "scale": d / k if getattr(compressor, "scaled", True) else 1.0}


def _name(obj):
    return obj if isinstance(obj, str) else getattr(obj, "name", type(obj).__name__)


def _estimator_spec(est, problem):
    """The estimator object's parameters as :func:`theory.exact.exact_moments` takes them
    (the solver's own defaults resolved, e.g. PAGE's q for the problem's N)."""
    spec = {"name": est.name}
    for key in ("batch", "noise", "momentum", "init_with", "q"):
        if getattr(est, key, None) is not None:
            spec[key] = getattr(est, key)
    if est.name == "page":
        spec["q"] = est.prob(problem.n_samples) if problem.n_samples else est.q
    if getattr(est, "transmit", "weights") != "weights":
        raise ValueError("estimator.transmit: exact expectations cover weight transmission only")
    if hasattr(est, "compressor"):
        spec["compressor"] = _compressor_spec(est.compressor, problem.shape[0] * problem.shape[1])
    return spec


def exact_for_method(problem, method, iterations):
    """Exact expectations of the solver's ``method`` object (FPFT, or Bernoulli-LoRA with its
    p, rank, sketch, estimator and constant stepsize) on ``problem`` at ``iterations``:
    :func:`theory.exact.exact_moments`'s dict."""
    if not hasattr(problem, "exact_model"):
        raise ValueError(f"problem.name: exact expectations need a quadratic problem, got {_name(problem)!r}")
    check_size(problem.shape)  # before forming the Hessian of a large isotropic problem
    if getattr(method, "stepsize_rule", "constant") != "constant":
        raise ValueError("stepsize.rule: exact expectations need the constant stepsize (Polyak's is not affine)")
    if not isinstance(method.stepsize, (int, float)) or not isinstance(getattr(method, "p", 0.0), (int, float)):
        raise ValueError("stepsize: exact expectations take one stepsize and one p for all runs")
    # the sketch object the method draws from (make_sketch resolves a name as the method does):
    # a weighted column sketch's moments, with its decays, come from the object itself
    kw = dict(p=float(method.p), rank=method.rank, sketch=make_sketch(method.sketch)) \
        if method.name == "bernoulli_lora" else {}
    return exact_moments(problem.exact_model(), method=method.name, gamma=float(method.stepsize),
                         estimator=_estimator_spec(method.estimator, problem), iterations=iterations, **kw)


def exact_expectations(problem, method_cfg, estimator_cfg, gamma, iterations, *, sketch_cfg=None,
                       compressor_cfg=None):
    """Exact E[f - f*], E||grad f||^2, E||W - W*||^2 (and E[W] - W*) of a configuration on a
    quadratic: the groups ``method``, ``estimator``, ``sketch``, ``compressor`` of a job's
    configuration, built into the solvers' objects by the suite's own builders (so their
    defaults apply), then :func:`exact_for_method`."""
    from experiments.build import build_estimator
    from solvers.methods import make_method

    est = build_estimator({"estimator": dict(estimator_cfg), "compressor": compressor_cfg}, problem)
    mc = {k: v for k, v in dict(method_cfg).items() if v is not None}
    name = mc.pop("name")
    if name == "bernoulli_lora":
        sk = {k: v for k, v in dict(sketch_cfg or {}).items() if v is not None}  # its keys are its parameters
        mc["sketch"] = make_sketch(sk.pop("name", "gaussian"), **sk)
    method = make_method(name, estimator=est, stepsize=float(gamma),
                         **{k: v for k, v in mc.items() if k in ("p", "rank", "sketch")})
    return exact_for_method(problem, method, iterations)


def exact_columns(job, iterations):
    """``{metric: values at iterations}`` for :data:`EXACT_METRICS` and, under the names of
    :data:`MIN_METRICS`, :math:`\\min_{t<T}\\mathbb E X_t` (NaN at T = 0). The moments are
    propagated through every step up to the last iteration anyway."""
    its = np.asarray(iterations, dtype=np.int64)
    res = exact_for_method(job.problem, job.method, range(int(its.max()) + 1))
    out = {m: res[m][its] for m in METRICS}
    for m in ("f_gap", "grad_norm_sq"):
        running = np.concatenate([[np.nan], np.cumsum(res[m])[:-1] / np.arange(1, res[m].size)])
        out[f"avg_{m}"] = running[its]
        out[f"min_{m}"] = np.concatenate([[np.nan], np.minimum.accumulate(res[m])[:-1]])[its]
    return out


def attach_exact(table, job, cfg=None):
    """Add :data:`EXACT_COLUMNS` to a job's table (module docstring). Where the exact
    expectations do not apply, the refusal's one line is the reason in ``exact_status``."""
    metric = table["bound_metric"].to_numpy() if "bound_metric" in table.columns else np.full(len(table), "f_gap")
    table["exact_metric"] = np.where(np.isin(metric, EXACT_METRICS), metric, "f_gap")
    try:
        values = exact_columns(job, table["iteration"].to_numpy().astype(np.int64))
    except ValueError as exc:
        for col in EXACT_COLUMNS:
            if col not in ("exact_metric", "exact_status"):
                table[col] = np.nan
        table["exact_status"] = f"not applicable: {exc}"
        return table
    for m in EXACT_METRICS:
        table[f"exact_{m}"] = values[m]
    pick = table["exact_metric"].to_numpy()
    exact, bounded = np.full(len(table), np.nan), np.full(len(table), np.nan)
    for m in EXACT_METRICS + MIN_METRICS:
        if m in EXACT_METRICS:
            exact[pick == m] = values[m][pick == m]
        bounded[metric == m] = values[m][metric == m]
    table["exact"], table["exact_bounded"] = exact, bounded
    table["exact_status"] = "computed"
    return table
