"""Verification catches broken solvers (issue 11, item 6): every break of
:mod:`tests.mutants` is flagged on a shipped configuration (``violated`` against the
theorem's bound, or the exact expectation ``disagrees``), and the unbroken solver on the
same configuration is never flagged. Fixed seeds: the outcome is deterministic; the
z-scores recorded in docs/verify.md ("Deliberate breaks") show the margin.

Configurations: the exact-solvable quadratic of the presets at small size (3 x 2, d = 6,
spectrum [0.5, 4], 8 samples with residuals, 2 heterogeneous clients) with the settings of
pl_page / pl_marina / pl_qgd (q = 0.3, stepsize factor 0.3 as in pl_marina, Rand-k), and
for the bound's lambda the isotropic case mu = L of nonisotropic_p (factor 0.5)."""
import pytest
import torch

from experiments.conf.schema import job_config
from tests import mutants
from theory.verify import verify

QUADRATIC = {"problem": "quadratic", "problem.m": 3, "problem.n": 2, "problem.mu": 0.5, "problem.L": 4.0,
             "problem.seed": 1, "problem.n_samples": 8, "problem.noise": 1.0, "problem.n_clients": 2,
             "problem.heterogeneity": 0.5, "method.p": 0.2, "method.rank": 1, "stepsize.factor": 0.3,
             "steps": 60, "seeds": 200, "eval_every": 1, "device": "cpu", "progress": False}
ISOTROPIC = {"problem": "quadratic", "problem.m": 3, "problem.n": 2, "problem.mu": 4.0, "problem.L": 4.0,
             "method.p": 0.2, "method.rank": 1, "stepsize.factor": 0.5, "steps": 40, "seeds": 20,
             "eval_every": 1, "device": "cpu", "progress": False}

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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
