"""One results store (issue 12, item 3): one schema that says which columns are
measurements, one reader and one writer for the Hydra jobs and the real-model
section, and the real-model report's numbers unchanged by the move."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resultstore import files, schema

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL_RUNS = sorted((ROOT / "paper_results" / "h200" / "real_model").glob("*/results.parquet"))


def _all_columns() -> list[str]:
    """Every column a job or a real-model table has, plus the open families."""
    from experiments.real_model import table

    extra = ["problem_L", "estimator_batch", "stepsize_rule", "steps", "m", "n", "lambda_min_p", "lambda_max_p",
             "device", "wall_s", "group_wall_s", "exact", "exact_f_gap", "exact_metric", "exact_status"]
    real = pd.read_parquet(REAL_MODEL_RUNS[0]).columns.tolist() if REAL_MODEL_RUNS else []
    assert table.job_rows  # the real-model rows' writer (its columns are read from a stored table above)
    return list(dict.fromkeys([*schema.COLUMNS, *schema.REAL_MODEL_COLUMNS, *extra, *real]))


def test_verify_and_figures_read_one_list_of_configuration_columns():
    """theory.verify groups and labels by the columns that are not measured; figures
    label by the configuration columns; both are the schema's, for every column."""
    from figures import data
    from theory import verify

    df = pd.DataFrame(columns=_all_columns())
    measured = [c for c in df.columns if verify._is_measured(c)]
    assert measured == [c for c in df.columns if schema.is_measured(c)]
    assert data.config_columns(df) == [c for c in df.columns if c not in measured and c not in schema.DERIVED]
    # what a reader of either would get wrong if the lists drifted apart
    for col in ("test_acc", "val_acc", "group_wall_s", "exact_status", "batched_runs", "config_hash", "seed"):
        assert verify._is_measured(col) and col not in data.config_columns(df), col
    for col in ("method", "p", "rank", "data", "optimizer", "estimator_batch", "problem_L"):
        assert not verify._is_measured(col) and col in data.config_columns(df), col


def test_every_schema_column_has_one_role():
    for kind, cols in schema.SCHEMAS.items():
        for c in cols:
            roles = [c in schema.MEASUREMENTS, c in schema.BOOKKEEPING, c in schema.DERIVED,
                     schema.is_configuration(c) and c not in schema.MEASUREMENTS | schema.BOOKKEEPING]
            assert sum(roles) == 1, (kind, c, roles)


def _real_rows(h="h" * 64, seeds=(0, 1)):
    return pd.DataFrame({"method": "rac_lora_b", "p": np.nan, "rank": 1, "data": "digits", "seed": list(seeds),
                         "test_acc": [0.5, 0.6], "val_acc": [0.4, 0.5], "trainable_params": 912.0,
                         "diverged": False, "config_hash": h})


def test_one_writer_and_reader_for_both_kinds(tmp_path):
    """A job and a real-model table under one root: each reader sees its own kind;
    a table missing a schema column is refused before anything is written."""
    from experiments.real_model import store
    from experiments.results import complete_jobs, load_results, write_job
    from tests.test_results import CFG, table

    write_job(tmp_path / "job", table(), CFG)
    cfg = {"data": "digits", "method": {"name": "rac_lora_b"}}
    h = store.write_table(tmp_path / "rm", _real_rows(h=store.config_hash(cfg)), cfg)
    assert files.is_complete(tmp_path / "rm", h, kind=schema.REAL_MODEL) and store.finished(tmp_path / "rm", h)
    assert complete_jobs(tmp_path) == [tmp_path / "job"] and len(load_results(tmp_path)) == len(table())
    got = files.read_tables(tmp_path, kind=schema.REAL_MODEL)
    assert list(got["seed"]) == [0, 1] and set(got["config_hash"]) == {h}
    with pytest.raises(ValueError, match="missing column.*test_acc"):
        store.write_table(tmp_path / "bad", _real_rows(h=h).drop(columns="test_acc"), cfg)
    with pytest.raises(ValueError, match="config_hash"):
        store.write_table(tmp_path / "bad", _real_rows(h="x" * 64), cfg)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


@pytest.mark.parametrize("results", REAL_MODEL_RUNS, ids=lambda p: p.parent.name)
def test_stored_real_model_tables_give_the_published_numbers(results):
    """paper_repro.md section B is read from these summaries (written by the code before
    the store was shared): the current report rebuilds every number from the stored
    rows, all columns but the display label identical."""
    from experiments.real_model.report import summarize

    old = pd.read_csv(results.parent / "summary.csv", keep_default_na=False, na_values=[""])
    new = summarize(pd.read_parquet(results))
    new = pd.read_csv(io.StringIO(new.to_csv(index=False)), keep_default_na=False, na_values=[""])
    assert list(new.columns) == list(old.columns)
    cols = [c for c in old.columns if c != "label"]
    pd.testing.assert_frame_equal(new[cols], old[cols], check_exact=True)


def test_real_model_labels_and_colours_are_the_figures(tmp_path):
    """The real-model summary and figure name and colour a method as every figure does:
    rac_lora_b (B sampled, A trained) is Bernoulli-LoRA's p = 1 (solvers.methods)."""
    from experiments.real_model.report import accuracy_vs_p_figure, summarize
    from figures import style

    rows = []
    for m, p, acc in (("rac_lora_a", np.nan, 0.7), ("rac_lora_b", np.nan, 0.9), ("bernoulli_lora", 0.5, 0.8),
                      ("bernoulli_lora", 1.0, 0.9), ("lora_a", np.nan, 0.6)):
        for s in (0, 1):
            rows.append(dict(method=m, p=p, rank=1, data="digits", seed=s, test_acc=acc, val_acc=acc,
                             trainable_params=1.0, trainable_params_max=1, opt_state_bytes=8, wall_s=1.0,
                             diverged=False, switch="epoch", optimizer="adamw", epochs=1, config_hash=m + str(p)))
    df = pd.DataFrame(rows)
    t = summarize(df)
    assert list(t["label"]) == ["RAC-LoRA (A sampled, B trained)", "RAC-LoRA (B sampled, A trained)",
                                "Bernoulli-LoRA (p=0.5)", "Bernoulli-LoRA (p=1)", "LoRA (A sampled, B zero)"]
    fig = accuracy_vs_p_figure(df, t)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")}
    from matplotlib.colors import to_hex

    assert to_hex(lines["RAC-LoRA (B sampled, A trained)"].get_color()) == \
        to_hex(style.method_color("bernoulli_lora", 1.0))
    assert to_hex(lines["RAC-LoRA (A sampled, B trained)"].get_color()) == \
        to_hex(style.method_color("bernoulli_lora", 0.0))
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_one_atomic_write_routine():
    """Every file the suite writes atomically goes through resultstore.files.atomic_write
    (its temporary names are the ones experiments.storage.remove_stale_temps knows)."""
    import re

    pattern = re.compile(r"os\.replace\(|\.replace\(a\.out\)|mkstemp\(|NamedTemporaryFile\(")
    found = []
    for pkg in ("resultstore", "theory", "solvers", "experiments", "figures", "scripts", "benchmarks"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line) and not line.lstrip().startswith("#"):
                    found.append(f"{f.relative_to(ROOT)}:{i}")
    assert found and {f.split(":")[0] for f in found} == {"resultstore/files.py"}, found
