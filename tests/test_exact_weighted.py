"""Exact expectations with the non-isotropic ``weighted_column`` sketch (a random diagonal
projection described by its own E[H] = diag(pi) and pair inclusion probabilities
Pr[i, j in S]): against a closed form (f = L/2 ||W - W*||^2, to 1e-12) and Monte Carlo of
the suite's solvers (20000 seeds, |z| < 4 at t = 0, 1, 4, 8), shown to catch a wrong pair
inclusion matrix; with both decays 1 equal to the uniform ``column`` sketch's exact values
up to the sampler's 2^-32 rounding of pi; from configuration groups (the decays reach the
moments); refusals in one line."""
import numpy as np
import pytest

from experiments.exact import exact_expectations, exact_for_method
from experiments.problems import make_problem
from solvers.estimators import GD, SGD
from solvers.methods import BernoulliLoRA
from solvers.sketches import WeightedColumnSketch
from tests.test_exact import CHECKED, Z_MAX, z_scores
from theory import exact_moments
from theory.exact import QuadraticModel, exact_moments as moments

SEEDS = 20000  # 3000 (tests/test_exact.py) leaves the broken pair matrix below |z| = 4 for GD
SKETCH = WeightedColumnSketch(left_decay=0.7, right_decay=0.8)  # different decays on the two sides
M, N, RANK, P, GAMMA = 4, 3, 2, 0.4, 0.5 / 4.0
_PROBLEM = {}


def problem():
    """4 x 3 (d = 12; rank 2 < 3, 4: both sides random, with non-trivial pair probabilities),
    spectrum [0.5, 4], 16 samples with residuals."""
    if not _PROBLEM:
        _PROBLEM["p"] = make_problem("quadratic", m=M, n=N, mu=0.5, L=4.0, seed=5, n_samples=16, noise=1.0)
    return _PROBLEM["p"]


ESTIMATORS = {"gd": lambda: GD(), "sgd-batch": lambda: SGD(batch=4), "sgd-noise": lambda: SGD(noise=2.0)}


def _method(est, sketch=SKETCH, p=P):
    return BernoulliLoRA(estimator=ESTIMATORS[est](), stepsize=GAMMA, p=p, rank=RANK, sketch=sketch)


def test_the_sides_are_non_isotropic_with_non_trivial_pairs():
    """Guards the test's premise: pi not uniform on either side, Pr[i, j] not pi_i pi_j."""
    for side, dim in (("left", M), ("right", N)):
        pi = np.diag(SKETCH.expected_projection_matrix(dim, RANK, side=side))
        joint = SKETCH.joint_inclusion_matrix(dim, RANK, side=side)
        assert np.ptp(pi) > 0.1 and pi.max() < 1
        off = ~np.eye(dim, dtype=bool)
        assert np.abs(joint - np.outer(pi, pi))[off].max() > 0.05


@pytest.mark.parametrize("est,p", [(e, P) for e in ESTIMATORS] + [("gd", 1.0), ("gd", 0.0)])
def test_exact_agrees_with_monte_carlo_of_the_solvers(est, p):
    """Bernoulli-LoRA (p = 0.4) with GD, SGD minibatch and SGD noise; RAC-LoRA on each side."""
    method = _method(est, p=p)
    z = z_scores(method, problem(), exact_for_method(problem(), method, CHECKED), seeds=SEEDS)
    assert max(float(v.max()) for v in z.values()) < Z_MAX, {k: np.round(v, 2) for k, v in z.items()}


@pytest.mark.parametrize("est", ["gd", "sgd-batch"])
def test_monte_carlo_check_catches_a_wrong_pair_inclusion_matrix(monkeypatch, est):
    """Pr[i, j in S] replaced by pi_i pi_j (independent inclusions; E[H] kept exact): flagged."""
    true = exact_moments.diagonal_moments

    def independent(first, joint):
        pi = np.diag(first)
        wrong = np.outer(pi, pi)
        np.fill_diagonal(wrong, pi)
        return true(first, wrong)

    method = _method(est)
    monkeypatch.setattr("theory.exact.diagonal_moments", independent)
    z = z_scores(method, problem(), exact_for_method(problem(), method, CHECKED), seeds=SEEDS)
    assert max(float(v.max()) for v in z.values()) > Z_MAX


@pytest.mark.parametrize("est", ["gd", "sgd-noise"])
def test_uniform_decays_equal_the_column_sketch(est):
    """Decays 1: pi_i = r/dim up to 2^-32 (right side, 2/3: rounded; left side, 2/4: exact), so
    the exact values equal the uniform column sketch's to 1e-8 relative; the decays 0.7, 0.8 do not."""
    its = range(0, 31, 3)
    uniform = exact_for_method(problem(), _method(est, WeightedColumnSketch()), its)
    column = exact_for_method(problem(), _method(est, "column"), its)
    for key in ("f_gap", "grad_norm_sq", "dist_sq", "mean_error"):
        np.testing.assert_allclose(uniform[key], column[key], rtol=1e-8, atol=0)
    weighted = exact_for_method(problem(), _method(est), its)
    assert np.abs(weighted["f_gap"][1:] / column["f_gap"][1:] - 1).max() > 1e-2  # the decays matter


def test_isotropic_gd_closed_form_per_entry():
    r"""f = L/2 ||e||^2: entry (i, j) is multiplied by 1 - gamma L when row i (left) or column j
    (right) is selected, and z^2 = z, so E e_ij,t^2 = (1 - a lambda_ij)^t e_ij,0^2 with
    a = 1 - (1 - gamma L)^2, lambda_ij = p pi_i + (1 - p) pi'_j (the sketch's own pi), to 1e-12."""
    L, gamma = 2.0, 0.7 / 2.0
    prob = make_problem("isotropic", m=M, n=N, L=L, seed=3)
    its = np.arange(0, 31, 5)
    res = exact_expectations(prob, dict(name="bernoulli_lora", p=P, rank=RANK), dict(name="gd"), gamma, its,
                             sketch_cfg=dict(name="weighted_column", left_decay=0.7, right_decay=0.8))
    pl = np.diag(SKETCH.expected_projection_matrix(M, RANK, side="left"))
    pr = np.diag(SKETCH.expected_projection_matrix(N, RANK, side="right"))
    lam = P * pl[:, None] + (1 - P) * pr[None, :]
    e0 = ((prob.W0 - prob.W_star) ** 2).numpy()
    dist = np.array([(e0 * (1 - (1 - (1 - gamma * L) ** 2) * lam) ** t).sum() for t in its])
    np.testing.assert_allclose(res["dist_sq"], dist, rtol=1e-12)
    np.testing.assert_allclose(res["f_gap"], 0.5 * L * dist, rtol=1e-12)


def test_configuration_groups_carry_the_decays():
    """exact_expectations builds the sketch from its group (name and decays), as a job does."""
    cfg = dict(name="weighted_column", left_decay=0.7, right_decay=0.8)
    from_cfg = exact_expectations(problem(), dict(name="bernoulli_lora", p=P, rank=RANK), dict(name="gd"),
                                  GAMMA, [0, 5], sketch_cfg=cfg)
    ref = exact_for_method(problem(), _method("gd"), [0, 5])
    np.testing.assert_array_equal(from_cfg["f_gap"], ref["f_gap"])
    swapped = exact_expectations(problem(), dict(name="bernoulli_lora", p=P, rank=RANK), dict(name="gd"),
                                 GAMMA, [0, 5], sketch_cfg=dict(cfg, left_decay=0.8, right_decay=0.7))
    assert abs(swapped["f_gap"][1] / ref["f_gap"][1] - 1) > 1e-3


def test_a_method_given_the_sketch_by_name_is_resolved_as_the_method_resolves_it():
    """sketch='weighted_column' (a name) draws from WeightedColumnSketch() (decays 1): same values."""
    by_name = exact_for_method(problem(), _method("gd", "weighted_column"), [0, 4])
    by_object = exact_for_method(problem(), _method("gd", WeightedColumnSketch()), [0, 4])
    np.testing.assert_array_equal(by_name["f_gap"], by_object["f_gap"])


def test_joint_inclusion_enumeration_limit_is_refused_in_one_line():
    """A side of dimension > 8 (the pair probabilities are enumerated): one-line ValueError."""
    model = QuadraticModel(shape=(2, 9), Q=np.eye(18), e0=np.ones(18))
    with pytest.raises(ValueError, match="joint inclusion probabilities are enumerated for dim <= 8") as err:
        moments(model, method="bernoulli_lora", estimator=dict(name="gd"), gamma=0.1, iterations=[1],
                p=0.5, rank=1, sketch=SKETCH)
    assert "\n" not in str(err.value)


class _Inconsistent(WeightedColumnSketch):
    def joint_inclusion_matrix(self, dim, r, *, side="left"):
        return 0.5 * super().joint_inclusion_matrix(dim, r, side=side)  # diagonal != pi


def test_inconsistent_self_description_is_refused():
    with pytest.raises(ValueError, match="^sketch.name: a diagonal random projection"):
        exact_for_method(problem(), _method("gd", _Inconsistent(left_decay=0.7)), [1])
