"""Verification catches broken solvers (issue 11, item 6): every break of
:mod:`tests.mutants` is flagged on a shipped configuration (``violated`` against the
theorem's bound, or the exact expectation ``disagrees``), and the unbroken solver is never
flagged on any job of those configurations. Fixed seeds: the outcome is deterministic.

Configurations: the shipped presets of :data:`tests.mutants.PRESETS`, composed by Hydra
exactly as ``python -m experiments.run -m experiment=NAME size=ci`` composes their jobs:
``exact_pairs`` (every method/estimator pair of issue 11 item 2 on a 3 x 2 quadratic with
samples and clients, stepsizes inside the admissible ranges, 200 seeds) and
``exact_isotropic`` (f = L/2 ||W - W*||^2, where the PL bound is within a constant factor of
the exact mean, so a wrong lambda in the bound shows). Every break on every job where it
applies: ``python scripts/mutation_matrix.py`` (paper_results/mutation_matrix.txt); the
breaks below are a subset of it."""
import pytest

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

PAIRS, ISOTROPIC = mutants.PRESETS
#: (preset, sweep overrides) of every job of the shipped presets
JOBS = [(preset, job) for preset in mutants.PRESETS for job in mutants.preset_jobs(preset)]


def _job(preset, *values):
    """The job of ``preset``'s sweep whose overrides have these values, in order."""
    (job,) = [j for p, j in JOBS if p == preset and tuple(o.split("=", 1)[1] for o in j) == values]
    return job


def _id(preset, job):
    return f"{preset}:" + ",".join(o.split("=", 1)[1] for o in job)


# (break, preset, job, where it must be flagged: 'exact' -> disagrees, 'bound' -> violated)
BREAKS = [
    ("scaled_projection", PAIRS, _job(PAIRS, "bernoulli_lora", "gd"), "exact"),
    ("scaled_projection", PAIRS, _job(PAIRS, "rac_left", "page"), "exact"),
    # p = 0.2 on 3 x 2: lambda^p = p/3 + (1-p)/2 depends on p
    ("swapped_coin", PAIRS, _job(PAIRS, "bernoulli_lora", "gd"), "exact"),
    ("swapped_coin", PAIRS, _job(PAIRS, "rac_right", "ef21_randk"), "exact"),
    ("tripled_stepsize", PAIRS, _job(PAIRS, "fpft", "gd"), "exact"),
    ("tripled_stepsize", PAIRS, _job(PAIRS, "bernoulli_lora", "sgd_noise"), "exact"),
    ("tripled_stepsize", PAIRS, _job(PAIRS, "rac_left", "sgd_batch"), "exact"),
    ("page_without_correction", PAIRS, _job(PAIRS, "bernoulli_lora", "page"), "exact"),
    ("page_without_correction", PAIRS, _job(PAIRS, "fpft", "page"), "exact"),
    ("mvr_without_correction", PAIRS, _job(PAIRS, "bernoulli_lora", "mvr"), "exact"),
    ("mvr_without_correction", PAIRS, _job(PAIRS, "fpft", "mvr"), "exact"),
    ("ef21_without_feedback", PAIRS, _job(PAIRS, "bernoulli_lora", "ef21_randk"), "exact"),
    ("ef21_without_feedback", PAIRS, _job(PAIRS, "fpft", "ef21_randk"), "exact"),
    ("biased_compressor", PAIRS, _job(PAIRS, "bernoulli_lora", "qgd_randk"), "exact"),
    ("biased_compressor", PAIRS, _job(PAIRS, "bernoulli_lora", "marina_randk"), "exact"),
    ("biased_compressor", PAIRS, _job(PAIRS, "fpft", "marina_randk"), "exact"),
    ("wrong_lambda_bound", ISOTROPIC, _job(ISOTROPIC, "0.2"), "bound"),
    ("wrong_lambda_bound", ISOTROPIC, _job(ISOTROPIC, "1.0"), "bound"),
]


def _verdict(preset, job, name="honest"):
    cfg = mutants.preset_config(preset, job)
    if name == "honest":
        table = mutants.run_with(cfg)
    elif name == "wrong_lambda_bound":
        table = mutants.run_with(cfg, adjust=mutants.wrong_lambda_bound)
    else:
        assert mutants.applies(name, cfg), (name, job)
        table = mutants.run_with(cfg, mutants.BREAKS[name])
    out = verify(table)
    assert len(out) == 1
    return out.iloc[0]


def flagged(v):
    return v["verdict"] == "violated" or v["exact_verdict"] == "disagrees"


@pytest.mark.parametrize("preset,job", JOBS, ids=[_id(p, j) for p, j in JOBS])
def test_unbroken_solver_is_not_flagged(preset, job):
    """Every job of the shipped presets: the bound holds (with evidence) and the measured
    mean agrees with the exact expectation at every checked point."""
    v = _verdict(preset, job)
    assert not flagged(v), v["reason"]
    assert v["verdict"] == "holds" and v["exact_verdict"] == "agrees", v["reason"]


@pytest.mark.parametrize("name,preset,job,where", BREAKS, ids=[f"{b}-{_id(p, j)}" for b, p, j, _ in BREAKS])
def test_break_is_flagged(name, preset, job, where):
    v = _verdict(preset, job, name)
    assert flagged(v), v["reason"]
    if where == "exact":
        assert v["exact_verdict"] == "disagrees", v["reason"]
    else:
        assert v["verdict"] == "violated", v["reason"]


def test_every_break_is_tested():
    assert set(mutants.BREAKS) | {"wrong_lambda_bound"} == {b for b, _, _, _ in BREAKS}


def test_the_presets_cover_every_exact_pair_of_issue_11():
    """exact_pairs runs FPFT, RAC-LoRA on each side (p = 1, p = 0) and Bernoulli-LoRA
    (0 < p < 1) with each estimator of issue 11 item 2, every job with an exact reference."""
    got = {mutants.label(mutants.preset_config(PAIRS, job)) for job in mutants.preset_jobs(PAIRS)}
    methods = ["fpft", "rac_lora(p=1)", "rac_lora(p=0)", "bernoulli_lora(p=0.2)"]
    estimators = ["gd", "sgd+noise", "sgd+batch6", "page+batch2", "mvr+noise", "qgd/randk", "marina/randk",
                  "ef21/randk_unscaled"]
    assert got == {f"{m}/{e}" for m in methods for e in estimators}


def test_breaks_change_the_run_only():
    """A break runs other numbers than the honest solver, with the same bound and exact
    columns (they come from the configuration, not from the broken solver)."""
    cfg = mutants.preset_config(PAIRS, _job(PAIRS, "bernoulli_lora", "gd"), seeds=3, steps=5)
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
