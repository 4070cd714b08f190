"""PL versions of PAGE, MVR, QGD, MARINA, EF21 (docs/theory.md#t3-pl ... #t7-pl):
exact reductions where they are attained, exact sequences they must dominate, a
Monte Carlo of the suite's solvers where QGD's bound is attained, the admissible
stepsizes, dispatch (PL preferred, fallback, vacuous_after), and the measured
means of the real solvers through the job layer and the verifier."""
import math

import numpy as np
import pytest
import torch

from experiments.conf.schema import job_config
from experiments.job import execute
from solvers.compressors import RandK
from solvers.distributed import QGD, bernoulli_lora_method
from solvers.engine import run
from tests.oracles import Isotropic
from tests.test_theory import _gd_sequence, _mvr_sequence, _page_sequence
from theory import bounds as bd
from theory import stepsizes as ss
from theory.dispatch import Constants, bound_for, vacuous_after
from theory.spectra import isotropic_lambda_p
from theory.verify import verify

NAN = float("nan")
T = np.arange(0, 61)
PL_FNS = ("page_pl", "mvr_pl", "qgd_pl", "marina_pl", "ef21_pl")


# --------------------------------------------------------------------------- exact reductions (attained)

@pytest.mark.parametrize("lam", [0.05, 0.25, 0.5])
def test_reductions_to_gd_are_attained_at_one_over_L(lam):
    """q = 1 (PAGE, MARINA), b = 1 with sigma2 = 0 (MVR), omega = 0 (QGD), alpha = 1 (EF21) are GD;
    with gamma mu lmin_p <= 1/2 every PL bound is gd_pl, and gd_pl is attained on
    f = (L/2)||W - W*||^2 at gamma = 1/L: E f_T = (1 - lam)^T f_0."""
    Lq, f0 = 2.0, 3.0
    exact = _gd_sequence(len(T) - 1, 1.0, lam, f0, Lq)
    pl = dict(gamma=1 / Lq, L=Lq, mu=Lq, f0_gap=f0, lmin_p=lam, lmax_p=lam)
    bounds = [
        bd.page_pl(T, L_avg=5.0, G0_err=0.0, q=1.0, batch=3, **pl),
        bd.marina_pl(T, L_avg=5.0, G0_err=0.0, q=1.0, omega=4.0, n_clients=2, **pl),
        bd.mvr_pl(T, L_avg=5.0, G0_err=0.0, sigma2=0.0, momentum=1.0, **pl),
        bd.qgd_pl(T, omega=0.0, L_max=9.0, n_clients=2, delta_inf=0.3, **pl),
        bd.ef21_pl(T, L_avg=5.0, G0_err=0.0, alpha=1.0, **pl),
    ]
    for b in bounds:
        np.testing.assert_allclose(b, exact, rtol=1e-12, atol=0)
        # the check can fail: a bound 1% lower is below the exact sequence
        assert np.any(exact[1:] > 0.99 * b[1:])


def test_contraction_of_the_error_caps_the_rate():
    """With gamma mu lmin_p > 1/2 the factor is max{1 - gamma mu lmin_p, 1 - q/2} = 1/2 (FPFT, q = 1)."""
    v = bd.page_pl(np.array([0, 1, 2]), gamma=0.5, L=2.0, L_avg=1.0, mu=2.0, f0_gap=1.0, G0_err=0.0, q=1.0,
                   batch=1, lmin_p=1.0, lmax_p=1.0)
    np.testing.assert_allclose(v, [1.0, 0.5, 0.25])


# --------------------------------------------------------------------------- exact sequences dominated

@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("q", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("e_scale", [-3.0, 0.0, 0.5, 4.0])
def test_page_and_marina_pl_dominate_exact_quadratic(lam, q, e_scale):
    """PAGE on identical f_i = (L/2)||W - W*||^2 with an initial error e0 (a multiple of the gradient):
    E f_t = E||grad f||^2 / (2L) from the exact second-moment recursion of tests/test_theory.py."""
    Lq, X0sq, batch = 2.0, 1.5, 3
    e2, Xe = e_scale**2 * Lq**2 * X0sq, e_scale * Lq * X0sq
    gamma = ss.page_pl_stepsize(L=Lq, L_avg=Lq, lmax_p=lam, q=q, batch=batch)
    f = _page_sequence(len(T) - 1, gamma, Lq, lam, q, X0sq, Xe, e2) / (2 * Lq)
    kw = dict(gamma=gamma, L=Lq, L_avg=Lq, mu=Lq, f0_gap=Lq / 2 * X0sq, G0_err=e2, q=q, lmin_p=lam, lmax_p=lam)
    bound = bd.page_pl(T, batch=batch, **kw)
    assert np.all(f <= bound * (1 + 1e-12))
    # MARINA with omega / n_w = 1 / b has the same stepsize and the same bound
    np.testing.assert_allclose(bd.marina_pl(T, omega=2.0, n_clients=2 * batch, **kw), bound)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("b", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("s2", [0.0, 0.4])
def test_mvr_pl_dominates_exact_quadratic(lam, b, s2):
    Lq, X0sq, e0 = 2.0, 1.0, 0.4
    gamma = ss.mvr_pl_stepsize(L=Lq, L_avg=Lq, lmax_p=lam, momentum=b)
    f = _mvr_sequence(len(T) - 1, gamma, Lq, lam, b, s2, X0sq, e0) / (2 * Lq)
    bound = bd.mvr_pl(T, gamma=gamma, L=Lq, L_avg=Lq, mu=Lq, f0_gap=Lq / 2 * X0sq, G0_err=e0, sigma2=s2,
                      momentum=b, lmin_p=lam, lmax_p=lam)
    assert np.all(f <= bound * (1 + 1e-12))


def _qgd_exact(Tmax, c, lam, omega, f0):
    """E f_t of QGD on f = (L/2)||W - W*||^2, one client, E||Q(x) - x||^2 = omega ||x||^2 exactly,
    E H = lam I: E||X - gamma H Q(L X)||^2 = (1 - 2 c lam + c^2 lam (1 + omega)) ||X||^2, c = gamma L."""
    return f0 * (1 - 2 * c * lam + c * c * lam * (1 + omega)) ** np.arange(Tmax + 1)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("omega", [0.0, 0.2, 0.5, 3.0])
@pytest.mark.parametrize("factor", [0.05, 0.5, 1.0])
def test_qgd_pl_dominates_exact_and_is_attained(lam, omega, factor):
    Lq, f0 = 2.0, 1.0
    gmax = ss.qgd_pl_stepsize(L=Lq, mu=Lq, A=omega * Lq, lmin_p=lam, lmax_p=lam)
    gamma = factor * gmax
    kw = dict(gamma=gamma, L=Lq, mu=Lq, f0_gap=f0, omega=omega, L_max=Lq, n_clients=1, delta_inf=0.0,
              lmin_p=lam, lmax_p=lam)
    exact = _qgd_exact(len(T) - 1, gamma * Lq, lam, omega, f0)
    bound = bd.qgd_pl(T, **kw)
    assert np.all(exact <= bound * (1 + 1e-12))
    if gamma * Lq == pytest.approx(1.0, rel=1e-14):  # omega <= 1/2 and factor 1: attained
        np.testing.assert_allclose(exact, bound, rtol=1e-12)


def test_qgd_pl_attained_by_the_solvers():
    """Monte Carlo with the suite's QGD + Rand-k + Bernoulli-LoRA (Gaussian sketches): the mean of
    f(W_T) over 400 seeds equals the bound within its 99.9% confidence interval (ratio 1)."""
    m, n, r, p, d, k = 4, 3, 1, 0.5, 12, 9  # omega = d/k - 1 = 1/3 <= 1/2: gamma = 1/L is admissible
    Lq, S, steps = 2.0, 400, 6

    class OneClient(Isotropic):
        n_clients = 1

        def client_grads(self, W):
            return self.grad(W)[:, None]

    prob = OneClient(m, n, L=Lq, seed=3)
    lam = isotropic_lambda_p(p=p, m=m, n=n, rank=r)[0]
    meth = bernoulli_lora_method(estimator=QGD(RandK(k=k)), p=p, rank=r, sketch="gaussian", stepsize=1 / Lq)
    traj = run(meth, prob, prob.W0, list(range(S)), steps=steps, eval_every=steps)
    fT = traj["loss"][:, -1].numpy() if torch.is_tensor(traj["loss"]) else np.asarray(traj["loss"])[:, -1]
    f0 = float(prob.loss(prob.W0[None])[0])
    bound = bd.qgd_pl(steps, gamma=1 / Lq, L=Lq, mu=Lq, f0_gap=f0, omega=d / k - 1, L_max=Lq, n_clients=1,
                      delta_inf=0.0, lmin_p=lam, lmax_p=lam)
    ratio = fT / bound
    half = 3.3 * ratio.std(ddof=1) / math.sqrt(S)
    assert abs(ratio.mean() - 1.0) <= half, (ratio.mean(), half)


# --------------------------------------------------------------------------- admissible stepsizes

def test_pl_stepsizes_reduce_and_are_at_most_the_nonconvex_ones():
    Lq, La, lam = 2.0, 3.0, 0.3
    assert ss.page_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, q=1.0, batch=4) == 1 / Lq
    assert ss.mvr_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, momentum=1.0) == 1 / Lq
    assert ss.ef21_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, alpha=1.0) == 1 / Lq
    assert ss.qgd_pl_stepsize(L=Lq, mu=0.5, A=0.0, lmin_p=lam, lmax_p=lam) == 1 / Lq
    assert ss.qgd_pl_stepsize(L=Lq, mu=0.5, A=2.0, lmin_p=lam, lmax_p=lam) == pytest.approx(0.5 / (2 * Lq * 2.0))
    for q in (0.01, 0.3, 0.9):
        a = ss.page_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, q=q, batch=4)
        assert a == pytest.approx(1 / (Lq + La * math.sqrt(2 * lam * (1 - q) / (4 * q))))
        assert a < ss.page_stepsize(L=Lq, L_avg=La, lmax_p=lam, q=q, batch=4)
        assert ss.marina_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, q=q, omega=2.0, n_clients=3) < \
            ss.marina_stepsize(L=Lq, L_avg=La, lmax_p=lam, q=q, omega=2.0, n_clients=3)
    assert ss.mvr_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, momentum=0.2) == \
        pytest.approx(1 / (Lq + 2 * La * 0.8 * math.sqrt(lam / 0.2)))
    assert ss.ef21_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, alpha=0.3) < \
        ss.ef21_stepsize(L=Lq, L_avg=La, lmax_p=lam, alpha=0.3)
    assert math.isnan(ss.qgd_pl_stepsize(L=Lq, mu=NAN, A=1.0, lmin_p=lam, lmax_p=lam))
    with pytest.raises(ValueError, match="mu"):
        ss.qgd_pl_stepsize(L=Lq, mu=-1.0, A=1.0, lmin_p=lam, lmax_p=lam)
    with pytest.raises(ValueError, match="q"):
        ss.page_pl_stepsize(L=Lq, L_avg=La, lmax_p=lam, q=0.0, batch=4)


@pytest.mark.parametrize("name", PL_FNS)
def test_pl_bound_refuses_stepsize_above_its_range(name):
    from tests.test_theory import CASES
    kw = CASES[name]
    fn = bd.ALL[name]
    assert fn.metric == "f_gap" and fn.anchor == f"t{fn.item}-pl"
    assert f"docs/theory.md#{fn.anchor}" in fn.__doc__ and "reconstruction" in fn.__doc__
    fn(T, **kw)  # admissible
    with pytest.raises(ValueError, match="gamma: .* exceeds the admissible"):
        fn(T, **dict(kw, gamma=kw["gamma"] * 10))


# --------------------------------------------------------------------------- dispatch

FS = Constants(L=2.0, mu=0.5, f0_gap=1.0, delta0=1.0, lmin_p=0.3, lmax_p=0.3, L_max=3.0, batch=5,
               n_samples=50, delta_inf=0.2, G0_err=0.0, sigma2=0.1, momentum=0.5, omega=1.0, n_clients=4,
               q=0.3, alpha=0.5)


@pytest.mark.parametrize("variant,fn", [("page", "page_pl"), ("mvr", "mvr_pl"), ("qgd", "qgd_pl"),
                                        ("marina", "marina_pl"), ("ef21", "ef21_pl")])
def test_dispatch_prefers_pl_and_falls_back_above_its_stepsize(variant, fn):
    r = bound_for(variant, iterations=T, gamma=0.01, c=FS)
    assert r.ok and r.metric == "f_gap" and r.theorem == f"{fn} (docs/theory.md#{bd.ALL[fn].anchor})", r
    nc = bound_for(variant, iterations=T, gamma=0.01, c=FS.replace(mu=NAN))
    assert nc.ok and nc.metric != "f_gap"
    # just above the PL range but inside the non-convex one: the non-convex theorem
    gamma = r.gamma_max * 1.001
    if gamma <= nc.gamma_max:
        fb = bound_for(variant, iterations=T, gamma=gamma, c=FS)
        assert fb.ok and fb.theorem == nc.theorem
    # above both: not applicable, and the status names the PL reason too
    na = bound_for(variant, iterations=T, gamma=10.0, c=FS)
    assert na.status.startswith("not applicable") and "PL version" in na.status and na.vacuous_after is None


def test_dispatch_pl_values_match_the_function():
    r = bound_for("page", iterations=T, gamma=0.01, c=FS)
    np.testing.assert_allclose(r.values, bd.page_pl(T, gamma=0.01, L=2.0, L_avg=3.0, mu=0.5, f0_gap=1.0, G0_err=0.0,
                                                    q=0.3, batch=5, lmin_p=0.3, lmax_p=0.3))
    r = bound_for("page", iterations=T, gamma=0.01, c=FS.replace(q=NAN))  # q = b / (b + N)
    assert r.ok and r.gamma_max == pytest.approx(ss.page_pl_stepsize(L=2.0, L_avg=3.0, lmax_p=0.3, q=5 / 55,
                                                                       batch=5))


def test_vacuous_after():
    # informative PL bound
    r = bound_for("gd", iterations=T, gamma=0.5, c=FS)
    assert r.ok and r.vacuous_after is None
    # MVR whose noise floor exceeds f(W0) - f*: vacuous from the first point on
    r = bound_for("mvr", iterations=[0, 5, 10, 5, 0], gamma=0.01, c=FS.replace(sigma2=100.0))
    assert r.ok and r.vacuous_after == 5
    # growing ABC bound: vacuous from the point where it starts growing
    its = np.array([0, 1, 10, 100, 1000, 10**5])
    vals = bd.sgd_abc_nonconvex(its, gamma=0.05, L=2.0, delta0=1.0, A=50.0, B=1.0, C=0.0, lmin_p=0.3, lmax_p=0.3)
    k = vacuous_after(its, vals)
    j = list(its).index(k)
    assert vals[j] > vals[1:j].min() and np.all(vals[j:] >= vals[1:j].min())
    # gradient metric with grad0_sq known: 2 delta0 / (gamma lmin T) >= grad0_sq until T large
    r = bound_for("gd", iterations=[0, 1, 2, 1000], gamma=0.5, c=FS.replace(mu=NAN, grad0_sq=1.0))
    assert r.vacuous_after is None and bound_for("gd", iterations=[0, 1, 2], gamma=0.5,
                                                 c=FS.replace(mu=NAN, grad0_sq=1.0)).vacuous_after == 1
    assert vacuous_after([0], [1.0], 0.5) is None
    assert vacuous_after([0, 3, 6], [2.0, 1.0, np.inf]) == 6


# --------------------------------------------------------------------------- measured (real solvers)

LOGI = {"problem.m": 3, "problem.n": 5, "problem.n_samples": 60, "problem.lam": 0.3}
FED = dict(LOGI, **{"problem.n_clients": 4, "problem.heterogeneity": 0.5})
MEASURED = {
    "page": (LOGI, {"estimator.batch": 6, "stepsize.factor": 0.2}),
    "mvr": ({"problem.m": 6, "problem.n": 4, "problem.mu": 1.0, "problem.L": 5.0},
            {"estimator.batch": None, "estimator.noise": 0.3, "estimator.momentum": 0.5, "stepsize.factor": 0.3}),
    "qgd": (FED, {"compressor": "randk", "compressor.k": 12, "stepsize.factor": 0.15}),
    "marina": (FED, {"compressor": "randk", "compressor.k": 5, "estimator.q": 0.3, "stepsize.factor": 0.3}),
    "ef21": (FED, {"compressor": "topk", "compressor.k": 5, "stepsize.factor": 0.1}),
}


@pytest.mark.parametrize("estimator", sorted(MEASURED))
def test_pl_bounds_hold_on_the_solvers(estimator):
    prob, extra = MEASURED[estimator]
    problem = "quadratic" if "problem.mu" in prob else "logistic"
    table, _ = execute(job_config(problem=problem, estimator=estimator, **prob, **extra,
                                  **{"method.p": 0.4, "method.rank": 1}, steps=40, seeds=40, eval_every=10,
                                  device="cpu", progress=False))
    assert (table["bound_status"] == "ok").all(), table["bound_status"].iloc[0]
    assert (table["bound_metric"] == "f_gap").all()
    v = verify(table).iloc[0]
    assert v["verdict"] == "holds", v.to_dict()
    print(estimator, "tightness", v["tightness"])
    assert 0.05 < v["tightness"] <= 1.0, v["tightness"]  # not absurdly loose
    table["bound"] = table["bound"] / 100  # the check can fail
    assert verify(table).iloc[0]["verdict"] == "violated"


@pytest.mark.parametrize("estimator", ["page", "mvr", "qgd", "marina", "ef21"])
def test_pl_presets_get_their_pl_theorem_inside_the_admissible_range(estimator):
    """experiments/conf/experiment/pl_<estimator>.yaml, at each p of its sweep: the PL theorem applies."""
    from hydra import compose, initialize_config_module

    import experiments.run
    from experiments.build import build_job
    from experiments.job import theory_constants

    for p in (0.2, 0.5, 0.8):
        with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
            cfg = experiments.run.job_config(compose(config_name="config",
                                                     overrides=[f"experiment=pl_{estimator}", f"method.p={p}"]))
        assert cfg["estimator"]["name"] == estimator
        job = build_job(dict(cfg, device="cpu"))
        r = bound_for(estimator, iterations=[0, cfg["steps"]], gamma=job.gamma, c=theory_constants(job, cfg))
        assert r.ok and r.theorem.startswith(f"{estimator}_pl") and job.gamma <= r.gamma_max, r
        assert r.vacuous_after is None
