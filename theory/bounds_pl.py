r"""PL (Polyak-Lojasiewicz) versions of the variance-reduced and compressed
Bernoulli-LoRA variants: PAGE, MVR, QGD, MARINA, EF21 (docs/theory.md#t3-pl ... #t7-pl).

Conventions as in :mod:`theory.bounds` (which re-exports these functions): ``T``
first, keyword-only constants, a float array of the shape of ``T``, ``ValueError``
above the admissible stepsize (:mod:`theory.stepsizes`, ``*_pl_stepsize``). Every
function bounds ``f_gap`` :math:`=\mathbb E[f(W_T)-f^*]`.

Common argument. With :math:`\delta_t=f(W_t)-f^*`, :math:`e_t` the estimator's error,
:math:`R_t=\mathbb E_t\|\hat H_tG_t\|^2` (so :math:`\mathbb E_t\|W_{t+1}-W_t\|^2=\gamma^2R_t`),
inequality (*) of :mod:`theory.bounds`, the key identity and A2 give

.. math:: \mathbb E_t\delta_{t+1}\le(1-\gamma\mu\lambda_{\min}^p)\delta_t
          +\tfrac\gamma2\lambda_{\max}^p\|e_t\|^2-\tfrac\gamma2(1-L\gamma)R_t .\qquad(**)

The Lyapunov function :math:`\Phi_t=\delta_t+c\,\|e_t\|^2` takes twice the weight of the
non-convex proof (:math:`c=\gamma\lambda_{\max}^p/s` with s = q, b or theta instead of 2s),
so that the error term contracts by :math:`1-s/2`; the movement terms cancel by lemma L2.
Result: :math:`\mathbb E\Phi_{t+1}\le\rho\,\Phi_t+D`, :math:`\rho=\max\{1-\gamma\mu\lambda_{\min}^p,1-s/2\}`,
hence :math:`\mathbb E[f(W_T)-f^*]\le\mathbb E\Phi_T\le\rho^T\Phi_0+D\frac{1-\rho^T}{1-\rho}`.
"""
from __future__ import annotations

import math

import numpy as np

from theory import stepsizes as ss
from theory.bound_helpers import _admissible, _lams, _nonneg, _out, _pos, _T, _theorem

__all__ = ["page_pl", "mvr_pl", "qgd_pl", "marina_pl", "ef21_pl"]


def _geometric(T, rho, phi0, D=0.0):
    r""":math:`\rho^T\Phi_0 + D(1-\rho^T)/(1-\rho)` (``D = 0``: no floor)."""
    rho = min(max(rho, 0.0), 1.0)
    powT = np.power(rho, T)
    if D == 0.0:
        return powT * phi0
    if rho == 1.0:  # no contraction left in floating point: the sum is D T
        return phi0 + D * T
    return powT * phi0 + D * (1.0 - powT) / (1.0 - rho)


def _contraction(gamma, mu, lmin, s):
    return max(1.0 - gamma * mu * lmin, 1.0 - s / 2.0)


@_theorem("f_gap", 3, "t3-pl")
def page_pl(T, *, gamma, L, L_avg, mu, f0_gap, G0_err, q, batch, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-PAGE under PL (docs/theory.md#t3-pl; reconstruction).

    Assumptions: as :func:`theory.bounds.page_nonconvex`, plus A2
    (:math:`\|\nabla f\|^2\ge2\mu(f-f^*)`);
    :math:`0<\gamma\le 1/(L+\tilde L\sqrt{2\lambda_{\max}^p(1-q)/(qb)})`.

    Bounds :math:`\mathbb E[f(W_T)-f^*]\le\rho^T\Phi_0`,
    :math:`\rho=\max\{1-\gamma\mu\lambda_{\min}^p,\ 1-q/2\}`,
    :math:`\Phi_0=f(W_0)-f^*+\frac{\gamma\lambda_{\max}^p}{q}\mathbb E\|G_0-\nabla f(W_0)\|^2`.

    Proof: :math:`\Phi_t=\delta_t+\frac{\gamma\lambda_{\max}^p}q\|e_t\|^2` and
    :math:`\mathbb E\|e_{t+1}\|^2\le(1-q)(\|e_t\|^2+\frac{\tilde L^2}b\gamma^2R_t)`: in (**) the error
    weight becomes :math:`\frac{\gamma\lambda_{\max}^p}2+c(1-q)=c(1-\frac q2)` and the movement
    :math:`-\frac\gamma2(1-L\gamma-\frac{2\lambda_{\max}^p(1-q)\tilde L^2}{qb}\gamma^2)R_t\le0` (L2).
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    qv = float(q)
    gmax = ss.page_pl_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, q=qv, batch=batch)
    gamma = _admissible(gamma, gmax, "PAGE under PL")
    phi0 = _nonneg("f0_gap", f0_gap) + gamma * lmax / qv * _nonneg("G0_err", G0_err)
    return _out(_geometric(T, _contraction(gamma, _pos("mu", mu), lmin, qv), phi0), T)


@_theorem("f_gap", 4, "t4-pl")
def mvr_pl(T, *, gamma, L, L_avg, mu, f0_gap, G0_err, sigma2, momentum, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-MVR (STORM) under PL (docs/theory.md#t4-pl; reconstruction).

    Assumptions: as :func:`theory.bounds.mvr_nonconvex`, plus A2;
    :math:`0<\gamma\le 1/(L+2\tilde L(1-b)\sqrt{\lambda_{\max}^p/b})`, b = ``momentum``.

    Bounds :math:`\mathbb E[f(W_T)-f^*]\le\rho^T\Phi_0+2\gamma\lambda_{\max}^pb\sigma^2\frac{1-\rho^T}{1-\rho}`,
    :math:`\rho=\max\{1-\gamma\mu\lambda_{\min}^p,\ 1-b/2\}`,
    :math:`\Phi_0=f(W_0)-f^*+\frac{\gamma\lambda_{\max}^p}{b}\mathbb E\|G_0-\nabla f(W_0)\|^2`.
    The floor :math:`2\gamma\lambda_{\max}^pb\sigma^2/(1-\rho)=\max\{\frac{2b\sigma^2\lambda_{\max}^p}{\mu\lambda_{\min}^p},
    4\gamma\lambda_{\max}^p\sigma^2\}` does not vanish with :math:`\gamma` (constant momentum).

    Proof: :math:`\mathbb E\|e_{t+1}\|^2\le(1-b)^2\|e_t\|^2+2(1-b)^2\tilde L^2\gamma^2R_t+2b^2\sigma^2`
    and :math:`c=\gamma\lambda_{\max}^p/b`: error weight :math:`c(\frac b2+(1-b)^2)\le c(1-\frac b2)`,
    movement :math:`1-L\gamma-\frac{4\lambda_{\max}^p(1-b)^2\tilde L^2}b\gamma^2\ge0` (L2), noise
    :math:`2cb^2\sigma^2=2\gamma\lambda_{\max}^pb\sigma^2` per step.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    b = float(momentum)
    gamma = _admissible(gamma, ss.mvr_pl_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, momentum=b), "MVR under PL")
    phi0 = _nonneg("f0_gap", f0_gap) + gamma * lmax / b * _nonneg("G0_err", G0_err)
    rho = _contraction(gamma, _pos("mu", mu), lmin, b)
    return _out(_geometric(T, rho, phi0, 2 * gamma * lmax * b * _nonneg("sigma2", sigma2)), T)


@_theorem("f_gap", 5, "t5-pl")
def qgd_pl(T, *, gamma, L, mu, f0_gap, omega, L_max, n_clients, delta_inf, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-QGD under PL (docs/theory.md#t5-pl; reconstruction).

    Assumptions: as :func:`theory.bounds.qgd_nonconvex`, plus A2 (so :math:`f_{\inf}=f^*`);
    :math:`A=\omega L_{\max}/n_w`, :math:`C=2A\Delta_{\inf}`;
    :math:`0<\gamma\le\min\{1/L,\ \mu\lambda_{\min}^p/(2L\lambda_{\max}^pA)\}`.

    Bounds :math:`\mathbb E[f(W_T)-f^*]\le\rho^T(f(W_0)-f^*)+\frac{L\gamma^2\lambda_{\max}^pC}2\,\frac{1-\rho^T}{1-\rho}`,
    :math:`\rho=1-\gamma\mu\lambda_{\min}^p+L\gamma^2\lambda_{\max}^pA\le1-\gamma\mu\lambda_{\min}^p/2`.

    Proof: the compressors are unbiased and independent of the sketch, so
    :math:`\mathbb E\|\hat HG\|^2=\langle\nabla f,\mathcal H_p\nabla f\rangle+\mathbb E\langle G-\nabla f,\mathcal H_p(G-\nabla f)\rangle`
    and :math:`\mathbb E\|G-\nabla f\|^2\le\frac\omega{n_w^2}\sum_i\|\nabla f_i\|^2\le2A(f-f^*)+C`; the
    descent lemma with :math:`\gamma\le1/L` gives :math:`\mathbb E\delta_{t+1}\le\rho\,\delta_t+\frac{L\gamma^2}2\lambda_{\max}^pC`.
    Attained at :math:`\gamma=1/L` on :math:`f=\frac L2\|W-W^*\|^2`, one client, Rand-k (exact :math:`\omega`).
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    A, _, C = ss.qgd_abc_constants(omega=omega, L_max=L_max, n_clients=n_clients, delta_inf=delta_inf)
    if math.isnan(A) or math.isnan(C):
        raise ValueError("omega, L_max, n_clients, delta_inf: unknown (NaN), needed by the QGD bound")
    mu, L = _pos("mu", mu), _pos("L", L)
    gamma = _admissible(gamma, ss.qgd_pl_stepsize(L=L, mu=mu, A=A, lmin_p=lmin, lmax_p=lmax), "QGD under PL")
    rho = 1.0 - gamma * mu * lmin + L * gamma**2 * lmax * A
    return _out(_geometric(T, rho, _nonneg("f0_gap", f0_gap), L * gamma**2 * lmax * C / 2), T)


@_theorem("f_gap", 6, "t6-pl")
def marina_pl(T, *, gamma, L, L_avg, mu, f0_gap, G0_err, q, omega, n_clients, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-MARINA under PL (docs/theory.md#t6-pl; reconstruction).

    Assumptions: as :func:`theory.bounds.marina_nonconvex`, plus A2;
    :math:`0<\gamma\le 1/(L+\tilde L\sqrt{2\lambda_{\max}^p(1-q)\omega/(qn_w)})`.

    Bounds :math:`\mathbb E[f(W_T)-f^*]\le\rho^T\Phi_0`, :math:`\rho=\max\{1-\gamma\mu\lambda_{\min}^p,\ 1-q/2\}`,
    :math:`\Phi_0=f(W_0)-f^*+\frac{\gamma\lambda_{\max}^p}{q}\|G_0-\nabla f(W_0)\|^2`.

    Proof: as :func:`page_pl` with
    :math:`\mathbb E\|e_{t+1}\|^2\le(1-q)(\|e_t\|^2+\frac{\omega\tilde L^2}{n_w}\gamma^2R_t)`.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    qv = float(q)
    gmax = ss.marina_pl_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, q=qv, omega=omega, n_clients=n_clients)
    gamma = _admissible(gamma, gmax, "MARINA under PL")
    phi0 = _nonneg("f0_gap", f0_gap) + gamma * lmax / qv * _nonneg("G0_err", G0_err)
    return _out(_geometric(T, _contraction(gamma, _pos("mu", mu), lmin, qv), phi0), T)


@_theorem("f_gap", 7, "t7-pl")
def ef21_pl(T, *, gamma, L, L_avg, mu, f0_gap, G0_err, alpha, lmin_p, lmax_p):
    r"""Bernoulli-LoRA-EF21 under PL (docs/theory.md#t7-pl; reconstruction).

    Assumptions: as :func:`theory.bounds.ef21_nonconvex`, plus A2;
    :math:`0<\gamma\le 1/(L+\tilde L\sqrt{2\lambda_{\max}^p\beta/\theta})`.

    Bounds :math:`\mathbb E[f(W_T)-f^*]\le\rho^T\Phi_0`, :math:`\rho=\max\{1-\gamma\mu\lambda_{\min}^p,\ 1-\theta/2\}`,
    :math:`\Phi_0=f(W_0)-f^*+\frac{\gamma\lambda_{\max}^p}{\theta}\frac1{n_w}\sum_i\|G^i_0-\nabla f_i(W_0)\|^2`.

    Proof: :math:`e_t=\frac1{n_w}\sum_i\|G^i_t-\nabla f_i(W_t)\|^2\ge\|G_t-\nabla f(W_t)\|^2`,
    :math:`\mathbb E e_{t+1}\le(1-\theta)e_t+\beta\tilde L^2\gamma^2R_t`, :math:`c=\gamma\lambda_{\max}^p/\theta`:
    error weight :math:`c(1-\theta/2)`, movement cancels by L2.
    """
    T, (lmin, lmax) = _T(T), _lams(lmin_p, lmax_p)
    gamma = _admissible(gamma, ss.ef21_pl_stepsize(L=L, L_avg=L_avg, lmax_p=lmax, alpha=alpha), "EF21 under PL")
    theta, _ = ss.ef21_theta_beta(alpha)
    phi0 = _nonneg("f0_gap", f0_gap) + gamma * lmax / theta * _nonneg("G0_err", G0_err)
    return _out(_geometric(T, _contraction(gamma, _pos("mu", mu), lmin, theta), phi0), T)
