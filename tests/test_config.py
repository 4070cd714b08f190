"""Configuration: every key is declared once (schema), refused when unknown or out
of range before any work, and is a column of the results table (issue 10)."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.build import build_job
from experiments.conf.schema import GROUPS, job_config
from experiments.job import execute
from experiments.results import config_hash
from solvers import rng
from solvers.engine import FIELDS

# (helpers of experiments.conf.check are imported inside the tests that need them, so
# that the tests of the bugs of issue 10 run, and fail, on the code before the fix)
SEED_MAX = 2**32 - 1  # the largest seed: the random streams key runs by 32 bits
TINY = dict(steps=4, seeds=2, eval_every=2, device="cpu", progress=False)
FED = {"problem.n_clients": 4, "problem.n_samples": 40}


def _valid(group, name):
    """A valid configuration choosing ``name`` for ``group`` (a compressor needs a
    distributed estimator on a distributed problem)."""
    if group == "compressor":
        return job_config(problem="logistic", estimator="qgd", compressor=name, **FED, **TINY)
    return job_config(**{group: name}, **TINY)


ALL_OPTIONS = [(g, n) for g, opts in GROUPS.items() for n in opts]


# --------------------------------------------------------------------------- refusals (A)

@pytest.mark.parametrize("group,name", ALL_OPTIONS)
def test_every_option_default_is_valid_and_every_key_a_column(group, name):
    from experiments.conf.check import check_config, column_name, config_columns, is_config_column
    from experiments.conf.schema import FIXED_GROUPS

    cfg = _valid(group, name)
    check_config(cfg)
    cols = config_columns(cfg)
    for g in (*GROUPS, *FIXED_GROUPS):
        for key in cfg[g]:
            assert column_name(g, key) in cols and is_config_column(column_name(g, key))
    derived = {"seed", "gamma", "lambda_min_p", "lambda_max_p", "m", "n", "device", "config_hash",
               "bound", "bound_metric", "bound_status"}
    assert not set(cols) & (set(FIELDS) | derived)


@pytest.mark.parametrize("key", ["problem.foo", "method.foo", "estimator.foo", "sketch.foo", "compressor.foo",
                                 "stepsize.foo", "foo"])
def test_unknown_key_in_any_group_is_refused_naming_it(key):
    with pytest.raises(ValueError, match=rf"^{key}: unknown key") as err:
        build_job(job_config(**{key: 1}, **TINY))
    assert "\n" not in str(err.value)


def test_alpha_is_refused_for_bernoulli_lora_and_kept_for_lora():
    # Bernoulli-LoRA steps in weight space (W - gamma H_B G): a LoRA scaling alpha / r
    # would cancel, so the key is not part of that method
    with pytest.raises(ValueError, match=r"^method.alpha: unknown key: bernoulli_lora takes"):
        build_job(job_config(**{"method.alpha": 2.0}, **TINY))
    a, b = (build_job(job_config(method="lora", **{"method.alpha": v}, **TINY)) for v in (1.0, 2.0))
    assert (a.method.alpha, b.method.alpha) == (1.0, 2.0)


@pytest.mark.parametrize("kw,field", [
    (dict(seed=2**64), "seed"), (dict(seed=-1), "seed"), (dict(seed=2**63 - 1), "seed"),
    (dict(seed=SEED_MAX, seeds=2), "seed"), (dict(seed=2**32), "seed"), (dict(seeds=0), "seeds"),
    (dict(steps=0), "steps"), (dict(eval_every=0), "eval_every"), ({"problem.seed": 2**32}, "problem.seed"),
    ({"method.p": 1.5}, "method.p"), ({"method.p": float("nan")}, "method.p"), ({"method.rank": 0}, "method.rank"),
    ({"stepsize.factor": 0.0}, "stepsize.factor"), ({"stepsize.rule": "newton"}, "stepsize.rule"),
    (dict(size="huge"), "size"), (dict(track_every_step=1), "track_every_step"),
    ({"problem.m": "8"}, "problem.m"), ({"problem.m": None}, "problem.m"),
    (dict(compressor="randk"), "compressor"), (dict(sketch="orthonormal", method="fpft"), "sketch"),
])
def test_bad_values_are_refused_with_one_line_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"^{field}: ") as err:
        build_job(job_config(**{**TINY, **kw}))
    assert "\n" not in str(err.value)


def test_seeds_beyond_32_bits_would_repeat_streams():
    # why the seed range stops at SEED_MAX: the streams key a run by its low 32 bits
    a = rng.normal([0, SEED_MAX + 1, 1], rng.Stream.SKETCH, 0, (4,))
    assert np.array_equal(a[0].numpy(), a[1].numpy()) and not np.array_equal(a[0].numpy(), a[2].numpy())
    from experiments.conf import schema

    assert schema.SEED_MAX == SEED_MAX
    build_job(job_config(**{**TINY, "seed": SEED_MAX, "seeds": 1}))  # the largest seed is accepted


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(-2**70, 2**70) | st.integers(SEED_MAX - 5, SEED_MAX + 5),
       seeds=st.integers(-3, 12))
def test_seed_range_is_exactly_the_32_bit_key_space(seed, seeds):
    from experiments.conf.check import check_config

    ok = seeds >= 1 and 0 <= seed and seed + seeds - 1 <= SEED_MAX
    try:
        check_config(job_config(seed=seed, seeds=seeds))
    except ValueError as err:
        assert not ok and str(err).split(":")[0] in ("seed", "seeds")
    else:
        assert ok


def test_groups_used_by_other_choices_only():
    from experiments.conf.check import check_config
    from experiments.conf.schema import USED_BY

    for group, (user, options) in USED_BY.items():
        assert set(options) <= set(GROUPS[user])
    check_config(job_config(problem="logistic", estimator="marina", compressor="randk", **FED))


# --------------------------------------------------------------------------- columns (B)

def _tables(variants):
    return [execute(job_config(**{**TINY, **kw}))[0] for kw in variants]


def test_every_varying_parameter_is_a_column_and_distinguishes_jobs():
    variants = [{"problem.L": 10.0}, {"problem.L": 100.0}, {"problem.mu": 2.0}, {"problem.m": 5},
                {"stepsize.factor": 0.5}, {"stepsize.rule": "polyak"}, {"method.p": 0.2},
                {"method.rank": 1}, {"sketch": "orthonormal"}, {"steps": 6}, {"eval_every": 1},
                dict(problem="logistic", estimator="sgd", **{"problem.n_samples": 40, "estimator.batch": 4}),
                dict(problem="logistic", estimator="sgd", **{"problem.n_samples": 40, "estimator.batch": 8}),
                dict(problem="logistic", estimator="mvr", **{"problem.n_samples": 40, "estimator.momentum": 0.5}),
                dict(problem="logistic", estimator="qgd", compressor="randk", **FED, **{"compressor.k": 2}),
                dict(problem="logistic", estimator="qgd", compressor="randk", **FED, **{"compressor.k": 3})]
    table = pd.concat(_tables(variants), ignore_index=True)
    from experiments.conf.check import is_config_column

    for col, vals in (("problem_L", {10.0, 100.0}), ("estimator_batch", {4, 8}), ("compressor_k", {2, 3}),
                      ("stepsize_rule", {"constant", "polyak"}), ("stepsize_factor", {0.5, 1.0}),
                      ("estimator_momentum", {0.5}), ("problem_mu", {1.0, 2.0}), ("steps", {4, 6})):
        assert vals <= set(table[col].dropna()), col
    conf = [c for c in table.columns if is_config_column(c)]
    # rows of different jobs never look alike: the configuration columns determine the hash
    assert table.groupby(conf, dropna=False)["config_hash"].nunique().max() == 1
    assert table.drop_duplicates(conf).shape[0] == table["config_hash"].nunique() == len(variants)
    # gamma is the stepsize of the constant rule: factor / L
    q = table[(table["problem"] == "quadratic") & (table["stepsize_rule"] == "constant")]
    np.testing.assert_allclose(q["gamma"], q["stepsize_factor"] / q["problem_L"])


def test_column_names_say_what_they_hold():
    (gd,) = _tables([{}])
    assert "stepsize" not in gd and (gd["stepsize_factor"] == 1.0).all() and (gd["gamma"] == 0.1).all()
    assert (gd["compressor"] == "identity").all()  # the config's name, not "none"
    assert "batch" not in gd and "transmit" not in gd


def test_old_tables_are_read_with_current_names(tmp_path):
    import json

    from experiments.results import COMPLETE_MARKER, CONFIG_FILE, RESULTS_FILE, load_results
    from experiments.verify import load_tables

    (new,) = _tables([dict(problem="logistic", estimator="sgd", **{"problem.n_samples": 40, "estimator.batch": 4})])
    old = new.rename(columns={"stepsize_factor": "stepsize", "estimator_batch": "batch"}).assign(
        compressor="none", transmit="none")
    d = tmp_path / "job"
    d.mkdir()
    old.to_parquet(d / RESULTS_FILE, index=False)
    (d / CONFIG_FILE).write_text("{}\n")
    info = {"config_hash": new["config_hash"].iloc[0], "rows": len(old), "schema_version": 1,
            "results_bytes": (d / RESULTS_FILE).stat().st_size}
    (d / COMPLETE_MARKER).write_text(json.dumps(info))
    for read in (load_results, load_tables):
        t = read(tmp_path)
        assert "stepsize" not in t and (t["stepsize_factor"] == 1.0).all() and (t["estimator_batch"] == 4).all()
        assert (t["compressor"] == "identity").all() and t["estimator_transmit"].isna().all()


def test_summary_has_one_row_per_job_labelled_by_what_varies():
    from experiments.summarize import summarize

    table = pd.concat(_tables([{"problem.L": 10.0}, {"problem.L": 100.0}]), ignore_index=True)
    out = summarize(table)
    assert len(out) == 2 and sorted(out["problem_L"]) == [10.0, 100.0]
    assert "problem_mu" not in out  # constant over the table: not a label
    assert math.isclose(out["stepsize_factor"].iloc[0], 1.0)


def test_config_hash_ignores_int_float_spelling_and_columns_agree():
    from experiments.conf.check import config_columns

    a, b = job_config(**{"stepsize.factor": 1}), job_config(**{"stepsize.factor": 1.0})
    assert config_hash(a) == config_hash(b) and config_columns(a) == config_columns(b)
    assert isinstance(config_columns(a)["stepsize_factor"], float)


def test_a_refused_key_is_not_skipped_as_an_old_complete_job(tmp_path):
    # old default bernoulli_lora configs carried alpha = 1.0: the same hash must be
    # refused, not reported as already complete
    from experiments.job import run_job
    from experiments.results import write_job

    old = job_config(**{**TINY, "method.alpha": 1.0})
    (new,) = _tables([{}])
    write_job(tmp_path / "old", new.assign(config_hash=config_hash(old)), old)
    with pytest.raises(ValueError, match=r"^method.alpha: unknown key"):
        run_job(old, tmp_path / "again", results_root=tmp_path)
