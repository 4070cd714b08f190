r"""The theorems of docs/theory.md as data: which bound, with which constants and
which admissible stepsize, for each gradient estimator (:data:`THEOREMS`) and which
methods they cover (:data:`METHODS`). :func:`theory.dispatch.bound_for` looks a run's
estimator up here; an estimator names its entry (its ``theorem`` in
:func:`solvers.registry.register`), and a new estimator with a new theorem adds one
with :func:`register_theorem`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from theory import bounds as bd
from theory import stepsizes as ss

NAN = float("nan")
RULES = ("constant", "polyak")


def _fin(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _first_known(*pairs):
    for name, v in pairs:
        if _fin(v):
            return name, v
    return pairs[0][0], NAN


# --------------------------------------------------------------------------- the theorems
# Each plan returns (bound function, kwargs, admissible stepsize callable or None), or a
# reason string when a constant it needs is unknown.


def _gd(rule, c, polyak_factor):
    if _fin(c.mu) and c.mu > 0 and _fin(c.f0_gap):
        return bd.gd_pl, dict(L=c.L, mu=c.mu, f0_gap=c.f0_gap, lmin_p=c.lmin_p), lambda: ss.gd_stepsize(L=c.L)
    return bd.gd_nonconvex, dict(L=c.L, delta0=c.delta0, lmin_p=c.lmin_p), lambda: ss.gd_stepsize(L=c.L)


def _sgd(rule, c, polyak_factor):
    common = dict(lmin_p=c.lmin_p, lmax_p=c.lmax_p)
    if _fin(c.sigma2):
        if _fin(c.mu) and c.mu > 0 and _fin(c.f0_gap):
            return bd.sgd_pl, dict(L=c.L, mu=c.mu, f0_gap=c.f0_gap, sigma2=c.sigma2, **common), \
                lambda: ss.sgd_stepsize(L=c.L)
        return bd.sgd_nonconvex, dict(L=c.L, delta0=c.delta0, sigma2=c.sigma2, **common), \
            lambda: ss.sgd_stepsize(L=c.L)
    if all(_fin(v) for v in (c.A, c.B, c.C)):
        A, B, C = c.A, c.B, c.C
    elif all(_fin(v) for v in (c.L_max, c.batch, c.n_samples, c.delta_inf)):
        A, B, C = ss.minibatch_abc_constants(L_max=c.L_max, batch=c.batch, n_samples=c.n_samples,
                                             delta_inf=c.delta_inf)
    else:
        return "constant unknown (NaN): sigma2, or A, B, C, or L_max, batch, n_samples, delta_inf"
    return _abc(c, A, B, C)


def _abc(c, A, B, C):
    return bd.sgd_abc_nonconvex, dict(L=c.L, delta0=c.delta0, A=A, B=B, C=C, lmin_p=c.lmin_p, lmax_p=c.lmax_p), \
        lambda: ss.sgd_abc_stepsize(L=c.L, B=B, lmin_p=c.lmin_p, lmax_p=c.lmax_p)


def _page(rule, c, polyak_factor):
    q = _page_q(c)
    _, Lt = _first_known(("L_avg", c.L_avg), ("L_max", c.L_max))
    kw = dict(L=c.L, L_avg=Lt, delta0=c.delta0, G0_err=c.G0_err, q=q, batch=c.batch, lmin_p=c.lmin_p,
              lmax_p=c.lmax_p)
    return bd.page_nonconvex, kw, lambda: ss.page_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, q=q, batch=c.batch)


def _mvr(rule, c, polyak_factor):
    Lt = _mvr_L(c)
    kw = dict(L=c.L, L_avg=Lt, delta0=c.delta0, G0_err=c.G0_err, sigma2=c.sigma2, momentum=c.momentum,
              lmin_p=c.lmin_p, lmax_p=c.lmax_p)
    return bd.mvr_nonconvex, kw, lambda: ss.mvr_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, momentum=c.momentum)


def _qgd_kw(c):
    exact = c.omega == 0  # identity compressor: A = C = 0, the other constants do not matter
    return exact, dict(omega=c.omega, L_max=0.0 if exact else c.L_max, n_clients=1.0 if exact else c.n_clients,
                       delta_inf=0.0 if exact else c.delta_inf)


def _qgd(rule, c, polyak_factor):
    exact, qkw = _qgd_kw(c)
    if exact or all(_fin(v) for v in (c.omega, c.L_max, c.n_clients, c.delta_inf)):
        kw = dict(L=c.L, delta0=c.delta0, **qkw, lmin_p=c.lmin_p, lmax_p=c.lmax_p)
        return bd.qgd_nonconvex, kw, lambda: ss.qgd_stepsize(L=c.L, lmin_p=c.lmin_p, lmax_p=c.lmax_p)
    if all(_fin(v) for v in (c.A, c.B, c.C)):
        return _abc(c, c.A, c.B, c.C)
    return "constant unknown (NaN): omega, L_max, n_clients, delta_inf (or A, B, C)"


def _marina(rule, c, polyak_factor):
    _, Lt = _first_known(("L_avg", c.L_avg), ("L_max", c.L_max))
    kw = dict(L=c.L, L_avg=Lt, delta0=c.delta0, G0_err=c.G0_err, q=c.q, omega=c.omega,
              n_clients=c.n_clients, lmin_p=c.lmin_p, lmax_p=c.lmax_p)
    return bd.marina_nonconvex, kw, lambda: ss.marina_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, q=c.q,
                                                               omega=c.omega, n_clients=c.n_clients)


def _ef21(rule, c, polyak_factor):
    _, Lt = _first_known(("L_avg", c.L_avg), ("L_max", c.L_max))
    kw = dict(L=c.L, L_avg=Lt, delta0=c.delta0, G0_err=c.G0_err, alpha=c.alpha, lmin_p=c.lmin_p, lmax_p=c.lmax_p)
    return bd.ef21_nonconvex, kw, lambda: ss.ef21_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, alpha=c.alpha)


def _subgradient(rule, c, polyak_factor):
    common = dict(lmin_p=c.lmin_p, lmax_p=c.lmax_p)
    if rule == "polyak":
        return bd.nonsmooth_polyak, dict(L0=c.L0, dist0_sq=c.dist0_sq, factor=polyak_factor, **common), None
    return bd.nonsmooth_constant, dict(L0=c.L0, dist0_sq=c.dist0_sq, **common), ss.subgradient_stepsize


# PL versions (docs/theory.md#t3-pl ... #t7-pl), for a problem that declares mu > 0 and
# f(W0) - f*; GD and SGD choose their PL theorem in their plan above.


def _pl_common(c):
    return dict(L=c.L, mu=c.mu, f0_gap=c.f0_gap, lmin_p=c.lmin_p, lmax_p=c.lmax_p), \
        _first_known(("L_avg", c.L_avg), ("L_max", c.L_max))[1]


def _page_pl(c):
    common, Lt = _pl_common(c)
    q = _page_q(c)
    return bd.page_pl, dict(L_avg=Lt, G0_err=c.G0_err, q=q, batch=c.batch, **common), \
        lambda: ss.page_pl_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, q=q, batch=c.batch)


def _mvr_pl(c):
    common, _ = _pl_common(c)
    Lt = _mvr_L(c)
    return bd.mvr_pl, dict(L_avg=Lt, G0_err=c.G0_err, sigma2=c.sigma2, momentum=c.momentum, **common), \
        lambda: ss.mvr_pl_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, momentum=c.momentum)


def _qgd_pl(c):
    common, _ = _pl_common(c)
    _, kw = _qgd_kw(c)

    def admissible():
        A, _, _ = ss.qgd_abc_constants(**kw)
        return ss.qgd_pl_stepsize(L=c.L, mu=c.mu, A=A, lmin_p=c.lmin_p, lmax_p=c.lmax_p)
    return bd.qgd_pl, dict(kw, **common), admissible


def _marina_pl(c):
    common, Lt = _pl_common(c)
    return bd.marina_pl, dict(L_avg=Lt, G0_err=c.G0_err, q=c.q, omega=c.omega, n_clients=c.n_clients, **common), \
        lambda: ss.marina_pl_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, q=c.q, omega=c.omega, n_clients=c.n_clients)


def _ef21_pl(c):
    common, Lt = _pl_common(c)
    return bd.ef21_pl, dict(L_avg=Lt, G0_err=c.G0_err, alpha=c.alpha, **common), \
        lambda: ss.ef21_pl_stepsize(L=c.L, L_avg=Lt, lmax_p=c.lmax_p, alpha=c.alpha)


def _page_q(c):
    return c.q if _fin(c.q) else ss.page_q(c.batch, c.n_samples)


def _mvr_L(c):
    pairs = [("L_avg", c.L_avg), ("L_max", c.L_max)] + ([] if _fin(c.n_samples) else [("L", c.L)])
    return _first_known(*pairs)[1]


@dataclass(frozen=True)
class Theorem:
    """The theorem family of one gradient estimator: ``plan(rule, c, polyak_factor)``
    gives (bound function of :mod:`theory.bounds`, its keyword arguments, the
    admissible stepsize as a callable or None) or a reason string; ``pl(c)`` the PL
    version, tried first when mu > 0 and f(W0) - f* are known; ``rules`` the
    stepsize rules it covers."""

    plan: Callable
    pl: Optional[Callable] = None
    rules: tuple = ("constant",)


@dataclass(frozen=True)
class MethodTheory:
    """What the theorems say of a method: ``lambdas`` fixed (lambda_min^p, lambda_max^p)
    (None: from the run's sketch)."""

    lambdas: Optional[tuple] = None


#: {variant: Theorem}: the estimators' theorems (a component names its key, its
#: ``theorem``, in :func:`solvers.registry.register`); add one with :func:`register_theorem`
THEOREMS = {
    "gd": Theorem(_gd), "sgd": Theorem(_sgd), "page": Theorem(_page, _page_pl), "mvr": Theorem(_mvr, _mvr_pl),
    "qgd": Theorem(_qgd, _qgd_pl), "marina": Theorem(_marina, _marina_pl), "ef21": Theorem(_ef21, _ef21_pl),
    "subgradient": Theorem(_subgradient, rules=RULES),
}
#: {method: MethodTheory}: the methods the theorems cover (weight space); FPFT is
#: Bernoulli-LoRA with lambda_min^p = lambda_max^p = 1. Any other method (the
#: factor-space baselines lora, asymm_lora, cola) has no theorem.
METHODS = {"bernoulli_lora": MethodTheory(), "fpft": MethodTheory(lambdas=(1.0, 1.0))}
#: aliases of ``variant`` in :func:`theory.dispatch.bound_for`: (variant, method)
ALIASES = {"fpft": ("gd", "fpft")}


def register_theorem(name: str, theorem: Theorem, *, replace: bool = False) -> Theorem:
    """Add the theorem family ``name`` (the ``theorem`` an estimator declares)."""
    if name in THEOREMS and not replace:
        raise ValueError(f"theorem: {name!r} is registered already (pass replace=True)")
    THEOREMS[name] = theorem
    return theorem


def method_lambdas(method: str):
    """The fixed (lambda_min^p, lambda_max^p) of a method's theorem, or None."""
    entry = METHODS.get(method)
    return entry.lambdas if entry is not None else None


