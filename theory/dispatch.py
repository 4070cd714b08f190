r"""One entry point from a run's configuration to the bound of its theorem.

:func:`bound_for` picks the theorem of docs/theory.md that matches the gradient
estimator (``variant``), the stepsize rule and the constants that are known,
checks the stepsize against the admissible one, and evaluates the bound at the
given iteration counts. The runner attaches the result to every row of a
results table (columns ``bound``, ``bound_metric``, ``bound_status``), and
:func:`theory.verify.verify` compares the measured column named by the metric
with it.

Choice of theorem (first that applies):

=============  ==========================================================  ======================
variant        theorem (function of :mod:`theory.bounds`)                  metric
=============  ==========================================================  ======================
gd             PL if mu and f0_gap known: ``gd_pl``; else ``gd_nonconvex``  f_gap / avg_grad_norm_sq
sgd            sigma2 known: ``sgd_pl`` (mu known) or ``sgd_nonconvex``;    f_gap / avg_grad_norm_sq
               else ABC (A, B, C given, or the minibatch constants from
               L_max, batch, n_samples, delta_inf): ``sgd_abc_nonconvex``   min_grad_norm_sq
page           PL if mu, f0_gap known and gamma admissible: ``page_pl``;   f_gap /
               else ``page_nonconvex`` (q defaults to b/(b+N))              avg_grad_norm_sq
mvr            ``mvr_pl`` (as page), else ``mvr_nonconvex``                 f_gap / avg_grad_norm_sq
qgd            ``qgd_pl`` (as page), else ``qgd_nonconvex`` (or ABC with    f_gap / min_grad_norm_sq
               the given A, B, C)
marina, ef21   ``marina_pl``, ``ef21_pl`` (as page), else                   f_gap / avg_grad_norm_sq
               ``marina_nonconvex``, ``ef21_nonconvex``
subgradient    constant rule: ``nonsmooth_constant``;                       avg_f_gap
               polyak rule: ``nonsmooth_polyak``                            min_f_gap
=============  ==========================================================  ======================

The PL theorems of PAGE, MVR, QGD, MARINA and EF21 (docs/theory.md#t3-pl ...
#t7-pl) have a smaller admissible stepsize than the non-convex ones; a run whose
stepsize lies between the two is checked against the non-convex theorem. Every
result carries ``vacuous_after`` (see :class:`BoundResult`).

The smoothness constant of the variance-reduced and distributed variants is
``L_avg`` when known, else ``L_max`` (an upper bound of the mean-squared
smoothness); for MVR without a finite sum (additive noise, where
:math:`g(W;\xi)-g(V;\xi) = \nabla f(W)-\nabla f(V)`) it is ``L``.
``method='fpft'`` (full-parameter training) is the same theorem with
:math:`\lambda_{\min}^p=\lambda_{\max}^p=1`; the factor-space baselines (lora,
asymm_lora, cola) have no theorem.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from theory import bounds as bd
from theory.bound_helpers import vacuous_after
from theory.theorems import (ALIASES, METHODS, RULES, THEOREMS, MethodTheory, Theorem, _fin, method_lambdas,  # noqa: F401
                             register_theorem)

__all__ = ["Constants", "BoundResult", "Theorem", "MethodTheory", "THEOREMS", "METHODS", "bound_for",
           "register_theorem", "method_lambdas", "vacuous_after", "METRICS"]

NAN = float("nan")
METRICS = ("f_gap", "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap")


@dataclass(frozen=True)
class Constants:
    """The numbers the bounds need; NaN (the default) means unknown.

    Attributes
    ----------
    L, mu : smoothness and PL constants of f.
    L_avg : mean-squared smoothness (finite sums / clients); L_max : max_i L_i.
    L0 : subgradient bound (non-smooth problems).
    f0_gap : f(W0) - f*;  delta0 : f(W0) - f_inf;  dist0_sq : ||W0 - W*||^2.
    sigma2 : variance bound of the stochastic gradient; A, B, C : its ABC constants.
    lmin_p, lmax_p : lambda_min^p, lambda_max^p of the sketch mixture.
    q : PAGE/MARINA probability; batch : minibatch size b; n_samples : N.
    momentum : MVR's b; omega : unbiased compressor variance; alpha : contraction of
    EF21's compressor; n_clients : n_w.
    G0_err : ||G0 - grad f(W0)||^2 (mean_i ||G0_i - grad f_i(W0)||^2 for EF21).
    delta_inf : f_inf - mean_i f_{i,inf} (>= 0).
    grad0_sq : ||grad f(W0)||^2, the initial value of the gradient metrics (used only
    to report ``BoundResult.vacuous_after``).
    """

    L: float = NAN
    mu: float = NAN
    L_avg: float = NAN
    L_max: float = NAN
    L0: float = NAN
    f0_gap: float = NAN
    delta0: float = NAN
    dist0_sq: float = NAN
    sigma2: float = NAN
    A: float = NAN
    B: float = NAN
    C: float = NAN
    lmin_p: float = NAN
    lmax_p: float = NAN
    q: float = NAN
    batch: float = NAN
    n_samples: float = NAN
    momentum: float = NAN
    omega: float = NAN
    alpha: float = NAN
    n_clients: float = NAN
    G0_err: float = NAN
    delta_inf: float = NAN
    grad0_sq: float = NAN

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            try:
                v = NAN if v is None else float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{f.name}: must be a number or NaN, got {v!r}") from None
            object.__setattr__(self, f.name, v)

    def replace(self, **changes) -> "Constants":
        return dataclasses.replace(self, **changes)

    def known(self, name: str) -> bool:
        return math.isfinite(getattr(self, name))


@dataclass(frozen=True)
class BoundResult:
    """``values`` (float array, shape of the iterations; NaN unless ``status == 'ok'``),
    ``metric`` (results-table column bounded, or 'none'), ``status`` ('ok' or
    'not applicable: <reason>'), ``theorem`` (function of :mod:`theory.bounds` and
    its section of docs/theory.md), ``gamma_max`` (admissible stepsize, NaN if not
    computed) and ``vacuous_after``: None, or the int iteration count from which on
    the bound is vacuous at every evaluation point (at least the metric's initial
    value -- ``Constants.f0_gap`` for the f-gap metrics, ``Constants.grad0_sq`` for the
    gradient ones, when known --, growing, or infinite; see :func:`vacuous_after`).
    Always None unless ``status == 'ok'``."""

    values: np.ndarray
    metric: str
    status: str
    theorem: str = ""
    gamma_max: float = NAN
    vacuous_after: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_NAMES = {"L_avg": "L_avg (or L_max)", "A": "A", "C": "C"}


def bound_for(variant: str, *, iterations, gamma: float, stepsize_rule: str = "constant", c: Constants,
              method: str = "bernoulli_lora", polyak_factor: float = 1.0) -> BoundResult:
    r"""The bound of the matching theorem at each iteration count.

    Parameters
    ----------
    variant : {'gd', 'sgd', 'page', 'mvr', 'qgd', 'marina', 'ef21', 'subgradient', 'fpft'}
        Gradient estimator of the run ('fpft' = GD with method 'fpft').
    iterations : array_like of int >= 0
        Iteration counts T of the evaluation points.
    gamma : float
        The constant stepsize used (ignored by the Polyak rule).
    stepsize_rule : {'constant', 'polyak'}
    c : Constants
        The problem's and the method's constants (NaN where unknown).
    method : {'bernoulli_lora', 'fpft', 'lora', 'asymm_lora', 'cola'}
        'fpft' sets :math:`\lambda_{\min}^p=\lambda_{\max}^p=1`; the factor-space
        baselines give 'not applicable'.
    polyak_factor : float
        :math:`\kappa` of the Polyak rule :math:`\gamma_t=\kappa(\lambda_{\min}^p/\lambda_{\max}^p)(f-f^*)/\|G\|^2`
        (the ``stepsize.factor`` of the run); the theorem needs :math:`0<\kappa<2`.

    Returns
    -------
    BoundResult
        ``status`` is 'ok', or 'not applicable: <reason>' with NaN values (stepsize
        above the admissible one, constant unknown, no theorem for the method or rule).
        With mu known the PL bound on ``f_gap`` is preferred where one exists.

    Raises
    ------
    ValueError
        Unknown variant, method or rule, or iterations that are not integers >= 0.
    """
    variant, method = ALIASES.get(variant, (variant, method))
    if variant not in THEOREMS:
        raise ValueError(f"variant: expected one of {', '.join(THEOREMS)}, got {variant!r}")
    if stepsize_rule not in RULES:
        raise ValueError(f"stepsize_rule: expected constant or polyak, got {stepsize_rule!r}")
    if not isinstance(method, str):
        raise ValueError(f"method: expected a method name, got {method!r}")
    T = np.asarray(iterations, dtype=float)
    if np.any(~(T >= 0)) or np.any(T != np.floor(T)):
        raise ValueError("iterations: must be integers >= 0")
    nan_values = np.full(T.shape, NAN)

    def na(reason, metric="none", theorem="", gamma_max=NAN):
        return BoundResult(nan_values, metric, f"not applicable: {reason}", theorem, gamma_max)

    if method not in METHODS:
        return na(f"no theorem for {method} (the theorems cover {', '.join(METHODS)}; "
                  "the factor-space baselines are trained in factor space)")
    lambdas = METHODS[method].lambdas
    if lambdas is not None:
        c = c.replace(lmin_p=lambdas[0], lmax_p=lambdas[1])
    theorem = THEOREMS[variant]
    if stepsize_rule not in theorem.rules:
        return na(f"no theorem for the Polyak rule with {variant} (docs/theory.md#t9 is for the subgradient method)")
    plan = theorem.plan(stepsize_rule, c, float(polyak_factor))
    if isinstance(plan, str):
        return na(plan)
    fallback = None
    has_pl = theorem.pl is not None and _fin(c.mu) and c.mu > 0 and _fin(c.f0_gap)
    pl_plan = theorem.pl(c) if has_pl and stepsize_rule == "constant" else None
    if pl_plan is not None:
        res = _evaluate(pl_plan, T, gamma, c, na)
        if res.ok:
            return res
        fallback = res.status[len("not applicable: "):]
    res = _evaluate(plan, T, gamma, c, na)
    if not res.ok and fallback is not None:
        res = dataclasses.replace(res, status=f"{res.status} (PL version: {fallback})")
    return res


def _evaluate(plan, T, gamma, c, na) -> BoundResult:
    """The BoundResult of one planned theorem: constants known, stepsize admissible, values."""
    fn, kw, admissible = plan
    theorem = f"{fn.__name__} (docs/theory.md#{fn.anchor})"
    unknown = [_NAMES.get(k, k) for k, v in kw.items() if not _fin(v)]
    if unknown:
        return na(f"constant unknown (NaN): {', '.join(unknown)}", fn.metric, theorem)
    gamma = float(gamma) if gamma is not None else NAN
    gamma_max = NAN
    try:
        if admissible is not None:
            gamma_max = float(admissible())
            if not (gamma > 0 and math.isfinite(gamma)):
                return na(f"stepsize gamma = {gamma} is not a finite number > 0", fn.metric, theorem, gamma_max)
            if gamma > gamma_max * (1 + bd.STEPSIZE_RTOL):
                return na(f"stepsize gamma = {gamma:.6g} exceeds the admissible {gamma_max:.6g} of {theorem}",
                          fn.metric, theorem, gamma_max)
            kw = dict(kw, gamma=gamma)
        values = np.asarray(fn(T, **kw), dtype=float).reshape(T.shape)
    except ValueError as err:  # a constant out of its range (q = 0, mu < 0, ...)
        return na(str(err), fn.metric, theorem, gamma_max)
    initial = c.grad0_sq if fn.metric.endswith("grad_norm_sq") else c.f0_gap
    return BoundResult(values, fn.metric, "ok", theorem, gamma_max, vacuous_after(T, values, initial))


def __getattr__(name):
    if name == "VARIANTS":  # the registered theorem families (live: register_theorem adds one)
        return tuple(THEOREMS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
