"""The faster reductions of :mod:`figures.data` and the task order of ``figures.make``
give what the plain pandas forms give: keys joined per row (``row_keys``), the runs of a
curve per seed (``_seed_runs`` against ``groupby("seed")``), one ``config_ids`` passed
to ``configs`` and ``curves``; and the forked workers get the heaviest problems first
(that the files and log lines stay in the table's order:
tests/test_figures.py::test_make_all_in_two_processes_draws_the_same_figures)."""
import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from figures import data
from figures import make as figmake
from tests.test_figures import synthetic

CELLS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False, width=32), st.integers(-3, 3),
                  st.sampled_from(["gd", "a|b", "", "nan"]), st.lists(st.integers(0, 2), max_size=2))


def _rowwise(df, cols):
    """The keys as the row-wise apply made them before."""
    return pd.concat([data._text(df[c]) for c in cols], axis=1).agg("|".join, axis=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(CELLS, CELLS, st.floats(allow_nan=True, width=32)), min_size=1, max_size=12),
       st.sampled_from([["a"], ["a", "b"], ["b", "c", "a"], ["c"]]))
def test_row_keys_are_the_rowwise_join(rows, cols):
    df = pd.DataFrame(rows, columns=["a", "b", "c"], index=np.arange(len(rows)) * 3 + 1)
    got = data.row_keys(df, cols)
    assert got.index.equals(df.index)
    assert got.tolist() == _rowwise(df, cols).tolist()
    texts = {}  # the shared texts give the same keys, and the counts follow them
    assert data.row_keys(df, cols, texts=texts).tolist() == got.tolist() and set(texts) == set(cols)
    assert data.n_distinct(df, cols, texts=texts) == _rowwise(df, cols).nunique()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 4), st.just(np.nan)), st.integers(0, 50),
                          st.floats(1e-6, 1e3)), min_size=1, max_size=40))
def test_seed_runs_are_groupby_seed(rows):
    curve = pd.DataFrame(rows, columns=["seed", "iteration", "f_gap"])
    want = [(seed, [run["iteration"].to_numpy(), run["f_gap"].to_numpy()]) for seed, run in curve.groupby("seed")]
    got = list(data._seed_runs(curve, ("iteration", "f_gap")))
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, g), (_, w) in zip(got, want):
        assert all(np.array_equal(a, b) for a, b in zip(g, w))
    whole = list(data._seed_runs(curve.drop(columns="seed"), ("iteration",)))  # no seed column: one run
    assert len(whole) == 1 and np.array_equal(whole[0][1][0], curve["iteration"].to_numpy())


def test_rate_table_is_the_same_with_the_ids_given_and_as_one_groupby_per_seed():
    """rate_table against its definition: one np.polyfit per seed run (groupby), the
    median and quantiles over the seeds; the configurations those of configs()."""
    df = synthetic()
    df = df[df["problem"] == "quadratic"]
    rt = data.rate_table(df, "f_gap")
    ids = data.config_ids(df)
    assert rt["config_hash"].tolist() == data.configs(df, ids=ids)["config_hash"].tolist()
    for kv, curve in data.curves(df, ids=ids):
        bad = set(curve.loc[curve["diverged"].astype(bool), "seed"])
        rates = [data.fit_log_slope(run["iteration"], run["f_gap"])[0]
                 for seed, run in curve.groupby("seed") if seed not in bad]
        row = rt[rt["config_hash"] == kv["config_hash"]].iloc[0]
        assert row["rate"] == np.median(rates) and row["rate_lo"] == np.quantile(rates, 0.1)
        assert row["n_runs"] == len(rates) and row["n_diverged"] == len(bad)


def test_workers_get_the_heaviest_problems_first_in_table_order_otherwise():
    df = synthetic()  # quadratic: 13 configurations, logistic: 1
    tasks = list(figmake._tasks(df))
    order = figmake._heaviest_first(tasks)
    assert sorted(order) == list(range(len(tasks)))
    probs = [tasks[i][1] for i in order]
    assert probs == sorted(probs, key=lambda p: p != "quadratic")  # every quadratic figure first
    assert [i for i in order if tasks[i][1] == "quadratic"] == [i for i, t in enumerate(tasks) if t[1] == "quadratic"]

