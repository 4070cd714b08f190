"""The non-isotropic ``weighted_column`` sketch: exact E[H] = diag(pi) (by enumeration of
the sampler, by Monte Carlo with z-scores, and through a whole Bernoulli-LoRA run),
lambda_min^p / lambda_max^p against the dense operator, draws that depend only on
(seed, step), and its configuration keys."""
import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers.inclusion import (DEN, capped_inclusion_probabilities, joint_inclusion_probabilities,
                               quantized_inclusion_probabilities, systematic_sample)
from solvers.sketches import lambda_p, make_sketch, monte_carlo_expected_projection
from theory.spectra import lambda_p_from_expectations

decays = st.floats(min_value=0.05, max_value=1.0)


def _H(B):
    return B @ B.transpose(-1, -2)


# ----------------------------------------------------------------------------- inclusion probabilities


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=12), st.data())
def test_capped_inclusion_probabilities(weights, data):
    r = data.draw(st.integers(1, len(weights)))
    w = np.array(weights)
    pi = capped_inclusion_probabilities(w, r)
    assert pi.sum() == pytest.approx(r, abs=1e-9) and np.all(pi <= 1) and np.all(pi > 0)
    free = pi < 1 - 1e-12  # proportional to the weights below the cap, and capped ones are the heaviest
    if free.any():
        c = pi[free] / w[free]
        assert np.allclose(c, c[0], rtol=1e-9)
        assert np.all(c[0] * w[~free] >= 1 - 1e-9)
    q = quantized_inclusion_probabilities(pi, r)
    assert q.sum() == r * DEN and q.max() <= DEN and np.all(np.abs(q / DEN - pi) < 1 / DEN)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.data())
def test_systematic_sample_law_by_enumeration(dim, data):
    """Every order sigma (all permutations) and every U in range(den): each draw has r
    distinct indices and index i is drawn in exactly q_i of the den values of U."""
    den = 8
    r = data.draw(st.integers(1, dim))
    q = np.array([den] * r + [0] * (dim - r))  # sum r den, each <= den; random transfers keep both
    for i, j, amount in data.draw(st.lists(st.tuples(st.integers(0, dim - 1), st.integers(0, dim - 1),
                                                     st.integers(0, den)), max_size=8)):
        t = min(amount, q[i], den - q[j]) if i != j else 0
        q[i], q[j] = q[i] - t, q[j] + t
    perms = torch.tensor(list(itertools.permutations(range(dim))))  # keys: sigma = argsort(keys)
    P = perms.shape[0]
    keys = perms.repeat_interleave(den, 0)
    u = torch.arange(den).repeat(P)[:, None]
    idx = systematic_sample(torch.tensor(q), keys, u, r, den)
    assert all(len(set(row)) == r for row in idx.tolist())
    counts = torch.bincount(idx.reshape(P, den * r)[0:1].reshape(-1), minlength=dim)  # first order alone
    assert counts.tolist() == q.tolist()
    counts_all = torch.bincount(idx.reshape(-1), minlength=dim)
    assert counts_all.tolist() == (P * q).tolist()
    # pairs: the enumerated joint inclusion probabilities are the exact pair frequencies
    S = torch.zeros(P * den, dim, dtype=torch.float64).scatter_(1, idx, 1.0)
    np.testing.assert_allclose(joint_inclusion_probabilities(q, r, den), (S.T @ S).numpy() / (P * den),
                               rtol=0, atol=1e-15)


def test_enumeration_check_catches_a_biased_sampler():
    """The enumeration test's check fails for a sampler whose U is not spread over the
    whole range (here: U even only), which biases the inclusion probabilities."""
    q, den, r = torch.tensor([5, 2, 1]), 8, 1
    u = torch.arange(0, den, 2)[:, None]
    idx = systematic_sample(q, torch.arange(3).expand(len(u), 3), u, r, den)
    counts = torch.bincount(idx.reshape(-1), minlength=3) * 2
    assert counts.tolist() != q.tolist()


# ----------------------------------------------------------------------------- draws


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.data(), decays, decays, st.integers(0, 2**32 - 1), st.integers(0, 10**6))
def test_projection_of_rank_r_depending_on_seed_and_step(dim, data, ld, rd, seed, step):
    r = data.draw(st.integers(1, dim))
    sk = make_sketch("weighted_column", left_decay=ld, right_decay=rd)
    seeds = torch.tensor([seed, seed ^ 1, 7])
    B = sk.sample_left(seeds, step, dim, r)
    A = sk.sample_right(seeds, step, r, dim)
    for H in (_H(B), _H(A.transpose(-1, -2))):
        assert torch.equal(H, H.transpose(-1, -2)) and torch.equal(H @ H, H)  # orthogonal projection
        assert torch.equal(torch.diagonal(H, dim1=-2, dim2=-1).sum(-1), torch.full((3,), float(r), dtype=H.dtype))
        assert torch.equal(H, torch.diag_embed(torch.diagonal(H, dim1=-2, dim2=-1)))  # coordinate projection
    assert torch.equal(B.transpose(-1, -2) @ B, torch.eye(r, dtype=B.dtype).expand(3, r, r))
    # a run's draw depends only on (seed, step): alone, in another batch, on a rerun
    assert torch.equal(B[1:2], sk.sample_left(seeds[1:2], step, dim, r))
    assert torch.equal(A[:1], sk.sample_right(torch.tensor([seed, 99]), step, r, dim)[:1])
    assert torch.equal(B, sk.sample_left(seeds, step, dim, r))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.data(), decays, st.integers(0, 10**6))
def test_block_draws_equal_per_step_draws(dim, data, decay, start):
    r = data.draw(st.integers(1, dim))
    sk = make_sketch("weighted_column", left_decay=decay, right_decay=0.5)
    assert sk.block_draws and sk.full_rank_almost_surely
    seeds, steps = torch.arange(4) * 5, range(start, start + 3)
    B = sk.sample_left(seeds, steps, dim, r)
    A = sk.sample_right(seeds, steps, r, dim)
    assert B.shape == (4, 3, dim, r) and A.shape == (4, 3, r, dim)
    for k, t in enumerate(steps):
        assert torch.equal(B[:, k], sk.sample_left(seeds, t, dim, r))
        assert torch.equal(A[:, k], sk.sample_right(seeds, t, r, dim))


# ----------------------------------------------------------------------------- E[H]


@pytest.mark.parametrize("side,dim,r,ld,rd", [("left", 6, 2, 0.6, 1.0), ("right", 5, 3, 1.0, 0.4),
                                              ("left", 7, 3, 0.3, 0.9)])
def test_monte_carlo_mean_matches_exact_expectation(side, dim, r, ld, rd):
    sk = make_sketch("weighted_column", left_decay=ld, right_decay=rd)
    E = sk.expected_projection_matrix(dim, r, side=side)
    assert np.allclose(E, np.diag(np.diag(E))) and np.diag(E).sum() == pytest.approx(r)
    assert np.ptp(np.diag(E)) > 0.05  # genuinely not a multiple of the identity
    mc = monte_carlo_expected_projection(sk, side, dim, r, samples=6000, seed=5)
    # z-score of every entry (Bonferroni over the dim**2 entries at level 0.001);
    # zero-variance entries (off-diagonal, pi = 1) must agree exactly
    zcrit = 3.29 + math.log(dim * dim) / 2
    dev = np.abs(mc.mean - E)
    assert np.all(dev <= zcrit * mc.stderr + 1e-12)
    # and the isotropic answer (r/dim) I is rejected by the same check
    assert not np.all(np.abs(mc.mean - r / dim * np.eye(dim)) <= zcrit * mc.stderr + 1e-12)


def test_z_interval_coverage_of_the_inclusion_frequencies():
    """The normal intervals used above cover the exact pi_i at their nominal rate: 400
    independent batches of 200 draws, 95% intervals for each of 5 coordinates."""
    dim, r, reps, draws = 5, 2, 400, 200
    sk = make_sketch("weighted_column", left_decay=0.6)
    pi = np.diag(sk.expected_projection_matrix(dim, r))
    s = torch.diagonal(_H(sk.sample_left(torch.arange(reps * draws), 0, dim, r)), dim1=-2, dim2=-1).numpy()
    s = s.reshape(reps, draws, dim)
    mean, se = s.mean(1), s.std(1, ddof=1) / math.sqrt(draws)
    covered = np.abs(mean - pi) <= 1.96 * se
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()
    # the same intervals around a wrong expectation (uniform r/d) cover far less often
    assert (np.abs(mean - r / dim) <= 1.96 * se).mean() < 0.5


def test_joint_inclusion_matrix_against_monte_carlo():
    """Second moments E[H_ii H_jj] = Pi_ij (enumerated) against the mean over draws,
    z-scores with Bonferroni over the entries; sum_j Pi_ij = r pi_i exactly."""
    dim, r = 6, 3
    sk = make_sketch("weighted_column", left_decay=0.5)
    Pi = sk.joint_inclusion_matrix(dim, r, side="left")
    pi = np.diag(sk.expected_projection_matrix(dim, r, side="left"))
    assert np.allclose(np.diag(Pi), pi, atol=1e-15) and np.allclose(Pi.sum(1), r * pi, atol=1e-12)
    s = torch.diagonal(_H(sk.sample_left(torch.arange(20000), 3, dim, r)), dim1=-2, dim2=-1).numpy()
    pairs = s[:, :, None] * s[:, None, :]
    mean, se = pairs.mean(0), pairs.std(0, ddof=1) / math.sqrt(len(s))
    zcrit = 3.29 + math.log(dim * dim) / 2
    assert np.all(np.abs(mean - Pi) <= zcrit * se + 1e-12)
    indep = np.outer(pi, pi) + np.diag(pi - pi**2)  # what independent inclusions would give
    assert not np.all(np.abs(mean - indep) <= zcrit * se + 1e-12)
    with pytest.raises(ValueError, match="enumerated for dim <= 8"):
        sk.joint_inclusion_matrix(9, 2)


def test_uniform_decay_is_the_isotropic_column_expectation():
    sk = make_sketch("weighted_column")
    assert sk.expected_projection(6, 2) is None  # pi_i = 1/3 only up to the rounding to 2^-32
    E = sk.expected_projection_matrix(6, 2, side="right")
    assert np.allclose(E, np.eye(6) / 3, rtol=0, atol=2.0**-32) and np.trace(E) == 2
    assert np.array_equal(sk.expected_projection_matrix(8, 2), np.eye(8) / 4)  # 2^32 r/d an integer


@pytest.mark.parametrize("p", [0.0, 0.25, 0.6, 1.0])
def test_lambda_p_against_dense_operator(p):
    """Extreme eigenvalues of X -> p E[H_B] X + (1-p) X E[H_A] as an (mn x mn) matrix
    (row-major vec: p E_B kron I_n + (1-p) I_m kron E_A)."""
    m, n, r = 5, 4, 2
    sk = make_sketch("weighted_column", left_decay=0.5, right_decay=0.8)
    EB = sk.expected_projection_matrix(m, r, side="left")
    EA = sk.expected_projection_matrix(n, r, side="right")
    op = p * np.kron(EB, np.eye(n)) + (1 - p) * np.kron(np.eye(m), EA)
    X = np.random.default_rng(0).standard_normal((m, n))
    assert np.allclose(op @ X.reshape(-1), (p * EB @ X + (1 - p) * X @ EA).reshape(-1))
    eig = np.linalg.eigvalsh(op)
    lo, hi = lambda_p(sk, p, m, n, r)
    assert lo == pytest.approx(eig[0], abs=1e-12) and hi == pytest.approx(eig[-1], abs=1e-12)
    assert (lo, hi) == pytest.approx(lambda_p_from_expectations(p, EB, EA), abs=1e-12)
    assert (lo, hi) == pytest.approx(lambda_p_from_expectations(p, np.diag(EB), np.diag(EA)), abs=1e-12)


def test_p_changes_lambda_min_on_a_square_W():
    sk = make_sketch("weighted_column", left_decay=0.6)
    lo = [lambda_p(sk, p, 6, 6, 2)[0] for p in (0.0, 0.5, 1.0)]
    assert lo[0] > lo[1] > lo[2] and lo[0] == pytest.approx(2 / 6)
    iso = [lambda_p("gaussian", p, 6, 6, 2)[0] for p in (0.0, 0.5, 1.0)]
    assert iso == pytest.approx([2 / 6] * 3)


def test_bad_parameters_refused():
    with pytest.raises(ValueError, match=r"expected_left: expected a square matrix or its diagonal"):
        lambda_p_from_expectations(0.5, np.ones((2, 3)), np.eye(2))
    with pytest.raises(ValueError, match="sketch.left_decay: must be a number in"):
        make_sketch("weighted_column", left_decay=0.0)
    with pytest.raises(ValueError, match="sketch.right_decay: must be a number in"):
        make_sketch("weighted_column", right_decay=1.5)
    with pytest.raises(ValueError, match="side:"):
        make_sketch("weighted_column").expected_projection_matrix(4, 2, side="up")
    with pytest.raises(ValueError, match="sketch.left_decay: 1e-200 leaves fewer than r = 4"):
        make_sketch("weighted_column", left_decay=1e-200).expected_projection_matrix(4, 4)
    with pytest.raises(ValueError, match=r"sketch.left_decay: unknown key: gaussian takes \[\]"):
        make_sketch("gaussian", left_decay=0.5)


# ----------------------------------------------------------------------------- configuration and a whole run


def _cfg(**over):
    from experiments.conf.schema import job_config

    base = {"problem.m": 6, "problem.n": 6, "problem.mu": 2.0, "problem.L": 2.0, "method.rank": 2,
            "method.p": 0.5, "sketch.left_decay": 0.6, "sketch.right_decay": 1.0, "device": "cpu",
            "progress": False}
    return job_config(sketch="weighted_column", **{**base, **over})


def test_config_keys_and_columns():
    from experiments.conf.check import check_config, config_columns

    cfg = _cfg()
    check_config(cfg)
    cols = config_columns(cfg)
    assert cols["sketch"] == "weighted_column" and cols["sketch_left_decay"] == 0.6
    assert cols["sketch_right_decay"] == 1.0
    for bad, msg in ((0.0, "must be a finite number in (0, 1]"), (1.2, "must be a finite number in (0, 1]")):
        with pytest.raises(ValueError, match=r"^sketch.left_decay: " + re.escape(msg)):
            check_config(_cfg(**{"sketch.left_decay": bad}))
    with pytest.raises(ValueError, match="^sketch.decay: unknown key"):
        check_config(_cfg(**{"sketch.decay": 0.5}))


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_whole_run_matches_the_exact_expected_gap(factor):
    """On f = L/2 ||W - W*||^2 a step with stepsize a/L multiplies entry (i, j) of
    W - W* by 1 - a [i in S] (left) or 1 - a [j in S'] (right): since the sketch's H are
    diagonal, E[f(W_T)] - f* = sum_ij (1 - (2a - a^2)(p pi_i + (1-p) pi'_j))^T (L/2) X0_ij^2
    exactly. The mean over 600 seeds of a real run (build_job + engine) agrees within
    z-scores, and the isotropic prediction (pi = r/m) is rejected by the same check."""
    from experiments.build import build_job
    from solvers.engine import run

    cfg = _cfg(**{"stepsize.factor": factor, "seeds": 600, "steps": 30})
    job = build_job(cfg)
    prob, sk = job.problem, job.method.sketch
    m, n = prob.shape
    pi_l = np.diag(sk.expected_projection_matrix(m, 2, side="left"))
    pi_r = np.diag(sk.expected_projection_matrix(n, 2, side="right"))
    lo, hi = lambda_p(sk, 0.5, m, n, 2)
    assert (job.lmin_p, job.lmax_p) == (lo, hi) and lo < hi
    traj = run(job.method, prob, prob.W0, job.seeds, steps=30, eval_every=10)
    X0 = (prob.W0 - prob.W_star).numpy()
    a = job.gamma * prob.L

    def expected(pl, pr, T):
        lam = 0.5 * pl[:, None] + 0.5 * pr[None, :]
        return float(((1 - (2 * a - a * a) * lam) ** T * prob.L / 2 * X0**2).sum())

    its, gaps = traj["iteration"][0], traj["f_gap"]
    iso = np.full(m, 2 / m)
    rejected = False
    for k, T in enumerate(its):
        mean, se = gaps[:, k].mean(), gaps[:, k].std(ddof=1) / math.sqrt(gaps.shape[0])
        if T == 0:
            continue
        assert abs(mean - expected(pi_l, pi_r, T)) <= 4 * se, (T, mean, expected(pi_l, pi_r, T), se)
        rejected |= abs(mean - expected(iso, pi_r, T)) > 4 * se
    assert rejected


def test_committed_nonisotropic_p_rates():
    """The committed ci run of ``experiment=nonisotropic_p`` (paper_results/cpu): its
    rates table is what :mod:`experiments.nonisotropic_rates` computes from the committed
    results; with the non-isotropic left sketch the measured rate falls with p as
    lambda_min^p does, with the isotropic control (left_decay 1) it does not, and every
    measured rate exceeds the PL bound's rate."""
    from pathlib import Path

    import pandas as pd

    from experiments.nonisotropic_rates import rates

    root = Path(__file__).resolve().parents[1] / "paper_results" / "cpu"
    got = rates(pd.read_parquet(root / "nonisotropic_p_results.parquet"))
    pd.testing.assert_frame_equal(got, pd.read_csv(root / "nonisotropic_p_rates.csv"), check_dtype=False, rtol=1e-9)
    assert (got["rate_median_seed"] > got["rate_bound"]).all()
    for (mu, decay), g in got.groupby(["problem_mu", "sketch_left_decay"]):
        g = g.sort_values("p")
        rate, lmin = g["rate_median_seed"].to_numpy(), g["lambda_min_p"].to_numpy()
        if decay < 1:
            assert np.all(np.diff(lmin) < 0) and np.all(np.diff(rate) < 0) and rate[-1] < rate[0] / 2
        else:
            assert np.ptp(lmin) == 0 and np.ptp(rate) < 0.1 * rate.mean()
    exact = got[got["problem_mu"] == got["problem_L"]]
    assert (exact["max_abs_z_early"] < 4).all()

