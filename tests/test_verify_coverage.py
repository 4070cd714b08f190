"""Coverage of the verdicts, measured by simulation on samples with a known mean.

False alarms ('violated' / LCB above a true mean) and false 'holds' (UCB below a true mean)
must stay at or below the nominal level, with Monte Carlo slack of 3 standard deviations;
broken cases must be caught with reasonable seeds; and the check itself must catch a
broken confidence bound. The numbers quoted in docs/verify.md come from
``python -m theory.coverage`` (paper_results/verify_coverage.txt)."""
import numpy as np
import pandas as pd
import pytest

from theory.confidence import t_quantile
from theory.coverage import DISTRIBUTIONS, error_rates, quadratic_moments, quadratic_trajectories
from theory.verify import exact_verdict, verify

ALPHA, REPS = 0.05, 1000
SLACK = 3 * np.sqrt(ALPHA * (1 - ALPHA) / REPS)
#: distributions whose upper bound is claimed valid (docs/verify.md); zeros need >= 5 seeds
UPPER_OK = ("lognormal(0,1)", "lognormal(0,2)", "chi2(1)", "exponential", "20% zeros + exponential")
QUAD = (lambda rng, s: quadratic_trajectories(rng, s, 40)[0][..., -1],
        float(quadratic_trajectories(np.random.default_rng(0), (1,), 40)[1][-1]))


@pytest.mark.parametrize("n", [3, 10, 20])
@pytest.mark.parametrize("name", list(DISTRIBUTIONS) + ["quadratic"])
def test_one_sided_error_rates_at_most_nominal(name, n):
    sampler, mean = QUAD if name == "quadratic" else DISTRIBUTIONS[name]
    rng = np.random.default_rng(hash((name, n)) % 2 ** 32)
    lo, hi = error_rates(sampler, mean, n=n, reps=REPS, alpha=ALPHA, rng=rng)
    assert lo <= ALPHA + SLACK, f"false alarms {lo}"
    if name in UPPER_OK or name == "quadratic":
        if not (name.startswith("20% zeros") and n < 5):
            assert hi <= ALPHA + SLACK, f"false holds {hi}"


@pytest.mark.xfail(strict=True, reason="documented limitation (docs/verify.md): a power-law tail on the "
                                       "log scale makes the upper bound too low (P ~ 0.2 at level 0.05)")
def test_upper_bound_under_covers_for_pareto_tails():
    sampler, mean = DISTRIBUTIONS["pareto(2.5)"]
    _, hi = error_rates(sampler, mean, n=10, reps=REPS, alpha=ALPHA, rng=np.random.default_rng(7))
    assert hi <= ALPHA + SLACK


def test_the_check_catches_broken_bounds():
    """A bound without an interval (the mean itself) raises false alarms, and Student t alone
    (no log-normal term) gives false 'holds' on log-normal data: the rate check sees both."""
    rng = np.random.default_rng(11)
    no_interval = lambda X, alpha: (X.mean(0), X.mean(0), X.mean(0))  # noqa: E731

    def t_only(X, alpha):
        n, m, se = X.shape[0], X.mean(0), X.std(0, ddof=1) / np.sqrt(X.shape[0])
        return m, m - t_quantile(n - 1, 1 - alpha) * se, m + t_quantile(n - 1, 1 - alpha) * se

    sampler, mean = DISTRIBUTIONS["lognormal(0,2)"]
    lo, _ = error_rates(sampler, mean, n=10, reps=REPS, alpha=ALPHA, rng=rng, bounds=no_interval)
    assert lo > ALPHA + SLACK
    _, hi = error_rates(sampler, mean, n=10, reps=REPS, alpha=ALPHA, rng=rng, bounds=t_only)
    assert hi > ALPHA + SLACK
    _, hi_ok = error_rates(sampler, mean, n=10, reps=REPS, alpha=ALPHA, rng=rng)
    assert hi_ok <= ALPHA + SLACK


def _groups(f, bound):
    """Results table: f (groups, seeds, points) of f_gap, one config_hash per group."""
    G, S, P = f.shape
    its = np.arange(P)
    return pd.DataFrame({
        "config_hash": np.repeat([f"g{i}" for i in range(G)], S * P), "seed": np.tile(np.repeat(np.arange(S), P), G),
        "iteration": np.tile(its, G * S), "f_gap": f.reshape(-1), "grad_norm_sq": np.nan,
        "bound": np.tile(bound, G * S), "bound_metric": "f_gap", "bound_status": "ok", "diverged": False})


def test_verify_on_exact_quadratic_trajectories():
    """End to end through verify (checkpoints, Bonferroni, floor), one config_hash per repetition:
    bound = the exact E f_T: 'violated' and 'holds' each at most at the nominal rate; the coin
    swapped (p = 0.7 run, bound of p = 0.3; the true mean is 1.1x-15x the bound) caught with
    20 seeds; a bound 3x above the mean (gamma = 0.5/L) often 'holds' with 20 seeds, never 'violated'.
    (A 1.5x slack is not enough at 20 seeds: the mean of f_T is carried by rare runs, docs/verify.md.)"""
    conf = 0.9
    rng = np.random.default_rng(2026)
    f, mean = quadratic_trajectories(rng, (200, 10), 30)
    null = verify(_groups(f, mean), confidence=conf)["verdict"]
    assert (null == "violated").mean() <= (1 - conf) + 3 * np.sqrt(conf * (1 - conf) / 200)
    assert (null == "holds").mean() <= (1 - conf) + 3 * np.sqrt(conf * (1 - conf) / 200)
    swapped, _ = quadratic_trajectories(rng, (100, 20), 30, p=0.7)
    power = (verify(_groups(swapped, mean), confidence=conf)["verdict"] == "violated").mean()
    assert power >= 0.85, power
    f20, mean20 = quadratic_trajectories(rng, (100, 20), 20, c=0.5)
    slack = verify(_groups(f20, 3 * mean20), confidence=conf)["verdict"]
    assert (slack == "violated").sum() == 0 and (slack == "holds").mean() >= 0.3, slack.value_counts()


@pytest.mark.parametrize("with_second", [False, True], ids=["confidence-bounds", "bennett"])
def test_exact_check_level_and_power(with_second):
    """Two-sided check against the exact E f_t of the quadratic model, with the confidence
    bounds alone or given the exact E f_t^2 (Bennett's limit on the 'below' side; a claimed
    mean c times the true one comes with c^2 times the second moment): 'disagrees' at most at
    the nominal rate when exact is right, and almost always when it is 2x or 1/1.5x off."""
    rng = np.random.default_rng(5)
    reps, conf = 200, 0.9
    f, mean = quadratic_trajectories(rng, (reps, 20), 30)
    second = quadratic_moments(30)[1][1:] if with_second else None
    its = np.arange(1, 31)

    def rate(factor):
        s2 = None if second is None else factor ** 2 * second
        words = [exact_verdict(f[r][:, 1:], factor * mean[1:], its, confidence=conf, second_moment=s2)["exact_verdict"]
                 for r in range(reps)]
        return np.mean(np.array(words) == "disagrees")

    assert rate(1.0) <= (1 - conf) + 3 * np.sqrt(conf * (1 - conf) / reps)
    for factor in (2.0, 1 / 1.5):
        assert rate(factor) >= 0.85, factor
