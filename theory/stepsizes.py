r"""Admissible (largest allowed) stepsizes of the theorems in docs/theory.md.

Each function returns the largest :math:`\gamma` for which the matching bound of
:mod:`theory.bounds` is proved; a NaN argument gives NaN (unknown constant), an
argument out of its range raises ``ValueError``. All smooth variants with a
biased estimator (PAGE, MVR, MARINA, EF21) use the same lemma: their Lyapunov
argument needs :math:`1 - L\gamma - a^2\gamma^2 \ge 0`, which holds for
:math:`\gamma \le 1/(L + a)` because then :math:`a\gamma \le 1 - L\gamma` and
:math:`a\gamma\le 1`, so :math:`a^2\gamma^2 \le a\gamma \le 1 - L\gamma`.

Notation: ``lmin_p``, ``lmax_p`` are :math:`\lambda_{\min}^p`, :math:`\lambda_{\max}^p`
(:mod:`theory.spectra`); ``L_avg`` is the mean-squared smoothness
:math:`\tilde L` (:math:`\frac1N\sum_i\|\nabla f_i(W)-\nabla f_i(V)\|^2\le\tilde L^2\|W-V\|^2`).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "gd_stepsize",
    "sgd_stepsize",
    "sgd_abc_stepsize",
    "page_stepsize",
    "mvr_stepsize",
    "qgd_abc_constants",
    "minibatch_abc_constants",
    "qgd_stepsize",
    "marina_stepsize",
    "ef21_theta_beta",
    "ef21_stepsize",
    "subgradient_stepsize",
    "polyak_stepsize",
    "page_pl_stepsize",
    "mvr_pl_stepsize",
    "qgd_pl_stepsize",
    "marina_pl_stepsize",
    "ef21_pl_stepsize",
]

NAN = float("nan")


def _num(name, x, *, lo=None, hi=None, lo_open=False, hi_open=False):
    """float(x); NaN passes through; out of range raises ValueError naming ``name``."""
    x = float(x)
    if math.isnan(x):
        return x
    bad = (lo is not None and (x < lo or (lo_open and x == lo))) or \
          (hi is not None and (x > hi or (hi_open and x == hi)))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name}: must lie in {left}{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}{right}, got {x}")
    return x


def _L(L):
    return _num("L", L, lo=0, lo_open=True)


def _lam(name, x):
    return _num(name, x, lo=0, hi=1, lo_open=True)


def gd_stepsize(*, L):
    r"""GD (docs/theory.md#t1): :math:`\gamma \le 1/L`."""
    return 1.0 / _L(L)


def sgd_stepsize(*, L):
    r"""SGD with bounded variance (docs/theory.md#t2): :math:`\gamma \le 1/L`."""
    return 1.0 / _L(L)


def sgd_abc_stepsize(*, L, B, lmin_p, lmax_p):
    r"""SGD under expected smoothness :math:`\mathbb E\|g\|^2\le 2A(f-f_{\inf})+B\|\nabla f\|^2+C`
    (docs/theory.md#t2, ABC form):
    :math:`\gamma \le \min\{1/L,\ \lambda_{\min}^p/(2L\lambda_{\max}^p B)\}`."""
    L, B = _L(L), _num("B", B, lo=0)
    lmin, lmax = _lam("lmin_p", lmin_p), _lam("lmax_p", lmax_p)
    if math.isnan(B):
        return NAN
    with np.errstate(divide="ignore"):
        second = lmin / (2.0 * L * lmax * B) if B > 0 else math.inf
    return float(min(1.0 / L, second)) if not math.isnan(second) else NAN


def page_q(batch, n_samples) -> float:
    r"""PAGE's default probability of a full gradient, :math:`q = b/(b+N)` (the paper's
    code); NaN when ``batch`` or ``n_samples`` is unknown (None or NaN). The one place
    this choice is written: the solver (:meth:`solvers.estimators.PAGE.prob`) and the
    theorem's dispatch (:mod:`theory.dispatch`) both call it."""
    try:
        b, N = float(batch), float(n_samples)
    except (TypeError, ValueError):
        return NAN
    return b / (b + N) if math.isfinite(b) and math.isfinite(N) and N > 0 else NAN


def page_stepsize(*, L, L_avg, lmax_p, q, batch):
    r"""PAGE (docs/theory.md#t3):
    :math:`\gamma \le 1/\big(L + \tilde L\sqrt{\lambda_{\max}^p (1-q)/(q b)}\big)`."""
    L, La = _L(L), _num("L_avg", L_avg, lo=0)
    lmax, q, b = _lam("lmax_p", lmax_p), _num("q", q, lo=0, hi=1, lo_open=True), _num("batch", batch, lo=1)
    return 1.0 / (L + La * math.sqrt(lmax * (1.0 - q) / (q * b)))


def mvr_stepsize(*, L, L_avg, lmax_p, momentum):
    r"""MVR / STORM with momentum :math:`b\in(0,1]` (docs/theory.md#t4):
    :math:`\gamma \le 1/\big(L + \tilde L\sqrt{2\lambda_{\max}^p (1-b)^2/b}\big)`.

    Here :math:`\tilde L` is the mean-squared smoothness of the stochastic gradient:
    :math:`\mathbb E_\xi\|g(W;\xi)-g(V;\xi)\|^2 \le \tilde L^2\|W-V\|^2`."""
    L, La = _L(L), _num("L_avg", L_avg, lo=0)
    lmax, b = _lam("lmax_p", lmax_p), _num("momentum", momentum, lo=0, hi=1, lo_open=True)
    return 1.0 / (L + La * math.sqrt(2.0 * lmax * (1.0 - b) ** 2 / b))


def qgd_abc_constants(*, omega, L_max, n_clients, delta_inf):
    r"""(A, B, C) of QGD (docs/theory.md#t5): :math:`A = \omega L_{\max}/n_w`, :math:`B = 1`,
    :math:`C = 2\omega L_{\max}\Delta_{\inf}/n_w`, with
    :math:`\Delta_{\inf} = f_{\inf} - \frac1{n_w}\sum_i f_{i,\inf} \ge 0`.

    Proof: :math:`\mathbb E\|g\|^2 = \|\nabla f\|^2 + \frac1{n_w^2}\sum_i\mathbb E\|Q_i(\nabla f_i)-\nabla f_i\|^2
    \le \|\nabla f\|^2 + \frac{\omega}{n_w^2}\sum_i 2L_i(f_i - f_{i,\inf})`.
    With :math:`\omega = 0` (identity compressor) A = C = 0 whatever :math:`\Delta_{\inf}`."""
    omega = _num("omega", omega, lo=0)
    Lm, nw = _num("L_max", L_max, lo=0), _num("n_clients", n_clients, lo=1)
    if omega == 0.0:
        return 0.0, 1.0, 0.0
    A = omega * Lm / nw
    return A, 1.0, 2.0 * A * _num("delta_inf", delta_inf, lo=0)


def minibatch_abc_constants(*, L_max, batch, n_samples, delta_inf):
    r"""(A, B, C) of minibatch SGD on a finite sum, b samples without replacement
    (Khaled & Richtarik 2020, Prop. 2 for b-nice sampling):
    :math:`\kappa = (N-b)/(b(N-1))`, :math:`A = \kappa L_{\max}`, :math:`B = 1`,
    :math:`C = 2\kappa L_{\max}\Delta_{\inf}`.

    Proof: :math:`\mathbb E\|g\|^2 = \|\nabla f\|^2 + \kappa\,\frac1N\sum_i\|\nabla f_i-\nabla f\|^2
    \le \|\nabla f\|^2 + \kappa\,\frac1N\sum_i 2L_i(f_i - f_{i,\inf})`."""
    Lm, b, N = _num("L_max", L_max, lo=0), _num("batch", batch, lo=1), _num("n_samples", n_samples, lo=1)
    if not math.isnan(b) and not math.isnan(N) and b > N:
        raise ValueError(f"batch: must be <= n_samples = {N}, got {b}")
    kappa = (N - b) / (b * (N - 1)) if N > 1 else 0.0
    if kappa == 0.0:
        return 0.0, 1.0, 0.0
    A = kappa * Lm
    return A, 1.0, 2.0 * A * _num("delta_inf", delta_inf, lo=0)


def qgd_stepsize(*, L, lmin_p, lmax_p):
    r"""QGD = SGD-ABC with B = 1 (docs/theory.md#t5):
    :math:`\gamma\le\min\{1/L, \lambda_{\min}^p/(2L\lambda_{\max}^p)\}`."""
    return sgd_abc_stepsize(L=L, B=1.0, lmin_p=lmin_p, lmax_p=lmax_p)


def marina_stepsize(*, L, L_avg, lmax_p, q, omega, n_clients):
    r"""MARINA (docs/theory.md#t6):
    :math:`\gamma \le 1/\big(L + \tilde L\sqrt{\lambda_{\max}^p (1-q)\,\omega/(q n_w)}\big)`,
    :math:`\tilde L^2` bounding :math:`\frac1{n_w}\sum_i\|\nabla f_i(W)-\nabla f_i(V)\|^2/\|W-V\|^2`."""
    L, La = _L(L), _num("L_avg", L_avg, lo=0)
    lmax, q = _lam("lmax_p", lmax_p), _num("q", q, lo=0, hi=1, lo_open=True)
    omega, nw = _num("omega", omega, lo=0), _num("n_clients", n_clients, lo=1)
    return 1.0 / (L + La * math.sqrt(lmax * (1.0 - q) * omega / (q * nw)))


def ef21_theta_beta(alpha):
    r""":math:`\theta = 1-\sqrt{1-\alpha}`, :math:`\beta = (1-\alpha)/(1-\sqrt{1-\alpha})` of EF21
    (docs/theory.md#t7), for a contractive compressor with
    :math:`\mathbb E\|\mathcal C(x)-x\|^2\le(1-\alpha)\|x\|^2`, :math:`\alpha\in(0,1]`.

    They come from Young's inequality with :math:`s = 1/\sqrt{1-\alpha} - 1`:
    :math:`(1-\alpha)(1+s) = 1-\theta` and :math:`(1-\alpha)(1+1/s) = \beta`."""
    a = _num("alpha", alpha, lo=0, hi=1, lo_open=True)
    s = math.sqrt(1.0 - a) if not math.isnan(a) else NAN
    theta = 1.0 - s
    beta = (1.0 - a) / theta if theta > 0 else NAN
    return theta, beta


def ef21_stepsize(*, L, L_avg, lmax_p, alpha):
    r"""EF21 (docs/theory.md#t7): :math:`\gamma \le 1/\big(L + \tilde L\sqrt{\lambda_{\max}^p\beta/\theta}\big)`
    (= 1/L for :math:`\alpha = 1`, the identity compressor)."""
    L, La, lmax = _L(L), _num("L_avg", L_avg, lo=0), _lam("lmax_p", lmax_p)
    theta, beta = ef21_theta_beta(alpha)
    return 1.0 / (L + La * math.sqrt(lmax * beta / theta))


# --------------------------------------------------------------------------- PL versions
# The PL theorems (docs/theory.md#t3-pl ... #t7-pl) double the Lyapunov weight of the
# error term so that it contracts too; the price is a factor 2 (MVR: 4) under the
# square root of the admissible stepsize. QGD's PL theorem needs the contraction
# factor 1 - gamma mu lmin_p + L gamma^2 lmax_p A to be at most 1 - gamma mu lmin_p / 2.


def page_pl_stepsize(*, L, L_avg, lmax_p, q, batch):
    r"""PAGE under PL (docs/theory.md#t3-pl):
    :math:`\gamma \le 1/\big(L + \tilde L\sqrt{2\lambda_{\max}^p (1-q)/(q b)}\big)`."""
    L, La = _L(L), _num("L_avg", L_avg, lo=0)
    lmax, q, b = _lam("lmax_p", lmax_p), _num("q", q, lo=0, hi=1, lo_open=True), _num("batch", batch, lo=1)
    return 1.0 / (L + La * math.sqrt(2.0 * lmax * (1.0 - q) / (q * b)))


def mvr_pl_stepsize(*, L, L_avg, lmax_p, momentum):
    r"""MVR under PL (docs/theory.md#t4-pl):
    :math:`\gamma \le 1/\big(L + 2\tilde L(1-b)\sqrt{\lambda_{\max}^p/b}\big)`."""
    L, La = _L(L), _num("L_avg", L_avg, lo=0)
    lmax, b = _lam("lmax_p", lmax_p), _num("momentum", momentum, lo=0, hi=1, lo_open=True)
    return 1.0 / (L + La * math.sqrt(4.0 * lmax * (1.0 - b) ** 2 / b))


def qgd_pl_stepsize(*, L, mu, A, lmin_p, lmax_p):
    r"""QGD under PL (docs/theory.md#t5-pl), A = :math:`\omega L_{\max}/n_w`
    (:func:`qgd_abc_constants`):
    :math:`\gamma \le \min\{1/L,\ \mu\lambda_{\min}^p/(2L\lambda_{\max}^pA)\}` (= 1/L for A = 0)."""
    L, mu, A = _L(L), _num("mu", mu, lo=0, lo_open=True), _num("A", A, lo=0)
    lmin, lmax = _lam("lmin_p", lmin_p), _lam("lmax_p", lmax_p)
    if math.isnan(A) or math.isnan(mu):
        return NAN
    second = mu * lmin / (2.0 * L * lmax * A) if A > 0 else math.inf
    return float(min(1.0 / L, second))


def marina_pl_stepsize(*, L, L_avg, lmax_p, q, omega, n_clients):
    r"""MARINA under PL (docs/theory.md#t6-pl):
    :math:`\gamma \le 1/\big(L + \tilde L\sqrt{2\lambda_{\max}^p (1-q)\,\omega/(q n_w)}\big)`."""
    L, La = _L(L), _num("L_avg", L_avg, lo=0)
    lmax, q = _lam("lmax_p", lmax_p), _num("q", q, lo=0, hi=1, lo_open=True)
    omega, nw = _num("omega", omega, lo=0), _num("n_clients", n_clients, lo=1)
    return 1.0 / (L + La * math.sqrt(2.0 * lmax * (1.0 - q) * omega / (q * nw)))


def ef21_pl_stepsize(*, L, L_avg, lmax_p, alpha):
    r"""EF21 under PL (docs/theory.md#t7-pl):
    :math:`\gamma \le 1/\big(L + \tilde L\sqrt{2\lambda_{\max}^p\beta/\theta}\big)` (= 1/L for :math:`\alpha = 1`)."""
    L, La, lmax = _L(L), _num("L_avg", L_avg, lo=0), _lam("lmax_p", lmax_p)
    theta, beta = ef21_theta_beta(alpha)
    return 1.0 / (L + La * math.sqrt(2.0 * lmax * beta / theta))


def subgradient_stepsize():
    r"""Non-smooth convex, constant stepsize (docs/theory.md#t8): every :math:`\gamma > 0`
    is admissible (the bound trades :math:`1/\gamma` against :math:`\gamma`)."""
    return math.inf


def polyak_stepsize(f_gap, subgrad_norm_sq, *, lmin_p, lmax_p, factor=1.0):
    r"""Polyak-type stepsize of docs/theory.md#t9, vectorised:

    .. math:: \gamma_t = \kappa\,\frac{\lambda_{\min}^p}{\lambda_{\max}^p}\,
              \frac{f(W_t) - f^*}{\|G_t\|^2},

    :math:`\kappa` = ``factor`` (the theorem is stated for :math:`\kappa = 1`; any
    :math:`\kappa\in(0,2)` is admissible, see :func:`theory.bounds.nonsmooth_polyak`).
    Returns 0 where :math:`G_t = 0` (then :math:`W_t` is a minimiser).
    """
    f_gap = np.asarray(f_gap, dtype=float)
    g2 = np.asarray(subgrad_norm_sq, dtype=float)
    lmin, lmax = _lam("lmin_p", lmin_p), _lam("lmax_p", lmax_p)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(g2 > 0, float(factor) * (lmin / lmax) * f_gap / np.where(g2 > 0, g2, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out
