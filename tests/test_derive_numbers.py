"""scripts/derive_numbers.py: the derived numbers against hand computations, and the
committed paper_results/derived_numbers.csv against a fresh derivation from the raw files."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("derive_numbers", ROOT / "scripts" / "derive_numbers.py")
dn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dn)


def _curve_table(rate, start=1e2, its=range(0, 400, 10), seeds=(0, 1, 2), scale=(0.5, 1.0, 2.0)):
    rows = []
    for s, c in zip(seeds, scale):
        for t in its:
            rows.append(dict(config_hash="h", problem="q", method="bernoulli_lora", estimator="gd", sketch="gaussian",
                             p=0.5, rank=1, stepsize=1.0, seed=s, iteration=t,
                             grad_norm_sq=c * start * math.exp(-rate * t), f_gap=np.nan))
    return pd.DataFrame(rows)


def test_median_curves_are_the_median_and_quantiles_over_seeds():
    table = _curve_table(0.1)
    out = dn.median_curves(table)
    assert len(out) == table["iteration"].nunique()
    row = out[out.iteration == 20].iloc[0]
    vals = table[table.iteration == 20]["grad_norm_sq"].to_numpy()
    assert row.grad_norm_sq_median == pytest.approx(np.median(vals))
    assert row.grad_norm_sq_q10 == pytest.approx(np.quantile(vals, 0.1))
    assert "f_gap_median" not in out  # an all-NaN column is not summarised


def test_curve_numbers_recover_a_known_rate_and_first_crossing(tmp_path):
    rate = 0.1
    dn.median_curves(_curve_table(rate)).to_csv(tmp_path / "c.csv", index=False)
    r = dn.Rows(tmp_path)
    dn.curve_numbers(r, "c.csv", "S")
    got = {row["quantity"].split(",")[0]: row["value"] for row in r.rows}
    assert float(got["log-rate of the median"]) == pytest.approx(-rate, rel=1e-9)
    # median = 100 exp(-0.1 t) < 1e-10 first at t > 10 ln(1e12) = 276.3, on the grid of 10
    assert got["first iteration with median < 1e-10"] == 280


def test_missing_raw_file_is_said_not_invented(tmp_path):
    r = dn.Rows(tmp_path)
    dn.curve_numbers(r, "absent.csv", "S")
    assert len(r.rows) == 1 and r.rows[0]["value"].startswith("not in the repository")
    assert dn.derive(tmp_path).empty is False  # formulas only
    assert set(dn.derive(tmp_path)["source"]) <= {"formula", "h200/sweeps/linreg_gd_median_curves.csv",
                                                  "cpu_ci/median_curves.csv"}


def test_predicted_rates_are_the_quadratic_model_rates():
    r = dn.Rows(ROOT)
    dn.predicted_rates(r, ranks=(1,), n=64)
    vals = {row["quantity"]: float(row["value"]) for row in r.rows}
    assert vals["2 gamma h - gamma^2 h^2 at gamma = 1/L"] == pytest.approx(8 / 9, rel=1e-5)
    assert vals["2 gamma h - gamma^2 h^2 at gamma = 2/L"] == pytest.approx(8 / 9, rel=1e-5)
    assert vals["predicted log-rate ln(1 - (8/9) r/64), rank 1"] == pytest.approx(math.log(1 - 8 / 9 / 64), rel=1e-5)


def test_committed_derived_numbers_are_up_to_date():
    committed = pd.read_csv(ROOT / "paper_results" / "derived_numbers.csv", dtype=str, keep_default_na=False)
    fresh = dn.derive(ROOT / "paper_results").astype(str)
    fresh = pd.read_csv(pd.io.common.StringIO(fresh.to_csv(index=False)), dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(committed.reset_index(drop=True), fresh.reset_index(drop=True))
