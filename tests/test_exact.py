"""Exact expectations (theory.exact) against the suite's own solvers (Monte Carlo over
3000 seeds, |z| < 4 at every checked point), against closed forms (to 1e-12), and the
closed-form pieces against exact enumeration. The Monte Carlo check is shown to catch a
wrong fourth moment and wrong inclusion probabilities."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.exact import exact_expectations, exact_for_method
from experiments.problems import make_problem
from solvers.compressors import Identity, RandK
from solvers.distributed import EF21, MARINA, QGD
from solvers.engine import run
from solvers.estimators import GD, MVR, PAGE, SGD
from solvers.methods import BernoulliLoRA, FPFT
from solvers.projections import dense_projector_left
from solvers.sketches import GaussianSketch
from theory import exact_moments
from theory.exact import METRICS, QuadraticModel, exact_moments as moments
from theory.exact_moments import (Finite, Projection, Subset, column_moments, enumerated_moments, haar_moments,
                                  haar_projection_moments)

SEEDS, STEPS, CHECKED, Z_MAX = 3000, 8, (0, 1, 4, 8), 4.0


class UnscaledRandK(RandK):
    """Rand-k without the d/k scaling: a random linear contractive compressor,
    :math:`\\mathbb E\\|C(x) - x\\|^2 = (1 - k/d)\\|x\\|^2` (EF21's class in expectation). The
    solvers' RandK, same draws, times k/d."""

    scaled = False

    @property
    def alpha(self):
        return self.k / self.d

    def apply(self, X, idx):
        Y, bits = super().apply(X, idx)
        return Y * (self.k / (X.shape[-1] * X.shape[-2])), bits


_PROBLEM = {}


def problem():
    """3 x 2 (d = 6), spectrum [0.5, 4], 8 samples with residuals, 2 heterogeneous clients."""
    if not _PROBLEM:
        _PROBLEM["p"] = make_problem("quadratic", m=3, n=2, mu=0.5, L=4.0, seed=1, n_samples=8, noise=1.0,
                                     n_clients=2, heterogeneity=0.5)
    return _PROBLEM["p"]


GAMMA = 0.5 / 4.0
BL = dict(name="bernoulli_lora", p=0.4, rank=1)
# (id, method cfg, sketch, estimator factory, estimator cfg, compressor)
PAIRS = [
    ("fpft-gd", dict(name="fpft"), "gaussian", GD, dict(name="gd"), None),
    ("rac-left-gd-gaussian", dict(BL, p=1.0), "gaussian", GD, dict(name="gd"), None),
    ("rac-right-gd-column", dict(BL, p=0.0), "column", GD, dict(name="gd"), None),
    ("bl-gd-gaussian", BL, "gaussian", GD, dict(name="gd"), None),
    ("bl-gd-orthonormal", BL, "orthonormal", GD, dict(name="gd"), None),
    ("bl-gd-column", BL, "column", GD, dict(name="gd"), None),
    ("bl-gd-rademacher", BL, "rademacher", GD, dict(name="gd"), None),
    ("bl-rank2-gd-gaussian", dict(BL, p=0.5, rank=2), "gaussian", GD, dict(name="gd"), None),
    ("fpft-sgd-noise", dict(name="fpft"), "gaussian", SGD, dict(name="sgd", noise=2.0), None),
    ("bl-sgd-noise", BL, "gaussian", SGD, dict(name="sgd", noise=2.0), None),
    ("fpft-sgd-batch", dict(name="fpft"), "gaussian", SGD, dict(name="sgd", batch=3), None),
    ("bl-sgd-batch-column", BL, "column", SGD, dict(name="sgd", batch=3), None),
    ("rac-sgd-batch", dict(BL, p=1.0), "gaussian", SGD, dict(name="sgd", batch=1), None),
    ("bl-page", BL, "gaussian", PAGE, dict(name="page", batch=2, q=0.3), None),
    ("fpft-page-default-q", dict(name="fpft"), "gaussian", PAGE, dict(name="page", batch=2), None),
    ("bl-mvr-batch", BL, "gaussian", MVR, dict(name="mvr", momentum=0.3, batch=2), None),
    ("fpft-mvr-batch", dict(name="fpft"), "gaussian", MVR, dict(name="mvr", momentum=0.3, batch=2), None),
    ("bl-mvr-noise", BL, "gaussian", MVR, dict(name="mvr", momentum=0.3, noise=1.0), None),
    ("bl-mvr-full-init", BL, "column", MVR, dict(name="mvr", momentum=0.5, batch=2, init_with="full"), None),
    ("bl-qgd-randk", BL, "gaussian", QGD, dict(name="qgd"), ("randk", 2)),
    ("fpft-qgd-randk", dict(name="fpft"), "gaussian", QGD, dict(name="qgd"), ("randk", 3)),
    ("bl-qgd-identity", BL, "gaussian", QGD, dict(name="qgd"), ("identity", None)),
    ("bl-marina-randk", BL, "column", MARINA, dict(name="marina", q=0.3), ("randk", 2)),
    ("fpft-marina-randk", dict(name="fpft"), "gaussian", MARINA, dict(name="marina", q=0.3), ("randk", 2)),
    ("bl-ef21-unscaled-randk", BL, "gaussian", EF21, dict(name="ef21"), ("unscaled", 3)),
    ("fpft-ef21-unscaled-randk", dict(name="fpft"), "gaussian", EF21, dict(name="ef21"), ("unscaled", 2)),
    ("bl-ef21-identity", BL, "gaussian", EF21, dict(name="ef21"), ("identity", None)),
]


def _compressor(spec, d):
    if spec is None:
        return None
    name, k = spec
    return {"identity": lambda: Identity(d=d), "randk": lambda: RandK(k=k, d=d),
            "unscaled": lambda: UnscaledRandK(k=k, d=d)}[name]()


def _build(pair):
    _, mcfg, sketch, est_cls, ecfg, comp_spec = pair
    prob = problem()
    comp = _compressor(comp_spec, 6)
    params = {k: v for k, v in ecfg.items() if k != "name"}
    est = est_cls(compressor=comp, **params) if comp is not None else est_cls(**params)
    if mcfg["name"] == "fpft":
        method = FPFT(estimator=est, stepsize=GAMMA)
    else:
        method = BernoulliLoRA(estimator=est, stepsize=GAMMA, p=mcfg["p"], rank=mcfg["rank"], sketch=sketch)
    return prob, method


def z_scores(method, prob, exact, seeds=SEEDS):
    """|z| of the Monte Carlo means of the solver against ``exact`` at CHECKED, per metric;
    points without spread (t = 0 with an exact first gradient) must agree to 1e-9."""
    traj = run(method, prob, prob.W0, range(seeds), steps=max(CHECKED), eval_every=1, track_every_step=False)
    assert not traj["diverged"].any()
    out = {}
    for metric in METRICS:
        x = traj[metric][:, list(CHECKED)]
        mean, se = x.mean(0), x.std(0, ddof=1) / math.sqrt(x.shape[0])
        ex = exact[metric]
        flat = se <= 1e-12 * np.maximum(1.0, np.abs(ex))
        np.testing.assert_allclose(mean[flat], ex[flat], rtol=1e-9, atol=1e-12)
        out[metric] = np.where(flat, 0.0, np.abs(mean - ex) / np.where(flat, 1.0, se))
    return out


def _exact(pair, method):
    return exact_for_method(problem(), method, CHECKED)


@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_exact_agrees_with_monte_carlo_of_the_solvers(pair):
    prob, method = _build(pair)
    z = z_scores(method, prob, _exact(pair, method))
    worst = max(float(v.max()) for v in z.values())
    assert worst < Z_MAX, {k: np.round(v, 2) for k, v in z.items()}


def test_monte_carlo_check_catches_a_wrong_fourth_moment(monkeypatch):
    """E[H X H] replaced by E[H] X E[H] (the second moment of the sketch ignored): flagged."""
    pair = next(p for p in PAIRS if p[0] == "bl-gd-gaussian")
    prob, method = _build(pair)
    monkeypatch.setattr(exact_moments, "haar_projection_moments", lambda dim, r: ((r / dim) ** 2, 0.0))
    z = z_scores(method, prob, _exact(pair, method))
    assert max(float(v.max()) for v in z.values()) > Z_MAX


def test_monte_carlo_check_catches_wrong_inclusion_probabilities(monkeypatch):
    """Minibatch drawn with replacement-like independent inclusions (E z_i z_j = (k/N)^2): flagged."""
    pair = next(p for p in PAIRS if p[0] == "fpft-sgd-batch")
    prob, method = _build(pair)

    def independent(self):
        N = self.terms.shape[0]
        return self.k / N, (self.k / N) ** 2

    monkeypatch.setattr(Subset, "_c", independent)
    z = z_scores(method, prob, _exact(pair, method))
    assert max(float(v.max()) for v in z.values()) > Z_MAX


# --------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal", "column"])
def test_isotropic_gd_closed_form(sketch):
    r"""f = L/2 ||e||^2: ||e'||^2 = ||e||^2 - gamma L (2 - gamma L) e^T H e and E H = lambda I with
    lambda = p r/m + (1-p) r/n, so E||e_t||^2 = (1 - gamma L (2 - gamma L) lambda)^t ||e_0||^2."""
    L, m, n, r, p, gamma = 2.0, 4, 3, 2, 0.3, 0.7 / 2.0
    prob = make_problem("isotropic", m=m, n=n, L=L, seed=3)
    its = np.arange(0, 31, 5)
    res = exact_expectations(prob, dict(name="bernoulli_lora", p=p, rank=r), dict(name="gd"), gamma, its,
                             sketch_cfg={"name": sketch})
    lam = p * r / m + (1 - p) * r / n
    dist = float(((prob.W0 - prob.W_star) ** 2).sum()) * (1 - gamma * L * (2 - gamma * L) * lam) ** its
    np.testing.assert_allclose(res["dist_sq"], dist, rtol=1e-12)
    np.testing.assert_allclose(res["f_gap"], 0.5 * L * dist, rtol=1e-12)
    np.testing.assert_allclose(res["grad_norm_sq"], L * L * dist, rtol=1e-12)


def test_mean_follows_the_expected_operator():
    """E e_{t+1} = (I - gamma lambda Q) E e_t for Bernoulli-LoRA-GD (E of the step is linear)."""
    prob = make_problem("quadratic", m=3, n=4, mu=0.2, L=5.0, seed=2)
    p, r, gamma = 0.7, 2, 0.9 / 5.0
    res = exact_expectations(prob, dict(name="bernoulli_lora", p=p, rank=r), dict(name="gd"), gamma, [0, 7, 20])
    lam = p * r / 3 + (1 - p) * r / 4
    Q, e0 = prob.Q.numpy(), (prob.W0 - prob.W_star).numpy().reshape(-1)
    for t, mean in zip([0, 7, 20], res["mean_error"]):
        ref = np.linalg.matrix_power(np.eye(12) - gamma * lam * Q, t) @ e0
        np.testing.assert_allclose(mean.reshape(-1), ref, rtol=1e-12, atol=1e-13)


def test_fpft_sgd_noise_closed_form():
    """FPFT with G = grad + sigma/sqrt(d) z on L/2||e||^2: a = (1 - gamma L)^2 and
    E||e_t||^2 = a^t ||e_0||^2 + gamma^2 sigma^2 (1 - a^t) / (1 - a)."""
    L, sigma, gamma = 3.0, 1.5, 0.2
    prob = make_problem("isotropic", m=2, n=3, L=L, seed=0)
    its = np.arange(12)
    res = exact_expectations(prob, dict(name="fpft"), dict(name="sgd", noise=sigma), gamma, its)
    a = (1 - gamma * L) ** 2
    d0 = float(((prob.W0 - prob.W_star) ** 2).sum())
    np.testing.assert_allclose(res["dist_sq"], a ** its * d0 + gamma ** 2 * sigma ** 2 * (1 - a ** its) / (1 - a),
                               rtol=1e-12)


def test_fpft_minibatch_one_step_closed_form():
    """E||e_1||^2 = ||(I - gamma Q) e_0||^2 + gamma^2 (N-b)/(b(N-1)) mean_i ||grad f_i - grad f||^2
    at e_0 (sampling without replacement), written from the samples directly."""
    prob, b, gamma = problem(), 3, 0.1
    A, eps = prob.A.numpy(), prob.eps.numpy()
    e0 = (prob.W0 - prob.W_star).numpy().reshape(-1)
    N = A.shape[0]
    gi = A * (A @ e0 - eps)[:, None]
    g = gi.mean(0)
    var = (N - b) / (b * (N - 1)) * ((gi - g) ** 2).sum(1).mean()
    ref = float(((e0 - gamma * g) ** 2).sum() + gamma ** 2 * var)
    res = exact_expectations(prob, dict(name="fpft"), dict(name="sgd", batch=b), gamma, [1])
    assert res["dist_sq"][0] == pytest.approx(ref, rel=1e-12)


def test_haar_fourth_moments_match_monte_carlo_of_the_gaussian_sketch():
    """E[H_00^2] = alpha + 2 beta, E[H_00 H_11] = alpha, E[H_01^2] = beta for the solvers'
    Gaussian sketch (projection onto its range), 20000 draws, |z| < 4."""
    m, r = 5, 2
    alpha, beta = haar_projection_moments(m, r)
    H = dense_projector_left(GaussianSketch().sample_left(torch.arange(20000), 0, m, r)).numpy()
    for sample, ref in ((H[:, 0, 0] ** 2, alpha + 2 * beta), (H[:, 0, 0] * H[:, 1, 1], alpha),
                        (H[:, 0, 1] ** 2, beta)):
        z = (sample.mean() - ref) / (sample.std(ddof=1) / math.sqrt(sample.size))
        assert abs(z) < 4, (ref, sample.mean(), z)
    assert haar_projection_moments(4, 4) == (1.0, 0.0) and haar_projection_moments(1, 1) == (1.0, 0.0)


@pytest.mark.parametrize("side,m,n,r", [("left", 4, 3, 1), ("left", 4, 3, 3), ("right", 2, 5, 2), ("right", 3, 3, 3)])
@pytest.mark.parametrize("moments_of", [haar_moments, column_moments])
def test_projection_piece_identities(side, m, n, r, moments_of):
    """Exact identities of a projection: E[(H kron I)(H kron I)] = E[H kron I] = (r/dim) I
    (H^2 = H), and no randomness when r = dim (H = I)."""
    d, dim = m * n, (m if side == "left" else n)
    piece = Projection(np.eye(d), np.eye(d), m, n, side, *moments_of(dim, r))
    np.testing.assert_allclose(piece.second(np.eye(d)), (r / dim) * np.eye(d), rtol=0, atol=1e-14)
    np.testing.assert_allclose(piece.mean(), (r / dim) * np.eye(d), rtol=0, atol=1e-15)
    if r == dim:
        S = np.random.default_rng(0).normal(size=(d, d))
        np.testing.assert_allclose(piece.second(S), S, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dim,r", [(4, 1), (4, 2), (5, 3)])
def test_column_moments_equal_enumeration(dim, r):
    subsets = list(itertools.combinations(range(dim), r))
    H = np.stack([np.diag(np.isin(np.arange(dim), c).astype(float)) for c in subsets])
    ref = enumerated_moments(H, np.full(len(subsets), 1.0 / len(subsets)))
    for got, want in zip(column_moments(dim, r), ref):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


def test_rademacher_moments_match_monte_carlo_of_the_solvers_sketch():
    """E[H] and E[H_00 H_11] of the enumerated Rademacher projection (sign-orbit
    representatives, rank-deficient draws included) against 20000 solver draws."""
    from solvers.sketches import RademacherSketch

    from theory.exact import _rademacher_moments

    dim, r = 4, 2
    first, fourth = _rademacher_moments(dim, r)
    H = dense_projector_left(RademacherSketch().sample_left(torch.arange(20000), 0, dim, r)).numpy()
    for sample, ref in ((H[:, 0, 0], first[0, 0]), (H[:, 0, 0] * H[:, 1, 1], fourth[0, 0, 1, 1]),
                        (H[:, 0, 1] ** 2, fourth[0, 1, 0, 1])):
        z = (sample.mean() - ref) / (sample.std(ddof=1) / math.sqrt(sample.size))
        assert abs(z) < 4, (ref, sample.mean(), z)
    assert first[0, 0] < r / dim  # dependent sign columns: E rank < r


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.data())
def test_subset_closed_form_equals_enumeration(N, data):
    """Subset's inclusion-probability formula = the mean over every k-subset."""
    k = data.draw(st.integers(1, N))
    seed = data.draw(st.integers(0, 2 ** 31 - 1))
    gen = np.random.default_rng(seed)
    terms, scale = gen.normal(size=(N, 3, 4)), float(gen.uniform(0.1, 3.0))
    X = gen.normal(size=(4, 4))
    S = X @ X.T
    outs = [scale * terms[list(c)].sum(0) for c in itertools.combinations(range(N), k)]
    ref = Finite(np.stack(outs), np.full(len(outs), 1.0 / len(outs)))
    piece = Subset(terms, k, scale)
    np.testing.assert_allclose(piece.mean(), ref.mean(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(piece.second(S), ref.second(S), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- inputs

def _model(clients=False):
    d = 4
    kw = dict(client_hessians=np.stack([np.eye(d)] * 2), client_offsets=np.zeros((2, d))) if clients else {}
    return QuadraticModel(shape=(2, 2), Q=np.eye(d), e0=np.ones(d), **kw)


@pytest.mark.parametrize("kw,field", [
    (dict(estimator=dict(name="adam")), "estimator.name"),
    (dict(estimator=dict(name="ef21")), "estimator.name"),
    (dict(estimator=dict(name="sgd", batch=2)), "estimator.batch"),
    (dict(estimator=dict(name="mvr", noise=1.0)), "estimator.momentum"),
    (dict(estimator=dict(name="page", batch=1)), "estimator.q"),
    (dict(method="lora"), "method.name"),
    (dict(rank=3), "method.rank"),
    (dict(p=1.5), "method.p"),
    (dict(sketch="sparse"), "sketch.name"),
    (dict(gamma=0.0), "stepsize"),
    (dict(iterations=[]), "iterations"),
])
def test_bad_input_fails_with_one_line_naming_the_field(kw, field):
    args = dict(method="bernoulli_lora", estimator=dict(name="gd"), gamma=0.1, iterations=[0, 1])
    args.update(kw)
    with pytest.raises(ValueError, match=f"^{field}"):
        moments(_model(), **args)


def test_too_large_a_problem_is_refused_before_any_work():
    big = QuadraticModel(shape=(10, 10), Q=np.eye(100), e0=np.ones(100))
    with pytest.raises(ValueError, match="^problem.m: .* m\\*n <= 96, got 100"):
        moments(big, method="fpft", estimator=dict(name="gd"), gamma=0.1, iterations=[1])


def test_nonlinear_compressors_are_refused():
    with pytest.raises(ValueError, match="^compressor.name"):
        moments(_model(True), method="fpft", estimator=dict(name="qgd", compressor=dict(name="topk", k=1)),
                gamma=0.1, iterations=[1])
