"""scripts/compare_collected.py: equal tables pass (row order and timing columns aside);
a changed value, a missing row or a missing column is reported."""
import numpy as np
import pandas as pd

from scripts.compare_collected import compare


def _table():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"config_hash": ["a"] * 4 + ["b"] * 4, "seed": [0, 0, 1, 1] * 2,
                         "iteration": [0, 10] * 4, "loss": rng.random(8), "f_gap": [np.nan] * 8,
                         "method": ["fpft"] * 8, "time_s": rng.random(8)})


def test_the_same_table_in_another_order_with_other_times_is_the_same():
    a = _table()
    b = a.sample(frac=1.0, random_state=1).assign(time_s=lambda d: d.time_s + 1.0)
    assert compare(a, b) == []


def test_differences_are_reported():
    a = _table()
    b = a.copy()
    b.loc[3, "loss"] = np.nextafter(b.loc[3, "loss"], 2.0)  # one ulp
    assert compare(a, b) == ["column loss: 1 values differ"]
    assert any("different rows" in d for d in compare(a, a.iloc[1:]))
    assert compare(a, a.drop(columns="method")) == ["column method only in the first table"]
