"""Verification catches broken solvers (issue 11, item 6): every break of
:mod:`tests.mutants` is flagged on a shipped configuration (``violated`` against the
theorem's bound, or the exact expectation ``disagrees``), and the unbroken solver on the
same configuration is never flagged. Fixed seeds: the outcome is deterministic (the table
of breaks is in docs/verify.md, "Deliberate breaks, and false alarms on honest runs").

Configurations: the exact-solvable quadratic of the presets at small size (3 x 2, d = 6,
spectrum [0.5, 4], 8 samples with residuals, 2 heterogeneous clients) with the settings of
pl_page / pl_marina / pl_qgd (q = 0.3, stepsize factor 0.3 as in pl_marina, Rand-k), and
for the bound's lambda the isotropic case mu = L of nonisotropic_p (factor 0.5)."""
import pytest

from experiments.conf.schema import job_config
from tests import mutants
from theory.verify import verify


def _false_alarm_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "false_alarm_rate.py"
    spec = importlib.util.spec_from_file_location("false_alarm_rate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FA = _false_alarm_script()
QUADRATIC = {**FA.QUADRATIC, "seeds": 200}
ISOTROPIC = {**FA.ISOTROPIC, "stepsize.factor": 0.5, "seeds": 20}

# configuration name -> (job_config overrides, job adjustment)
CONFIGS = {
    "bl-gd": (QUADRATIC, None),
    "bl-sgd-noise": ({**QUADRATIC, "estimator": "sgd", "estimator.noise": 2.0, "estimator.batch": None}, None),
    "bl-page": ({**QUADRATIC, "estimator": "page", "estimator.batch": 2, "estimator.q": 0.3}, None),
    "bl-qgd-randk": ({**QUADRATIC, "estimator": "qgd", "compressor": "randk", "compressor.k": 2}, None),
    "bl-marina-randk": ({**QUADRATIC, "estimator": "marina", "compressor": "randk", "compressor.k": 2,
                         "estimator.q": 0.3}, None),
    "bl-ef21-unscaled-randk": ({**QUADRATIC, "estimator": "ef21", "compressor": "topk", "compressor.k": 3},
                               lambda job: mutants.ef21_unscaled_randk(job, 3)),
    "bl-gd-isotropic": (ISOTROPIC, None),
}

# (break, configuration, where it must be flagged: 'exact' -> disagrees, 'bound' -> violated)
BREAKS = [
    ("scaled_projection", "bl-gd", "exact"),
    ("swapped_coin", "bl-gd", "exact"),
    ("tripled_stepsize", "bl-gd", "exact"),
    ("tripled_stepsize", "bl-sgd-noise", "exact"),
    ("page_without_correction", "bl-page", "exact"),
    ("ef21_without_feedback", "bl-ef21-unscaled-randk", "exact"),
    ("biased_compressor", "bl-qgd-randk", "exact"),
    ("biased_compressor", "bl-marina-randk", "exact"),
    ("wrong_lambda_bound", "bl-gd-isotropic", "bound"),
]


def _verdict(config, brk=mutants.honest, adjust=None):
    overrides, base_adjust = CONFIGS[config]
    steps = [a for a in (base_adjust, adjust) if a is not None]

    def adjusted(job):
        for a in steps:
            job = a(job)
        return job

    table = mutants.run_with(job_config(**overrides), brk, adjust=adjusted)
    out = verify(table)
    assert len(out) == 1
    return out.iloc[0]


def flagged(v):
    return v["verdict"] == "violated" or v["exact_verdict"] == "disagrees"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_unbroken_solver_is_not_flagged(config):
    v = _verdict(config)
    assert not flagged(v), v["reason"]
    assert v["exact_verdict"] == "agrees", v["reason"]  # the exact check did apply


@pytest.mark.parametrize("name,config,where", BREAKS, ids=[f"{b}-{c}" for b, c, _ in BREAKS])
def test_break_is_flagged(name, config, where):
    if name == "wrong_lambda_bound":
        v = _verdict(config, adjust=mutants.wrong_lambda_bound)
    else:
        v = _verdict(config, mutants.BREAKS[name])
    assert flagged(v), v["reason"]
    if where == "exact":
        assert v["exact_verdict"] == "disagrees", v["reason"]
    else:
        assert v["verdict"] == "violated", v["reason"]


def test_every_break_is_tested():
    assert set(mutants.BREAKS) | {"wrong_lambda_bound"} == {b for b, _, _ in BREAKS}


def test_breaks_change_the_run_only():
    """A break runs other numbers than the honest solver, with the same bound and exact
    columns (they come from the configuration, not from the broken solver)."""
    cfg = job_config(**{**QUADRATIC, "seeds": 3, "steps": 5})
    honest = mutants.run_with(cfg)
    broken = mutants.run_with(cfg, mutants.scaled_projection)
    for col in ("bound", "exact", "gamma", "lambda_min_p", "config_hash"):
        assert (honest[col].fillna(-1) == broken[col].fillna(-1)).all(), col
    assert not (honest["f_gap"].to_numpy()[honest["iteration"] > 0]
                == broken["f_gap"].to_numpy()[broken["iteration"] > 0]).any()


# --------------------------------------------------------------------------- false alarms

FA_REPS, FA_MAX = 50, 3


def test_false_alarm_threshold_is_a_small_binomial_tail():
    """At most FA_MAX = 3 false alarms of 50: if a check's false-alarm probability is at most
    its nominal 0.01, P(X >= 4) = 0.0016 for X ~ Binomial(50, 0.01), so the test below fails
    with probability at most 0.0016 per check and case; 3 of 4 would pass at 0.0138."""
    assert FA.tail(FA_MAX + 1, FA_REPS, FA.NOMINAL) < 0.002
    assert FA.tail(FA_MAX, FA_REPS, FA.NOMINAL) > 0.01


def test_clopper_pearson_and_tail_closed_forms():
    lo, hi = FA.clopper_pearson(0, 200)
    assert lo == 0.0 and abs(hi - (1 - 0.025 ** (1 / 200))) < 1e-12
    lo, hi = FA.clopper_pearson(200, 200)
    assert hi == 1.0 and abs(lo - 0.025 ** (1 / 200)) < 1e-12
    assert abs(FA.tail(1, 50, 0.01) - (1 - 0.99 ** 50)) < 1e-12


def test_count_flags_violated_and_disagrees():
    rows = [{"verdict": "holds", "exact_verdict": "agrees"}, {"verdict": "violated", "exact_verdict": "agrees"},
            {"verdict": "inconclusive", "exact_verdict": "disagrees"}, {"verdict": "violated",
                                                                        "exact_verdict": "disagrees"}]
    flags, verdicts = FA.count(rows)
    assert flags == {"violated": 2, "disagrees": 2, "either": 3} and sum(verdicts.values()) == 4


@pytest.mark.parametrize("case", sorted(FA.CASES))
def test_false_alarm_rate_at_most_nominal(case):
    """50 repetitions (disjoint blocks of 10 seeds) of an honest exact case through
    :func:`theory.verify.verify`: each check raises at most FA_MAX false alarms (the full
    measurement, 2000 repetitions per case, is paper_results/false_alarm_rate.txt)."""
    flags, _ = FA.count(FA.repetitions(case, FA_REPS, 10))
    assert flags["violated"] <= FA_MAX and flags["disagrees"] <= FA_MAX, flags


EXACT_REPS = 2000
EXCEEDS = {"bl-gd"}  # measured: paper_results/false_alarm_rate.txt


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(
    strict=True, reason="measured: the exact check's upper confidence bound under-covers on "
    "Bernoulli-LoRA-GD with 10 seeds (about 0.019 false 'disagrees' at nominal 0.01)"))
    if c in EXCEEDS else c for c in sorted(FA.CASES)])
def test_exact_check_false_alarms_at_2000_repetitions(case):
    """The exact check alone on 2000 blocks of 10 seeds: more than max_count(2000, 0.01)
    false 'disagrees' has probability < 0.002 if the rate is at most nominal. Strict xfail
    where the measured rate exceeds nominal: the test fails once the check is repaired."""
    c = FA.max_count(EXACT_REPS, FA.NOMINAL)
    assert FA.tail(c + 1, EXACT_REPS, FA.NOMINAL) < 0.002 <= FA.tail(c, EXACT_REPS, FA.NOMINAL)
    assert sum(FA.exact_disagreements(case, EXACT_REPS, 10).values()) <= c
