r"""Convergence bounds of Bernoulli-LoRA, one function per theorem of docs/theory.md.

Every function takes the iteration counts ``T`` (scalar or array, integers >= 0)
first and the constants as keyword-only arguments, and returns a float array of
the shape of ``T`` (a float for a scalar ``T``). Bounds on averages or minima over
:math:`t < T` are :math:`+\infty` at :math:`T = 0`. A stepsize above the admissible
one of :mod:`theory.stepsizes` raises ``ValueError``: the bound is not proved there.

Common setting. :math:`W_{t+1} = W_t - \gamma\hat H_t(G_t)`, :math:`\hat H_t(G) = H_B G`
w.p. p else :math:`G H_A`, sketches fresh and independent of :math:`G_t`, and
:math:`\mathbb E\|\hat H X\|^2 = \langle X,\mathcal H_p X\rangle\in[\lambda_{\min}^p\|X\|^2,
\lambda_{\max}^p\|X\|^2]` (:mod:`theory.spectra`). Smooth proofs start from the
descent lemma; since :math:`\hat H` is an orthogonal projection,
:math:`\langle\nabla f,\hat H G\rangle = \langle\hat H\nabla f,\hat H G\rangle` and

.. math:: f(W_{t+1}) \le f(W_t) - \tfrac\gamma2\|\hat H\nabla f\|^2
          - \tfrac\gamma2(1 - L\gamma)\|\hat H G\|^2 + \tfrac\gamma2\|\hat H(G - \nabla f)\|^2. \quad (*)

Each function's ``metric`` attribute names the results-table column it bounds
(``f_gap``, ``avg_grad_norm_sq``, ``min_grad_norm_sq``, ``avg_f_gap``, ``min_f_gap``)
``item`` the theorem's number k and ``anchor`` its section of docs/theory.md
(#t1 ... #t9; the PL versions of T3 to T7 are #t3-pl ... #t7-pl and live in
:mod:`theory.bounds_pl`, re-exported here).
"""
from __future__ import annotations

import math

import numpy as np

from theory import stepsizes as ss
from theory.bound_helpers import (STEPSIZE_RTOL, _admissible, _lams, _nonneg, _out, _pos, _rate,  # noqa: F401
                                  _T, _theorem)
from theory.bounds_pl import ef21_pl, marina_pl, mvr_pl, page_pl, qgd_pl

__all__ = [
    "gd_nonconvex", "gd_pl", "sgd_nonconvex", "sgd_pl", "sgd_abc_nonconvex",
    "page_nonconvex", "mvr_nonconvex", "qgd_nonconvex", "marina_nonconvex",
    "ef21_nonconvex", "nonsmooth_constant", "nonsmooth_polyak",
    "page_pl", "mvr_pl", "qgd_pl", "marina_pl", "ef21_pl", "ALL", "STEPSIZE_RTOL",
]

# --------------------------------------------------------------------------- GD / SGD

@_theorem("avg_grad_norm_sq", 1)
def gd_nonconvex(T, *, gamma, L, delta0, lmin_p):
    r"""Bernoulli-LoRA-GD, non-convex (docs/theory.md#t1; RAC-LoRA Thm 5.3 analogue).

    Assumptions: f L-smooth, bounded below by :math:`f_{\inf}`; :math:`G_t = \nabla f(W_t)`;
    :math:`0 < \gamma \le 1/L`.

    Bounds :math:`\frac1T\sum_{t<T}\mathbb E\|\nabla f(W_t)\|^2 \le \frac{2\Delta_0}{\gamma\lambda_{\min}^p T}`,
    :math:`\Delta_0 = f(W_0) - f_{\inf}` (``delta0``).

    Proof: (*) with G = grad f gives :math:`\mathbb E f_{t+1} \le f_t - \gamma(1-L\gamma/2)\lambda_{\min}^p
    \|\nabla f_t\|^2` and :math:`1 - L\gamma/2 \ge 1/2`; telescope.
    """
    T, lmin = _T(T), _lams(lmin_p)
    gamma = _admissible(gamma, ss.gd_stepsize(L=L), "GD (1/L)")
    return _out(_rate(T, 2 * _nonneg("delta0", delta0), gamma, lmin), T)


@_theorem("f_gap", 1)
def gd_pl(T, *, gamma, L, mu, f0_gap, lmin_p):
    r"""Bernoulli-LoRA-GD under the PL condition (docs/theory.md#t1; RAC-LoRA Thm 5.5 analogue).

    Assumptions: f L-smooth, :math:`\|\nabla f\|^2 \ge 2\mu(f - f^*)`; :math:`0<\gamma\le 1/L`.

    Bounds :math:`\mathbb E[f(W_T) - f^*] \le (1 - \gamma\mu\lambda_{\min}^p)^T (f(W_0) - f^*)`.

    Proof: :math:`\mathbb E f_{t+1} - f^* \le (1 - \mu\gamma(2 - L\gamma)\lambda_{\min}^p)(f_t - f^*)`
    and :math:`2 - L\gamma \ge 1`. Checked against the exact identity on
    :math:`f = \frac L2\|W-W^*\|^2`, :math:`\mathcal H_p = \lambda I`:
    :math:`\mathbb E f_{t+1} = (1-(2\gamma L - \gamma^2L^2)\lambda)\,\mathbb E f_t`; since
    :math:`2\gamma L-\gamma^2L^2 \ge \gamma L` iff :math:`\gamma\le 1/L`, the bound holds for
    every admissible :math:`\gamma` and is attained at :math:`\gamma = 1/L` (ratio 1). The
    sharper factor :math:`1-\mu\gamma(2-L\gamma)\lambda_{\min}^p` is also valid for
    :math:`\gamma < 2/L`, but is not the stated theorem.
    """
    T, lmin = _T(T), _lams(lmin_p)
    gamma = _admissible(gamma, ss.gd_stepsize(L=L), "GD (1/L)")
    rho = 1.0 - gamma * _pos("mu", mu) * lmin
    return _out(np.power(max(rho, 0.0), T) * _nonneg("f0_gap", f0_gap), T)


@_theorem("avg_grad_norm_sq", 2)
def sgd_nonconvex(T, *, gamma, L, delta0, sigma2, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-SGD with bounded variance, non-convex (docs/theory.md#t2).

    Assumptions: f L-smooth, bounded below; g unbiased with
    :math:`\mathbb E\|g - \nabla f\|^2 \le \sigma^2` (``sigma2``), independent of the sketch;
    :math:`0 < \gamma \le 1/L`.

    Bounds :math:`\frac1T\sum_{t<T}\mathbb E\|\nabla f(W_t)\|^2 \le \frac{2\Delta_0}{\gamma\lambda_{\min}^pT}
    + L\gamma\sigma^2\frac{\lambda_{\max}^p}{\lambda_{\min}^p}`.

    Proof: :math:`\mathbb E\|\hat Hg\|^2 = \langle\nabla f,\mathcal H_p\nabla f\rangle +
    \mathbb E\langle g-\nabla f,\mathcal H_p(g-\nabla f)\rangle`, so
    :math:`\mathbb E f_{t+1}\le f_t - \frac\gamma2\lambda_{\min}^p\|\nabla f_t\|^2 + \frac{L\gamma^2}2\lambda_{\max}^p\sigma^2`.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    gamma = _admissible(gamma, ss.sgd_stepsize(L=L), "SGD (1/L)")
    noise = float(L) * gamma * _nonneg("sigma2", sigma2) * lmax / lmin
    return _out(_rate(T, 2 * _nonneg("delta0", delta0), gamma, lmin) + noise, T)


@_theorem("f_gap", 2)
def sgd_pl(T, *, gamma, L, mu, f0_gap, sigma2, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-SGD with bounded variance under PL (docs/theory.md#t2).

    Assumptions: as :func:`sgd_nonconvex`, plus :math:`\|\nabla f\|^2\ge 2\mu(f-f^*)`.

    Bounds :math:`\mathbb E[f(W_T)-f^*] \le (1-\gamma\mu\lambda_{\min}^p)^T(f(W_0)-f^*)
    + \frac{L\gamma\sigma^2\lambda_{\max}^p}{2\mu\lambda_{\min}^p}`.

    Proof: :math:`\mathbb E f_{t+1}-f^* \le (1-\gamma\mu\lambda_{\min}^p)(f_t-f^*) +
    \frac{L\gamma^2}2\lambda_{\max}^p\sigma^2`; unroll and sum the geometric series.
    On :math:`f=\frac L2\|W-W^*\|^2` with additive noise the exact sequence has the
    smaller factor :math:`1-(2\gamma L-\gamma^2L^2)\lambda` and the same additive term.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    gamma = _admissible(gamma, ss.sgd_stepsize(L=L), "SGD (1/L)")
    mu = _pos("mu", mu)
    rho = max(1.0 - gamma * mu * lmin, 0.0)
    floor = float(L) * gamma * _nonneg("sigma2", sigma2) * lmax / (2 * mu * lmin)
    return _out(np.power(rho, T) * _nonneg("f0_gap", f0_gap) + floor, T)


@_theorem("min_grad_norm_sq", 2)
def sgd_abc_nonconvex(T, *, gamma, L, delta0, A, B, C, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-SGD under expected smoothness (ABC), non-convex (docs/theory.md#t2;
    Khaled & Richtarik 2020, Thm 2, with sketches).

    Assumptions: f L-smooth, bounded below by :math:`f_{\inf}`; g unbiased with
    :math:`\mathbb E\|g\|^2 \le 2A(f - f_{\inf}) + B\|\nabla f\|^2 + C`;
    :math:`0<\gamma\le\min\{1/L, \lambda_{\min}^p/(2L\lambda_{\max}^pB)\}`.

    Bounds :math:`\min_{t<T}\mathbb E\|\nabla f(W_t)\|^2 \le (1+L\gamma^2\lambda_{\max}^pA)^T
    \frac{4\Delta_0}{\gamma\lambda_{\min}^pT} + 2L\gamma C\frac{\lambda_{\max}^p}{\lambda_{\min}^p}`.

    Proof: :math:`\delta_{t+1}\le(1+\varepsilon)\delta_t - a\,r_t + D`, with
    :math:`\varepsilon = L\gamma^2\lambda_{\max}^pA`, :math:`D = L\gamma^2\lambda_{\max}^pC/2`,
    :math:`a = \gamma\lambda_{\min}^p - L\gamma^2\lambda_{\max}^pB/2 \ge \frac34\gamma\lambda_{\min}^p`;
    weights :math:`(1+\varepsilon)^{-t-1}` give :math:`\min r \le (1+\varepsilon)^T\delta_0/(aT) + D/a`.
    The stated constants use :math:`a \ge \gamma\lambda_{\min}^p/4` (valid, 3x loose).
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    gamma = _admissible(gamma, ss.sgd_abc_stepsize(L=L, B=B, lmin_p=lmin, lmax_p=lmax), "SGD-ABC")
    A, C = _nonneg("A", A), _nonneg("C", C)
    log_growth = T * math.log1p(float(L) * gamma**2 * lmax * A)
    with np.errstate(divide="ignore", over="ignore"):
        # in log space: (1+eps)^T overflows long before the product does
        first = np.exp(log_growth + np.log(_rate(T, 4 * _nonneg("delta0", delta0), gamma, lmin)))
    return _out(first + 2 * float(L) * gamma * C * lmax / lmin, T)


# --------------------------------------------------------------------------- variance reduction

@_theorem("avg_grad_norm_sq", 3)
def page_nonconvex(T, *, gamma, L, L_avg, delta0, G0_err, q, batch, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-PAGE, non-convex (docs/theory.md#t3).

    Assumptions: :math:`f=\frac1N\sum_i f_i` L-smooth, bounded below, mean-squared
    smoothness :math:`\tilde L` (``L_avg``); full gradient w.p. q, else the minibatch
    (size b) gradient difference at the same indices;
    :math:`0<\gamma\le 1/(L+\tilde L\sqrt{\lambda_{\max}^p(1-q)/(qb)})`.

    Bounds :math:`\frac1T\sum_{t<T}\mathbb E\|\nabla f(W_t)\|^2 \le \frac{2\Phi_0}{\gamma\lambda_{\min}^pT}`,
    :math:`\Phi_0 = \Delta_0 + \frac{\gamma\lambda_{\max}^p}{2q}\mathbb E\|G_0-\nabla f(W_0)\|^2`
    (``G0_err``).

    Proof: :math:`\Phi_t = f_t - f_{\inf} + \frac{\gamma\lambda_{\max}^p}{2q}\|G_t-\nabla f_t\|^2`;
    (*) and :math:`\mathbb E\|G_{t+1}-\nabla f_{t+1}\|^2\le(1-q)(\|G_t-\nabla f_t\|^2 +
    \frac{\tilde L^2}{b}\gamma^2\|\hat HG_t\|^2)` give
    :math:`\mathbb E\Phi_{t+1}\le\Phi_t-\frac\gamma2\lambda_{\min}^p\|\nabla f_t\|^2` under the stepsize.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    qv = float(q)
    gamma = _admissible(gamma, ss.page_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, q=qv, batch=batch), "PAGE")
    phi0 = _nonneg("delta0", delta0) + gamma * lmax / (2 * qv) * _nonneg("G0_err", G0_err)
    return _out(_rate(T, 2 * phi0, gamma, lmin), T)


@_theorem("avg_grad_norm_sq", 4)
def mvr_nonconvex(T, *, gamma, L, L_avg, delta0, G0_err, sigma2, momentum, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-MVR (STORM), non-convex (docs/theory.md#t4).

    Assumptions: f L-smooth, bounded below; :math:`g(W;\xi)` unbiased with variance
    :math:`\le\sigma^2` and mean-squared smoothness :math:`\tilde L` (``L_avg``);
    :math:`G_{t+1} = g(W_{t+1};\xi) + (1-b)(G_t - g(W_t;\xi))`, b = ``momentum``;
    :math:`0<\gamma\le 1/(L+\tilde L\sqrt{2\lambda_{\max}^p(1-b)^2/b})`.

    Bounds :math:`\frac1T\sum_{t<T}\mathbb E\|\nabla f(W_t)\|^2 \le \frac{2\Phi_0}{\gamma\lambda_{\min}^pT}
    + 2b\sigma^2\frac{\lambda_{\max}^p}{\lambda_{\min}^p}`, with
    :math:`\Phi_0 = \Delta_0 + \frac{\gamma\lambda_{\max}^p}{2b}\mathbb E\|G_0-\nabla f(W_0)\|^2`
    (the weight the proof needs; see docs/theory.md#t4).

    Proof: :math:`\mathbb E\|e_{t+1}\|^2\le(1-b)^2\|e_t\|^2 + 2(1-b)^2\tilde L^2\|W_{t+1}-W_t\|^2+2b^2\sigma^2`;
    Lyapunov weight :math:`c=\gamma\lambda_{\max}^p/(2b)` satisfies
    :math:`c(1-(1-b)^2)\ge\gamma\lambda_{\max}^p/2`; the noise adds :math:`2cb^2\sigma^2=\gamma\lambda_{\max}^pb\sigma^2` per step.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    b = float(momentum)
    gamma = _admissible(gamma, ss.mvr_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, momentum=b), "MVR")
    phi0 = _nonneg("delta0", delta0) + gamma * lmax / (2 * b) * _nonneg("G0_err", G0_err)
    return _out(_rate(T, 2 * phi0, gamma, lmin) + 2 * b * _nonneg("sigma2", sigma2) * lmax / lmin, T)


# --------------------------------------------------------------------------- distributed

@_theorem("min_grad_norm_sq", 5)
def qgd_nonconvex(T, *, gamma, L, delta0, omega, L_max, n_clients, delta_inf, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-QGD, non-convex (docs/theory.md#t5): :func:`sgd_abc_nonconvex` with
    :math:`A=\omega L_{\max}/n_w`, :math:`B=1`, :math:`C=2\omega L_{\max}\Delta_{\inf}/n_w`
    (:func:`theory.stepsizes.qgd_abc_constants`).

    Assumptions: :math:`f = \frac1{n_w}\sum_i f_i`, :math:`f_i` :math:`L_i`-smooth and bounded
    below by :math:`f_{i,\inf}`; independent unbiased compressors with variance
    parameter :math:`\omega`; :math:`\gamma\le\min\{1/L,\lambda_{\min}^p/(2L\lambda_{\max}^p)\}`.

    Bounds :math:`\min_{t<T}\mathbb E\|\nabla f(W_t)\|^2`.
    """
    A, B, C = ss.qgd_abc_constants(omega=omega, L_max=L_max, n_clients=n_clients, delta_inf=delta_inf)
    if math.isnan(A) or math.isnan(C):
        raise ValueError("omega, L_max, n_clients, delta_inf: unknown (NaN), needed by the QGD bound")
    return sgd_abc_nonconvex(T, gamma=gamma, L=L, delta0=delta0, A=A, B=B, C=C, lmin_p=lmin_p, lmax_p=lmax_p)


@_theorem("avg_grad_norm_sq", 6)
def marina_nonconvex(T, *, gamma, L, L_avg, delta0, G0_err, q, omega, n_clients, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-MARINA, non-convex (docs/theory.md#t6).

    Assumptions: :math:`f=\frac1{n_w}\sum_i f_i` L-smooth, bounded below,
    :math:`\frac1{n_w}\sum_i\|\nabla f_i(W)-\nabla f_i(V)\|^2\le\tilde L^2\|W-V\|^2` (``L_avg``);
    independent unbiased compressors (:math:`\omega`); full gradient w.p. q;
    :math:`0<\gamma\le 1/(L+\tilde L\sqrt{\lambda_{\max}^p(1-q)\omega/(qn_w)})`.

    Bounds :math:`\frac1T\sum_{t<T}\mathbb E\|\nabla f(W_t)\|^2\le\frac{2\Phi_0}{\gamma\lambda_{\min}^pT}`,
    :math:`\Phi_0=\Delta_0+\frac{\gamma\lambda_{\max}^p}{2q}\|G_0-\nabla f(W_0)\|^2`.

    Proof: as :func:`page_nonconvex` with
    :math:`\mathbb E\|e_{t+1}\|^2\le(1-q)(\|e_t\|^2+\frac{\omega\tilde L^2}{n_w}\|W_{t+1}-W_t\|^2)`.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    qv = float(q)
    gmax = ss.marina_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, q=qv, omega=omega, n_clients=n_clients)
    gamma = _admissible(gamma, gmax, "MARINA")
    phi0 = _nonneg("delta0", delta0) + gamma * lmax / (2 * qv) * _nonneg("G0_err", G0_err)
    return _out(_rate(T, 2 * phi0, gamma, lmin), T)


@_theorem("avg_grad_norm_sq", 7)
def ef21_nonconvex(T, *, gamma, L, L_avg, delta0, G0_err, alpha, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-EF21, non-convex (docs/theory.md#t7).

    Assumptions: :math:`f=\frac1{n_w}\sum_i f_i` L-smooth, bounded below,
    :math:`\tilde L` as in :func:`marina_nonconvex`; contractive compressors,
    :math:`\mathbb E\|\mathcal C(x)-x\|^2\le(1-\alpha)\|x\|^2`;
    :math:`0<\gamma\le 1/(L+\tilde L\sqrt{\lambda_{\max}^p\beta/\theta})`.

    Bounds :math:`\frac1T\sum_{t<T}\mathbb E\|\nabla f(W_t)\|^2\le\frac{2\Phi_0}{\gamma\lambda_{\min}^pT}`,
    :math:`\Phi_0=\Delta_0+\frac{\gamma\lambda_{\max}^p}{2\theta}\frac1{n_w}\sum_i\|G^i_0-\nabla f_i(W_0)\|^2`
    (``G0_err`` is that client mean).

    Proof: :math:`\mathbb E\,e_{t+1}\le(1-\theta)e_t+\beta\tilde L^2\|W_{t+1}-W_t\|^2` for
    :math:`e_t=\frac1{n_w}\sum_i\|G^i_t-\nabla f_i(W_t)\|^2\ge\|G_t-\nabla f(W_t)\|^2`; the
    weight :math:`\gamma\lambda_{\max}^p/(2\theta)` cancels the :math:`e_t` terms of (*).
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    gamma = _admissible(gamma, ss.ef21_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, alpha=alpha), "EF21")
    theta, _ = ss.ef21_theta_beta(alpha)
    phi0 = _nonneg("delta0", delta0) + gamma * lmax / (2 * theta) * _nonneg("G0_err", G0_err)
    return _out(_rate(T, 2 * phi0, gamma, lmin), T)


# --------------------------------------------------------------------------- non-smooth convex

@_theorem("avg_f_gap", 8)
def nonsmooth_constant(T, *, gamma, L0, dist0_sq, lmin_p, lmax_p):
    r"""Bernoulli-LoRA subgradient method, constant stepsize (docs/theory.md#t8).

    Assumptions: f convex with minimiser :math:`W^*`, subgradients bounded,
    :math:`\|G\|\le L_0`; any :math:`\gamma>0`.

    Bounds :math:`\frac1T\sum_{t<T}\mathbb E[f(W_t)-f^*] \le \frac{\|W_0-W^*\|^2}{2\gamma\lambda_{\min}^pT}
    + \frac{\gamma L_0^2\lambda_{\max}^p}{2\lambda_{\min}^p}`.

    Proof (valid for non-isotropic :math:`\mathcal H_p` too): in the norm
    :math:`\|X\|^2_{\mathcal H_p^{-1}}`, :math:`\mathbb E\langle\hat HG,\mathcal H_p^{-1}X\rangle=\langle G,X\rangle
    \ge f-f^*` and :math:`\mathbb E\|\hat HG\|^2_{\mathcal H_p^{-1}}\le\frac{\lambda_{\max}^p}{\lambda_{\min}^p}L_0^2`;
    telescope and use :math:`\|X_0\|^2_{\mathcal H_p^{-1}}\le\|X_0\|^2/\lambda_{\min}^p`.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    gamma = _pos("gamma", gamma)
    L0 = _nonneg("L0", L0)
    return _out(_rate(T, _nonneg("dist0_sq", dist0_sq) / 2, gamma, lmin) + gamma * L0**2 * lmax / (2 * lmin), T)


@_theorem("min_f_gap", 9)
def nonsmooth_polyak(T, *, L0, dist0_sq, lmin_p, lmax_p, factor=1.0):
    r"""Bernoulli-LoRA subgradient method, Polyak-type stepsize (docs/theory.md#t9).

    Assumptions: as :func:`nonsmooth_constant`, :math:`f^*` known;
    :math:`\gamma_t = \kappa\frac{\lambda_{\min}^p}{\lambda_{\max}^p}\frac{f(W_t)-f^*}{\|G_t\|^2}`,
    :math:`\kappa` = ``factor`` in (0, 2) (the usual statement has :math:`\kappa = 1`).

    Bounds :math:`\min_{t<T}\mathbb E[f(W_t)-f^*]\le\frac{L_0\|W_0-W^*\|\sqrt{\lambda_{\max}^p}}
    {\lambda_{\min}^p\sqrt{\kappa(2-\kappa)T}}` (the stated bound at :math:`\kappa = 1`).

    Proof: as in :func:`nonsmooth_constant` the step decreases
    :math:`\mathbb E\|X\|^2_{\mathcal H_p^{-1}}` by
    :math:`\kappa(2-\kappa)\frac{\lambda_{\min}^p}{\lambda_{\max}^p}\frac{(f-f^*)^2}{\|G\|^2}`;
    sum, use :math:`\|G\|\le L_0` and :math:`(\mathbb E[f-f^*])^2\le\mathbb E[(f-f^*)^2]`.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    k = float(factor)
    if not 0 < k < 2:
        raise ValueError(f"factor: the Polyak multiplier must lie in (0, 2), got {k}")
    scale = _nonneg("L0", L0) * math.sqrt(_nonneg("dist0_sq", dist0_sq)) * math.sqrt(lmax) / lmin
    with np.errstate(divide="ignore"):
        vals = np.where(T > 0, scale / np.sqrt(k * (2 - k) * np.where(T > 0, T, 1.0)), np.inf)
    return _out(vals, T)


#: every theorem function, by name
ALL = {fn.__name__: fn for fn in (gd_nonconvex, gd_pl, sgd_nonconvex, sgd_pl, sgd_abc_nonconvex,
                                   page_nonconvex, mvr_nonconvex, qgd_nonconvex, marina_nonconvex,
                                   ef21_nonconvex, nonsmooth_constant, nonsmooth_polyak,
                                   page_pl, mvr_pl, qgd_pl, marina_pl, ef21_pl)}
