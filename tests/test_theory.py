"""theory/: spectra, admissible stepsizes, bounds (vs exact expectation sequences), dispatch."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import bounds as bd
from theory import stepsizes as ss
from theory.dispatch import Constants, bound_for
from theory.spectra import (isotropic_expected_projection, isotropic_lambda_p, lambda_max_p, lambda_min_p,
                            lambda_p_from_expectations)

NAN = float("nan")
T = np.arange(0, 200)


# --------------------------------------------------------------------------- spectra

def test_lambda_p_mixture_and_isotropic():
    assert lambda_min_p(0.3, 0.1, 0.5) == pytest.approx(0.3 * 0.1 + 0.7 * 0.5)
    assert lambda_max_p(1.0, 0.2, 0.9) == pytest.approx(0.2)
    lmin, lmax = isotropic_lambda_p(0.25, 8, 4, 2)
    assert lmin == lmax == pytest.approx(0.25 * 2 / 8 + 0.75 * 2 / 4)
    for p in (0.0, 0.3, 1.0):  # m = n: r/n for every p
        assert isotropic_lambda_p(p, 6, 6, 3) == pytest.approx((0.5, 0.5))
    assert isotropic_expected_projection(5, 5) == 1.0
    np.testing.assert_allclose(lambda_min_p(np.array([0.0, 1.0]), 0.1, 0.5), [0.5, 0.1])


def test_lambda_p_from_expectations_is_operator_spectrum():
    rng = np.random.default_rng(0)
    m, n, p = 4, 3, 0.4
    EB, EA = np.diag(rng.uniform(0.1, 0.9, m)), np.diag(rng.uniform(0.1, 0.9, n))
    op = p * np.kron(np.eye(n), EB) + (1 - p) * np.kron(EA.T, np.eye(m))  # vec(p EB X + (1-p) X EA)
    ev = np.linalg.eigvalsh(op)
    assert lambda_p_from_expectations(p, EB, EA) == pytest.approx((ev[0], ev[-1]))


def test_spectra_bad_input():
    with pytest.raises(ValueError, match="p"):
        lambda_min_p(1.5, 0.1, 0.1)
    with pytest.raises(ValueError, match="rank"):
        isotropic_lambda_p(0.5, 3, 3, 4)


# --------------------------------------------------------------------------- stepsizes

def test_stepsizes_reduce_to_classical():
    L = 3.0
    assert ss.gd_stepsize(L=L) == ss.sgd_stepsize(L=L) == 1 / L
    assert ss.page_stepsize(L=L, L_avg=7.0, lmax_p=1.0, q=1.0, batch=5) == 1 / L
    assert ss.marina_stepsize(L=L, L_avg=7.0, lmax_p=1.0, q=1.0, omega=4.0, n_clients=3) == 1 / L
    assert ss.marina_stepsize(L=L, L_avg=7.0, lmax_p=1.0, q=0.1, omega=0.0, n_clients=3) == 1 / L
    assert ss.ef21_stepsize(L=L, L_avg=7.0, lmax_p=1.0, alpha=1.0) == 1 / L
    assert ss.mvr_stepsize(L=L, L_avg=7.0, lmax_p=1.0, momentum=1.0) == 1 / L
    assert ss.sgd_abc_stepsize(L=L, B=0.0, lmin_p=1.0, lmax_p=1.0) == 1 / L
    assert ss.qgd_stepsize(L=L, lmin_p=1.0, lmax_p=1.0) == 1 / (2 * L)  # stated theorem: lmin/(2 L lmax B)
    assert ss.subgradient_stepsize() == math.inf
    assert ss.ef21_theta_beta(1.0) == (1.0, 0.0)
    th, be = ss.ef21_theta_beta(0.19)
    assert th == pytest.approx(0.1) and be == pytest.approx(0.81 / 0.1)


def test_classical_page_and_marina_formulas():
    # lmax_p = 1: PAGE 1/(L + Lt sqrt((1-q)/(qb))), MARINA 1/(L + Lt sqrt((1-q) omega/(q n)))
    assert ss.page_stepsize(L=2, L_avg=3, lmax_p=1, q=0.2, batch=4) == pytest.approx(1 / (2 + 3 * math.sqrt(0.8 / 0.8)))
    assert ss.marina_stepsize(L=2, L_avg=3, lmax_p=1, q=0.5, omega=8, n_clients=4) == pytest.approx(1 / (2 + 3 * math.sqrt(2)))


@settings(max_examples=60, deadline=None)
@given(lmax=st.floats(0.01, 1), q=st.floats(0.01, 1), b=st.integers(1, 100), mom=st.floats(0.01, 1),
       alpha=st.floats(0.01, 1), omega=st.floats(0, 50))
def test_stepsizes_at_most_one_over_L_and_monotone(lmax, q, b, mom, alpha, omega):
    L, La = 2.0, 5.0
    steps = [ss.page_stepsize(L=L, L_avg=La, lmax_p=lmax, q=q, batch=b),
             ss.mvr_stepsize(L=L, L_avg=La, lmax_p=lmax, momentum=mom),
             ss.marina_stepsize(L=L, L_avg=La, lmax_p=lmax, q=q, omega=omega, n_clients=3),
             ss.ef21_stepsize(L=L, L_avg=La, lmax_p=lmax, alpha=alpha)]
    assert all(0 < s <= 1 / L for s in steps)
    # a smaller lambda_max^p (smaller sketch) allows a larger stepsize
    assert ss.page_stepsize(L=L, L_avg=La, lmax_p=lmax / 2, q=q, batch=b) >= steps[0]
    assert ss.ef21_stepsize(L=L, L_avg=La, lmax_p=lmax / 2, alpha=alpha) >= steps[3]
    # the biased-estimator lemma: 1 - L g - a^2 g^2 >= 0 at g = 1/(L + a)
    a = La * math.sqrt(lmax * (1 - q) / (q * b))
    g = steps[0]
    assert 1 - L * g - a**2 * g**2 >= -1e-12


def test_stepsizes_nan_and_bad_input():
    assert math.isnan(ss.page_stepsize(L=1, L_avg=NAN, lmax_p=1, q=0.5, batch=1))
    assert math.isnan(ss.sgd_abc_stepsize(L=1, B=NAN, lmin_p=1, lmax_p=1))
    with pytest.raises(ValueError, match="q"):
        ss.page_stepsize(L=1, L_avg=1, lmax_p=1, q=0.0, batch=1)
    with pytest.raises(ValueError, match="alpha"):
        ss.ef21_theta_beta(0.0)
    with pytest.raises(ValueError, match="L"):
        ss.gd_stepsize(L=-1)


def test_polyak_stepsize_vectorised():
    g = ss.polyak_stepsize(np.array([2.0, 0.0, 1.0]), np.array([4.0, 0.0, 2.0]), lmin_p=0.5, lmax_p=1.0)
    np.testing.assert_allclose(g, [0.25, 0.0, 0.25])
    assert ss.polyak_stepsize(1.0, 1.0, lmin_p=0.3, lmax_p=0.3) == 1.0


def test_abc_constants():
    assert ss.qgd_abc_constants(omega=0.0, L_max=NAN, n_clients=3, delta_inf=NAN) == (0.0, 1.0, 0.0)
    A, B, C = ss.qgd_abc_constants(omega=2.0, L_max=3.0, n_clients=4, delta_inf=0.5)
    assert (A, B, C) == pytest.approx((1.5, 1.0, 1.5))
    assert ss.minibatch_abc_constants(L_max=3.0, batch=10, n_samples=10, delta_inf=NAN) == (0.0, 1.0, 0.0)
    A, _, C = ss.minibatch_abc_constants(L_max=3.0, batch=1, n_samples=11, delta_inf=1.0)
    assert A == pytest.approx(3.0) and C == pytest.approx(6.0)


# --------------------------------------------------------------------------- bounds: shape and sanity

L, MU, LAM = 2.0, 0.5, 0.3
CASES = {
    "gd_nonconvex": dict(gamma=1 / L, L=L, delta0=1.0, lmin_p=LAM),
    "gd_pl": dict(gamma=1 / L, L=L, mu=MU, f0_gap=1.0, lmin_p=LAM),
    "sgd_nonconvex": dict(gamma=0.5 / L, L=L, delta0=1.0, sigma2=0.1, lmin_p=LAM, lmax_p=0.4),
    "sgd_pl": dict(gamma=0.5 / L, L=L, mu=MU, f0_gap=1.0, sigma2=0.1, lmin_p=LAM, lmax_p=0.4),
    "sgd_abc_nonconvex": dict(gamma=0.1 / L, L=L, delta0=1.0, A=0.0, B=1.0, C=0.1, lmin_p=LAM, lmax_p=0.4),
    "page_nonconvex": dict(gamma=0.2, L=L, L_avg=3.0, delta0=1.0, G0_err=0.5, q=0.1, batch=4, lmin_p=LAM, lmax_p=LAM),
    "mvr_nonconvex": dict(gamma=0.2, L=L, L_avg=3.0, delta0=1.0, G0_err=0.5, sigma2=0.1, momentum=0.3,
                          lmin_p=LAM, lmax_p=LAM),
    "qgd_nonconvex": dict(gamma=0.1, L=L, delta0=1.0, omega=0.0, L_max=3.0, n_clients=2, delta_inf=0.0,
                          lmin_p=LAM, lmax_p=LAM),
    "marina_nonconvex": dict(gamma=0.2, L=L, L_avg=3.0, delta0=1.0, G0_err=0.0, q=0.5, omega=1.0, n_clients=4,
                             lmin_p=LAM, lmax_p=LAM),
    "ef21_nonconvex": dict(gamma=0.1, L=L, L_avg=3.0, delta0=1.0, G0_err=0.3, alpha=0.5, lmin_p=LAM, lmax_p=LAM),
    "nonsmooth_constant": dict(gamma=0.1, L0=2.0, dist0_sq=4.0, lmin_p=LAM, lmax_p=0.5),
    "nonsmooth_polyak": dict(L0=2.0, dist0_sq=4.0, lmin_p=LAM, lmax_p=0.5),
    "page_pl": dict(gamma=0.15, L=L, L_avg=3.0, mu=MU, f0_gap=1.0, G0_err=0.0, q=0.1, batch=4, lmin_p=LAM,
                    lmax_p=LAM),
    "mvr_pl": dict(gamma=0.15, L=L, L_avg=3.0, mu=MU, f0_gap=1.0, G0_err=0.1, sigma2=0.01, momentum=0.3,
                   lmin_p=LAM, lmax_p=LAM),
    "qgd_pl": dict(gamma=0.1, L=L, mu=MU, f0_gap=1.0, omega=0.5, L_max=3.0, n_clients=2, delta_inf=0.1,
                   lmin_p=LAM, lmax_p=LAM),
    "marina_pl": dict(gamma=0.2, L=L, L_avg=3.0, mu=MU, f0_gap=1.0, G0_err=0.0, q=0.5, omega=1.0, n_clients=4,
                      lmin_p=LAM, lmax_p=LAM),
    "ef21_pl": dict(gamma=0.1, L=L, L_avg=3.0, mu=MU, f0_gap=1.0, G0_err=0.3, alpha=0.5, lmin_p=LAM, lmax_p=LAM),
}


def test_every_theorem_has_a_case():
    assert set(CASES) == set(bd.ALL)
    for fn in bd.ALL.values():
        assert fn.metric in ("f_gap", "avg_grad_norm_sq", "min_grad_norm_sq", "avg_f_gap", "min_f_gap")
        assert f"docs/theory.md#t{fn.item}" in fn.__doc__ and "Assumptions" in fn.__doc__


@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_vectorised_positive_nonincreasing(name):
    fn, kw = bd.ALL[name], CASES[name]
    v = fn(T, **kw)
    assert isinstance(v, np.ndarray) and v.shape == T.shape
    assert isinstance(fn(7, **kw), float)
    np.testing.assert_allclose(v[[3, 50]], [fn(3, **kw), fn(50, **kw)])
    assert fn(np.array([[1, 2], [3, 4]]), **kw).shape == (2, 2)
    assert np.all(v >= 0) and not np.any(np.isnan(v))
    assert np.all(np.diff(v) <= 1e-15 * np.abs(v[1:]))  # A = 0 here: every bound decreases in T
    if fn.metric != "f_gap":
        assert v[0] == math.inf and np.all(np.isfinite(v[1:]))
    else:
        assert v[0] == pytest.approx(kw["f0_gap"] + (v[-1] if name == "sgd_pl" else 0), rel=0.5)
        assert v[0] >= kw["f0_gap"]  # Phi_0 >= f(W0) - f*: the Lyapunov start bounds the metric


@pytest.mark.parametrize("name", sorted(n for n in CASES if "gamma" in CASES[n] and "nonsmooth" not in n))
def test_bound_refuses_inadmissible_stepsize(name):
    kw = dict(CASES[name], gamma=1.5 / L)
    with pytest.raises(ValueError, match="gamma"):
        bd.ALL[name](T, **kw)


def test_bounds_bad_input():
    with pytest.raises(ValueError, match="T"):
        bd.gd_pl(np.array([1, -1]), **CASES["gd_pl"])
    with pytest.raises(ValueError, match="T"):
        bd.gd_pl(1.5, **CASES["gd_pl"])
    with pytest.raises(ValueError, match="factor"):
        bd.nonsmooth_polyak(3, **dict(CASES["nonsmooth_polyak"], factor=2.0))
    with pytest.raises(ValueError, match="lmin_p"):
        bd.gd_nonconvex(3, **dict(CASES["gd_nonconvex"], lmin_p=0.0))


def test_abc_growth_and_overflow():
    kw = dict(CASES["sgd_abc_nonconvex"], A=50.0)
    v = bd.sgd_abc_nonconvex(np.array([1, 10, 10**7]), **kw)
    assert v[2] == math.inf and v[1] > 0
    assert bd.sgd_abc_nonconvex(5, **dict(kw, delta0=0.0, C=0.0)) == 0.0


def test_polyak_factor_one_is_stated_bound():
    kw = CASES["nonsmooth_polyak"]
    v = bd.nonsmooth_polyak(np.array([1, 4]), **kw)
    np.testing.assert_allclose(v, 2.0 * 2.0 * math.sqrt(0.5) / LAM / np.sqrt([1, 4]))
    assert np.all(bd.nonsmooth_polyak(4, **dict(kw, factor=0.5)) > v[1])


# --------------------------------------------------------------------------- exact quadratic case
# f(W) = (L/2)||W - W*||^2, E H = lam I on both sides: with X = W - W* and c = gamma L,
#   E||(I - c H) X||^2 = (1 - (2c - c^2) lam) ||X||^2,  E<(I - cH)X, H e> = (1 - c) lam <X, e>.

GAMMA_FACTORS = [0.05, 0.3, 0.7, 0.99, 1.0]
LAMBDAS = [0.02, 0.25, 0.5, 1.0]


def _gd_sequence(Tmax, c, lam, f0, L, sigma2=0.0):
    """E f(W_t), t = 0..Tmax, GD (sigma2 = 0) or SGD with additive noise of variance sigma2."""
    rho = 1 - (2 * c - c * c) * lam
    f = np.empty(Tmax + 1)
    f[0] = f0
    for t in range(Tmax):
        f[t + 1] = rho * f[t] + L * (c / L) ** 2 * lam * sigma2 / 2
    return f


def _running_avg(x):
    """(1/T) sum_{t<T} x_t for T = 0..len(x)-1 (T = 0: NaN)."""
    out = np.full(len(x), np.nan)
    out[1:] = np.cumsum(x)[:-1] / np.arange(1, len(x))
    return out


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("factor", GAMMA_FACTORS)
def test_gd_bounds_dominate_exact_quadratic(lam, factor):
    Lq, f0 = 4.0, 3.0
    gamma = factor / Lq
    f = _gd_sequence(len(T) - 1, factor, lam, f0, Lq)
    pl = bd.gd_pl(T, gamma=gamma, L=Lq, mu=Lq, f0_gap=f0, lmin_p=lam)
    assert np.all(f <= pl * (1 + 1e-12))
    nc = bd.gd_nonconvex(T, gamma=gamma, L=Lq, delta0=f0, lmin_p=lam)
    assert np.all(_running_avg(2 * Lq * f)[1:] <= nc[1:] * (1 + 1e-12))
    if factor == 1.0:  # attained: (1 - lam)^T f0 on both sides
        np.testing.assert_allclose(f, pl, rtol=1e-12, atol=0)


def test_gd_pl_tightness_exactly_one_through_dispatch():
    Lq, lam, f0 = 3.0, 0.25, 2.0
    c = Constants(L=Lq, mu=Lq, f0_gap=f0, delta0=f0, lmin_p=lam, lmax_p=lam)
    res = bound_for("gd", iterations=T, gamma=1.0 / Lq, c=c)
    assert res.ok and res.metric == "f_gap"
    np.testing.assert_allclose(_gd_sequence(len(T) - 1, 1.0, lam, f0, Lq) / res.values, 1.0, rtol=1e-12)


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("factor", GAMMA_FACTORS)
def test_sgd_bounds_dominate_exact_quadratic(lam, factor):
    Lq, f0, s2 = 4.0, 3.0, 0.7
    gamma = factor / Lq
    f = _gd_sequence(len(T) - 1, factor, lam, f0, Lq, sigma2=s2)
    kw = dict(gamma=gamma, L=Lq, sigma2=s2, lmin_p=lam, lmax_p=lam)
    assert np.all(f <= bd.sgd_pl(T, mu=Lq, f0_gap=f0, **kw) * (1 + 1e-12))
    nc = bd.sgd_nonconvex(T, delta0=f0, **kw)
    assert np.all(_running_avg(2 * Lq * f)[1:] <= nc[1:] * (1 + 1e-12))
    # ABC form: E||g||^2 = ||grad f||^2 + s2, i.e. A = 0, B = 1, C = s2; gamma <= 1/(2L) here
    if gamma <= ss.sgd_abc_stepsize(L=Lq, B=1.0, lmin_p=lam, lmax_p=lam):
        abc = bd.sgd_abc_nonconvex(T, delta0=f0, A=0.0, B=1.0, C=s2, **{k: kw[k] for k in kw if k != "sigma2"})
        assert np.all(np.minimum.accumulate(2 * Lq * f)[:-1] <= abc[1:] * (1 + 1e-12))


def _page_sequence(Tmax, gamma, Lq, lam, q, X0sq, Xe, e2):
    """E||grad f(W_t)||^2 of PAGE on f = mean_i (L/2)||W - W*||^2 (identical f_i: the minibatch
    difference is exact) with G_0 = grad f(W_0) + e0; the error stays e0 until the first
    full-gradient coin. a = E[||X||^2 s], b = E[<X, e0> s], c = E[||X||^2 (1 - s)], s = [e_t = e0]."""
    cg = gamma * Lq
    rho = 1 - (2 * cg - cg * cg) * lam
    a, b, c, pi = X0sq, Xe, 0.0, 1.0
    out = [Lq**2 * (a + c)]
    for _ in range(Tmax):
        U = rho * a + gamma**2 * lam * e2 * pi - 2 * gamma * (1 - cg) * lam * b
        a, b, c, pi = ((1 - q) * U, (1 - q) * ((1 - cg * lam) * b - gamma * lam * e2 * pi),
                       rho * c + q * U, (1 - q) * pi)
        out.append(Lq**2 * (a + c))
    return np.array(out)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("q", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("e_scale", [-3.0, 0.0, 0.5, 4.0])
def test_page_bound_dominates_exact_quadratic_with_initial_error(lam, q, e_scale):
    Lq, X0sq, batch = 2.0, 1.5, 3
    e2 = e_scale**2 * Lq**2 * X0sq  # e0 = e_scale * L * X0 (a multiple of the gradient)
    Xe = e_scale * Lq * X0sq
    gamma = ss.page_stepsize(L=Lq, L_avg=Lq, lmax_p=lam, q=q, batch=batch)
    g2 = _page_sequence(len(T) - 1, gamma, Lq, lam, q, X0sq, Xe, e2)
    bound = bd.page_nonconvex(T, gamma=gamma, L=Lq, L_avg=Lq, delta0=Lq / 2 * X0sq, G0_err=e2, q=q, batch=batch,
                              lmin_p=lam, lmax_p=lam)
    assert np.all(_running_avg(g2)[1:] <= bound[1:] * (1 + 1e-12))
    if q == 1.0:  # MARINA with q = 1 is the same bound
        m = bd.marina_nonconvex(T, gamma=gamma, L=Lq, L_avg=Lq, delta0=Lq / 2 * X0sq, G0_err=e2, q=q, omega=3.0,
                                n_clients=2, lmin_p=lam, lmax_p=lam)
        np.testing.assert_allclose(m, bound)


def _mvr_sequence(Tmax, gamma, Lq, lam, b, s2, X0sq, e0sq):
    """E||grad f(W_t)||^2 of MVR on f = (L/2)||W - W*||^2 with g(W; xi) = grad f(W) + xi,
    E||xi||^2 = s2 (same xi at both points): e_{t+1} = (1 - b) e_t + b xi_{t+1}, e_0 independent of X_0."""
    cg = gamma * Lq
    rho = 1 - (2 * cg - cg * cg) * lam
    x2, xe, ee = X0sq, 0.0, e0sq
    out = [Lq**2 * x2]
    for _ in range(Tmax):
        x2n = rho * x2 + gamma**2 * lam * ee - 2 * gamma * (1 - cg) * lam * xe
        xen = (1 - b) * ((1 - cg * lam) * xe - gamma * lam * ee)
        ee = (1 - b) ** 2 * ee + b * b * s2
        x2, xe = x2n, xen
        out.append(Lq**2 * x2)
    return np.array(out)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("b", [0.05, 0.3, 1.0])
def test_mvr_bound_dominates_exact_quadratic(lam, b):
    Lq, s2, X0sq = 2.0, 0.4, 1.0
    gamma = ss.mvr_stepsize(L=Lq, L_avg=Lq, lmax_p=lam, momentum=b)
    g2 = _mvr_sequence(len(T) - 1, gamma, Lq, lam, b, s2, X0sq, s2)
    bound = bd.mvr_nonconvex(T, gamma=gamma, L=Lq, L_avg=Lq, delta0=Lq / 2 * X0sq, G0_err=s2, sigma2=s2,
                             momentum=b, lmin_p=lam, lmax_p=lam)
    assert np.all(_running_avg(g2)[1:] <= bound[1:] * (1 + 1e-12))


def test_identity_compressor_bounds_dominate_gd():
    """EF21 with alpha = 1 and QGD with omega = 0 are GD: their bounds dominate the exact GD sequence."""
    Lq, lam, f0 = 2.0, 0.4, 1.0
    f = _gd_sequence(len(T) - 1, 1.0, lam, f0, Lq)
    ef = bd.ef21_nonconvex(T, gamma=1 / Lq, L=Lq, L_avg=5.0, delta0=f0, G0_err=0.0, alpha=1.0, lmin_p=lam, lmax_p=lam)
    np.testing.assert_allclose(ef, bd.gd_nonconvex(T, gamma=1 / Lq, L=Lq, delta0=f0, lmin_p=lam))
    qg = bd.qgd_nonconvex(T, gamma=0.5 / Lq, L=Lq, delta0=f0, omega=0.0, L_max=9.0, n_clients=2, delta_inf=0.0,
                          lmin_p=lam, lmax_p=lam)
    f_half = _gd_sequence(len(T) - 1, 0.5, lam, f0, Lq)
    assert np.all(np.minimum.accumulate(2 * Lq * f_half)[:-1] <= qg[1:])
    assert np.all(_running_avg(2 * Lq * f)[1:] <= ef[1:] * (1 + 1e-12))


def test_nonsmooth_bounds_dominate_a_simulation():
    """f(W) = L0 ||W||_F, Gaussian rank-1 sketches (E H = (r/d) I), numpy only."""
    rng = np.random.default_rng(1)
    m = n = 3
    R, steps, L0, p = 4000, 60, 2.0, 0.5
    lam = p / m + (1 - p) / n
    X = np.tile(np.eye(m)[None], (R, 1, 1))
    dist0_sq = float(np.sum(X[0] ** 2))
    gamma = math.sqrt(dist0_sq) / (L0 * math.sqrt(steps))

    def project(X):
        left = rng.random(R) < p
        v = rng.standard_normal((R, m))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        HB = np.einsum("ri,rj,rjk->rik", v, v, X)
        HA = np.einsum("rij,rj,rk->rik", X, v, v)
        return np.where(left[:, None, None], HB, HA)

    for rule in ("constant", "polyak"):
        W = X.copy()
        f = np.empty((R, steps + 1))
        for t in range(steps + 1):
            norm = np.linalg.norm(W, axis=(1, 2))
            f[:, t] = L0 * norm
            G = L0 * W / np.maximum(norm, 1e-300)[:, None, None]
            g = gamma if rule == "constant" else (f[:, t] / L0**2)[:, None, None]
            W = W - g * project(G)
        its = np.arange(steps + 1)
        if rule == "constant":
            stat = _running_avg(f.mean(0))[1:]
            bound = bd.nonsmooth_constant(its, gamma=gamma, L0=L0, dist0_sq=dist0_sq, lmin_p=lam, lmax_p=lam)[1:]
        else:
            stat = np.minimum.accumulate(f.mean(0))[:-1]
            bound = bd.nonsmooth_polyak(its, L0=L0, dist0_sq=dist0_sq, lmin_p=lam, lmax_p=lam)[1:]
        assert np.all(stat <= bound), rule


# --------------------------------------------------------------------------- dispatch

BASE = Constants(L=2.0, mu=0.5, f0_gap=1.0, delta0=1.0, lmin_p=0.3, lmax_p=0.3)


def test_dispatch_prefers_pl_then_nonconvex():
    r = bound_for("gd", iterations=T, gamma=0.5, c=BASE)
    assert r.ok and r.metric == "f_gap" and r.theorem.startswith("gd_pl")
    np.testing.assert_allclose(r.values, bd.gd_pl(T, gamma=0.5, L=2.0, mu=0.5, f0_gap=1.0, lmin_p=0.3))
    r = bound_for("gd", iterations=T, gamma=0.5, c=BASE.replace(mu=NAN))
    assert r.ok and r.metric == "avg_grad_norm_sq" and r.values[0] == math.inf
    assert r.gamma_max == 0.5


def test_dispatch_accepts_factor_one_despite_rounding():
    for Lq in (3.0, 49.0, 0.1 + 0.2, 1e-3 * 7):
        r = bound_for("gd", iterations=[0, 1], gamma=1.0 / Lq, c=BASE.replace(L=Lq, mu=Lq))
        assert r.ok, r.status


def test_dispatch_not_applicable_cases():
    cases = [
        ("gd", dict(gamma=0.6), BASE, "exceeds the admissible"),
        ("gd", dict(gamma=0.5, stepsize_rule="polyak"), BASE, "Polyak"),
        ("gd", dict(gamma=0.5, method="cola"), BASE, "cola"),
        ("gd", dict(gamma=0.5), BASE.replace(L=NAN), "L"),
        ("page", dict(gamma=0.1), BASE, "unknown"),
        ("sgd", dict(gamma=0.1), BASE, "sigma2"),
        ("marina", dict(gamma=0.1), BASE, "unknown"),
        ("subgradient", dict(gamma=0.1), BASE, "L0"),
        ("gd", dict(gamma=0.0), BASE, "gamma"),
        ("subgradient", dict(gamma=0.1, stepsize_rule="polyak", polyak_factor=2.5),
         BASE.replace(L0=1.0, dist0_sq=1.0), "factor"),
    ]
    for variant, kw, c, word in cases:
        r = bound_for(variant, iterations=T, c=c, **kw)
        assert r.status.startswith("not applicable: ") and word in r.status, (variant, r.status)
        assert np.all(np.isnan(r.values)) and r.values.shape == T.shape


def test_dispatch_fpft_and_variants():
    c = BASE.replace(lmin_p=NAN, lmax_p=NAN, mu=NAN)
    r = bound_for("fpft", iterations=[2], gamma=0.5, c=c)
    assert r.ok and r.values[0] == pytest.approx(2 * 1.0 / (0.5 * 1.0 * 2))
    assert bound_for("gd", iterations=[2], gamma=0.5, c=c, method="fpft").values[0] == r.values[0]
    assert not bound_for("gd", iterations=[2], gamma=0.5, c=c).ok  # lmin_p unknown
    # sgd: sigma2 -> PL; finite-sum ABC constants otherwise
    r = bound_for("sgd", iterations=T, gamma=0.5, c=BASE.replace(sigma2=0.1))
    assert r.ok and r.metric == "f_gap" and r.theorem.startswith("sgd_pl")
    c_fs = BASE.replace(L_max=3.0, batch=5, n_samples=50, delta_inf=0.2)
    r = bound_for("sgd", iterations=T, gamma=0.1, c=c_fs)
    assert r.ok and r.metric == "min_grad_norm_sq"
    NONPL = BASE.replace(mu=NAN)  # the PL versions: tests/test_pl_bounds.py
    # page: q defaults to b/(b+N); L_avg falls back to L_max
    r = bound_for("page", iterations=T, gamma=0.05, c=c_fs.replace(G0_err=0.0, mu=NAN))
    assert r.ok and r.metric == "avg_grad_norm_sq"
    gmax = ss.page_stepsize(L=2.0, L_avg=3.0, lmax_p=0.3, q=5 / 55, batch=5)
    assert r.gamma_max == pytest.approx(gmax)
    # mvr without finite sum: L_avg falls back to L
    r = bound_for("mvr", iterations=T, gamma=0.1, c=NONPL.replace(sigma2=0.1, momentum=0.5, G0_err=0.1))
    assert r.ok and r.gamma_max == pytest.approx(ss.mvr_stepsize(L=2.0, L_avg=2.0, lmax_p=0.3, momentum=0.5))
    # qgd with the identity compressor needs neither L_max nor delta_inf
    r = bound_for("qgd", iterations=T, gamma=0.25, c=NONPL.replace(omega=0.0))
    assert r.ok and r.metric == "min_grad_norm_sq"
    assert not bound_for("qgd", iterations=T, gamma=0.5, c=NONPL.replace(omega=0.0)).ok  # 1/(2L) for B = 1
    r = bound_for("ef21", iterations=T, gamma=0.5, c=NONPL.replace(alpha=1.0, L_avg=9.0, G0_err=0.0))
    assert r.ok and r.gamma_max == 0.5
    r = bound_for("marina", iterations=T, gamma=0.5,
                  c=NONPL.replace(q=1.0, omega=3.0, n_clients=4, L_avg=9.0, G0_err=0.0))
    assert r.ok
    r = bound_for("subgradient", iterations=T, gamma=123.0, c=BASE.replace(L0=1.0, dist0_sq=1.0))
    assert r.ok and r.metric == "avg_f_gap"
    r = bound_for("subgradient", iterations=T, gamma=NAN, stepsize_rule="polyak", c=BASE.replace(L0=1.0, dist0_sq=1.0))
    assert r.ok and r.metric == "min_f_gap"


def test_dispatch_bad_input_raises():
    with pytest.raises(ValueError, match="variant"):
        bound_for("adam", iterations=T, gamma=0.1, c=BASE)
    with pytest.raises(ValueError, match="stepsize_rule"):
        bound_for("gd", iterations=T, gamma=0.1, stepsize_rule="cosine", c=BASE)
    with pytest.raises(ValueError, match="iterations"):
        bound_for("gd", iterations=[-1], gamma=0.1, c=BASE)
    with pytest.raises(ValueError, match="L"):
        Constants(L="two")
    assert math.isnan(Constants(L=None).L)


def test_theory_imports_neither_torch_nor_solvers():
    code = ("import sys, theory, theory.bounds, theory.dispatch, theory.verify; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'solvers', 'experiments')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
