"""Figures: what is drawn (lines, labels, styles, panels, sizes, axis limits) and
reading damaged results. Each test fails on the figures package before issue 10
was fixed (see its comment); the drawing functions ``figures.<name>_figure``
return the Figure that the writer ``figures.<name>(df, stem)`` saves."""
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from figures import data, files, style
from figures import make as figmake
from tests.test_figures import M, N, fast_output  # noqa: F401 (fixture: cheaper files)

WIDTH_LIMIT_IN = 11.0


@pytest.fixture
def drawn():
    """drawn(name, df, **kw) -> the Figure of ``figures.<name>_figure`` (closed after the test)."""
    import figures
    from matplotlib import pyplot

    figs = []

    def run(name, df, **kw):
        figs.append(getattr(figures, f"{name}_figure")(df, **kw))
        return figs[-1]
    yield run
    for f in figs:
        pyplot.close(f)


def _runs(cfg, seeds, iterations, gap, *, bound=None, diverged_from=None):
    """Rows of one configuration: ``gap(t, seed)`` its f - f*, ``bound(t)`` its bound."""
    out = []
    for s in seeds:
        for t in iterations:
            g = gap(t, s)
            b = bound(t) if bound else np.nan
            out.append(dict(cfg, seed=s, iteration=t, epochs=0.1 * t, bits=0.0, time_s=1e-3 * t, loss=g + 1,
                            f_gap=g, grad_norm_sq=2 * g, dist_sq=np.nan, avg_grad_norm_sq=np.nan,
                            min_grad_norm_sq=np.nan, avg_f_gap=np.nan, min_f_gap=np.nan, bound=b,
                            bound_metric="f_gap" if bound else "none", bound_status="ok" if bound else "none",
                            diverged=diverged_from is not None and t >= diverged_from, device="cpu"))
    return out


def _cfg(**kw):
    base = dict(method="bernoulli_lora", estimator="gd", problem="quadratic", p=0.5, rank=1, stepsize=1.0,
                gamma=0.1, sketch="gaussian", compressor="none", batch=np.nan, m=M, n=N)
    base.update(kw)
    base["config_hash"] = hashlib.sha256(repr(sorted((k, repr(v)) for k, v in base.items())).encode()).hexdigest()
    return base


def _geometric(rate, start=4.0):
    return lambda t, s: start * (1 - rate) ** t * math.exp(0.01 * math.sin(3 * t + s))


def _png_width(path) -> int:
    return int.from_bytes(Path(path).read_bytes()[16:20], "big")


def _panels(fig):
    """{panel title: drawn curves (lines of more than one point)} (colour bars left out)."""
    return {ax.get_title(): [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
            for ax in fig.axes if ax.get_label() != "<colorbar>"}


def _look(artist):
    from matplotlib.colors import to_hex

    return to_hex(artist.get_color()), repr(artist.get_linestyle()), repr(artist.get_marker())


def _legend_texts(fig):
    return [t.get_text() for lg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
            for t in lg.get_texts()]


def test_load_skips_a_corrupt_results_file(tmp_path, capfd):
    # before: pd.read_parquet raised ArrowInvalid and figures.make died
    from experiments.results import write_job

    df = pd.DataFrame(_runs(_cfg(), (0, 1), range(0, 30, 5), _geometric(0.1))).drop(columns="config_hash")
    other = pd.DataFrame(_runs(_cfg(p=0.2), (0,), range(0, 30, 5), _geometric(0.1))).drop(columns="config_hash")
    write_job(tmp_path / "sweep" / "good", df, {"job": "good"})
    bad = write_job(tmp_path / "sweep" / "bad", other, {"job": "bad"})
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])  # truncated, and the marker says this is its size
    marker = bad.parent / "_COMPLETE"
    marker.write_text(json.dumps(dict(json.loads(marker.read_text()), results_bytes=len(raw) // 2)))
    with pytest.warns(UserWarning, match=str(bad)):
        loaded = files.load(tmp_path / "sweep")
    assert len(loaded) == len(df) and set(loaded["p"]) == {0.5}
    with pytest.warns(UserWarning, match=str(bad)):
        assert files.load(bad).empty
    capfd.readouterr()
    assert figmake.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "figs")]) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "warning" in err[0]
    assert (tmp_path / "figs" / "convergence_quadratic_f_gap_iteration.png").is_file()


def test_one_hash_on_different_settings_is_not_pooled():
    # inconsistent input (one config_hash on two stepsizes): said, and drawn as two configurations
    df = pd.DataFrame(_runs(_cfg(), (0, 1), range(0, 20, 4), _geometric(0.1)))
    two = pd.concat([df, df.assign(stepsize=2.0, f_gap=df["f_gap"] ** 2)], ignore_index=True)
    with pytest.warns(data.InconsistentHash, match=df["config_hash"].iloc[0][:12]):
        cf = data.configs(two)
    assert list(cf["stepsize"]) == [1.0, 2.0] and cf["config_hash"].nunique() == 2
    with pytest.warns(data.InconsistentHash):
        assert len(data.rate_table(two, "f_gap")) == 2
    no_hash = two.drop(columns="config_hash")
    assert len(data.configs(no_hash)) == 2 and len(data.configs(no_hash.assign(stepsize=1.0))) == 1


def _two_problems(with_columns: bool):
    """A sweep over problem.L: equal in every column but config_hash (and problem.L when
    ``with_columns``), with rates 0.05 (L=100) and 0.3 (L=10)."""
    rows = []
    for L, rate in ((10.0, 0.3), (100.0, 0.05)):
        extra = {"problem.L": L, "method.p": 0.5} if with_columns else {}
        cfg = _cfg(**extra)
        cfg["config_hash"] = f"{'ab' if L == 10 else 'cd'}{'0' * 14}"
        rows += _runs(cfg, (0, 1, 2), range(0, 40, 4), _geometric(rate), bound=lambda t: 5.0 * 0.99 ** t)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("with_columns", [False, True])
def test_configurations_are_never_pooled(drawn, with_columns):
    # before: both problems pooled into one curve (one rate, one band, one heatmap cell)
    df = _two_problems(with_columns)
    rt = data.rate_table(df, "f_gap")
    assert sorted(rt["rate"].round(1)) == [0.1, 0.4]  # -log(1-0.05), -log(1-0.3): one row each
    assert len(data.tightness_table(df)) == 2
    fig = drawn("convergence", df, metric="f_gap")
    panels = _panels(fig)
    assert len(panels) == 2 and all(len(v) == 2 for v in panels.values())  # median + bound per panel
    want = {"L = 10", "L = 100"} if with_columns else {"config ab000000", "config cd000000"}
    assert {t.split(", ")[-1] for t in panels} == want
    assert not any("p = " in t for t in panels)  # method.p copies p: not shown again


def test_stepsize_factor_column_either_name(drawn):
    rows = []
    for f in (1.0, 2.0):
        rows += _runs(_cfg(stepsize=f, rank=1), (0,), range(0, 20, 4), _geometric(0.1 * f))
        rows += _runs(_cfg(stepsize=f, rank=2), (0,), range(0, 20, 4), _geometric(0.15 * f))
    df = pd.DataFrame(rows)
    for table in (df, df.rename(columns={"stepsize": "stepsize_factor"})):
        fig = drawn("convergence", table, metric="f_gap")
        titles = sorted(ax.get_title() for ax in fig.axes)
        assert titles == [r"$\gamma$ = 1/L, rank r = 1", r"$\gamma$ = 1/L, rank r = 2",
                          r"$\gamma$ = 2/L, rank r = 1", r"$\gamma$ = 2/L, rank r = 2"]


def _logistic():
    rows = []
    for est in ("gd", "sgd", "page", "mvr"):
        for p in (0.2, 0.5, 0.8):
            cfg = _cfg(problem="logistic", estimator=est, p=p, batch=np.nan if est == "gd" else 10.0)
            rows += _runs(cfg, (0, 1), range(0, 60, 3), _geometric(0.02 + 0.01 * p + 0.001 * len(est)))
    return pd.DataFrame(rows)


def test_estimators_at_the_same_p_look_different(drawn):
    # before: SGD, PAGE and MVR at one p were drawn in the same colour and line style,
    # and every label ended in "batch = -" (GD) or "batch = 10"
    fig = drawn("convergence", _logistic(), metric="f_gap")
    (ax,) = fig.axes
    labels = _legend_texts(fig)
    assert len([lb for lb in labels if lb.startswith("Bernoulli")]) == 12
    assert not any("batch" in lb for lb in labels)  # follows from the estimator: not a setting
    handles = dict(zip(labels, fig.legends[0].legend_handles))
    names = ("GD", "SGD", "PAGE", "MVR")
    for p in (0.2, 0.5, 0.8):
        same_p = [_look(handles[f"Bernoulli-LoRA-{e} (p={p:g})"]) for e in names]
        assert len({c for c, _, _ in same_p}) == 1  # one colour per p
        assert len({lk[1:] for lk in same_p}) == 4  # each estimator its own line style and marker
    for e in names:
        same_e = [_look(handles[f"Bernoulli-LoRA-{e} (p={p:g})"]) for p in (0.2, 0.5, 0.8)]
        assert len({lk[1:] for lk in same_e}) == 1 and len({lk[0] for lk in same_e}) == 3
    # the curves drawn carry the legend's looks, one curve per configuration
    curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert len(curves) == 12
    assert {_look(ln) for ln in curves} == {_look(handles[lb]) for lb in labels if lb.startswith("Bernoulli")}
    assert ax.get_xlabel() == "iterations" and ax.get_ylabel() == style.metric_label("f_gap")
    assert style.BOUND_STYLE["linestyle"] not in {lk["linestyle"] for lk in style.ESTIMATOR_STYLES.values()}


def _quadratic(ranks, ps, *, stepsizes=(1.0,), iterations=range(0, 30, 3), seeds=(0, 1)):
    rows = []
    for f in stepsizes:
        for r in ranks:
            for p in ps:
                lam = p * r / M + (1 - p) * r / N
                cfg = _cfg(rank=r, p=p, stepsize=f, lambda_min_p=lam)
                rows += _runs(cfg, seeds, iterations, _geometric(0.5 * f * lam),
                              bound=lambda t, lam=lam, f=f: 4.4 * (1 - 0.5 * f * lam) ** t)
    return pd.DataFrame(rows)


def test_rate_vs_rank_draws_rank_and_lambda_its_own_figure(drawn):
    # before: with one rank, rate_vs_rank drew lambda_min^p on its x axis (single points,
    # no line); now rate_vs_rank needs two ranks and rate_vs_lambda draws lambda_min^p
    one_rank = _quadratic((2,), (0.0, 0.5, 1.0))
    with pytest.raises(data.NotEnoughData, match="rank does not vary"):
        drawn("rate_vs_rank", one_rank)
    fig = drawn("rate_vs_lambda", one_rank)
    (ax,) = fig.axes
    assert ax.get_xlabel() == r"$\lambda_{\min}^p$"
    points = [c.lines[0] for c in ax.containers]  # errorbar: (data line, caps, bars)
    assert len(points) == 3
    for ln in points:  # a line of one point is a visible marker
        assert len(ln.get_xdata()) == 1 and ln.get_marker() not in (None, "", "None") and ln.get_markersize() >= 5
    fig = drawn("rate_vs_rank", _quadratic((1, 2, 4), (0.0, 0.5)))
    (ax,) = fig.axes
    assert ax.get_xlabel() == "rank r"
    assert sorted(c.get_label() for c in ax.containers) == ["Bernoulli-LoRA-GD (p=0.5)", "RAC-LoRA-GD (A sampled, B trained)"]
    assert all(list(c.lines[0].get_xdata()) == [1, 2, 4] for c in ax.containers)


def test_tightness_says_which_ratio_and_shows_only_settings_that_apply(drawn):
    # before: colour bar "log10(measured / bound)" (verify calls its max over T "tightness")
    # and panel titles "batch = -" / "batch = 10" beside the estimator
    rows = []
    for est in ("gd", "sgd"):
        for r in (1, 2):
            for p in (0.2, 0.8):
                cfg = _cfg(estimator=est, rank=r, p=p, batch=np.nan if est == "gd" else 10.0)
                rows += _runs(cfg, (0, 1), range(0, 20, 4), _geometric(0.1), bound=lambda t: 4.4 * 0.9 ** t)
    fig = drawn("tightness", pd.DataFrame(rows))
    heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    titles = [ax.get_title() for ax in heat]
    assert sorted(titles) == ["GD: bound on f_gap, T = 16", "SGD: bound on f_gap, T = 16"]
    (cbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert "at the final iteration" in cbar.get_ylabel() and "max over iterations" in cbar.get_ylabel()


def test_wide_sweeps_wrap_into_a_grid(tmp_path, drawn):
    # before: 6 rank panels and a 16-entry legend in one row, 4039 px wide at 200 dpi
    df = _quadratic((1, 2, 4, 8, 16, 32), (0.0, 0.01, 0.2, 0.4, 0.6, 0.8, 0.99, 1.0), stepsizes=(1.0, 2.0),
                    iterations=(0, 5, 10), seeds=(0,))
    fig = drawn("convergence", df, metric="f_gap")
    assert fig.get_size_inches()[0] <= WIDTH_LIMIT_IN
    panels = [ax for ax in fig.axes]
    assert len(panels) == 12
    columns = {round(ax.get_position().x0, 3) for ax in panels}
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(columns) <= style.MAX_COLS and len(rows) >= 3
    assert all(ax.get_xlabel() == "iterations" for ax in panels[-len(columns):])
    # the saved PNG too (savefig's bbox 'tight' could widen it)
    png = tmp_path / "wide.png"
    with style.plt.rc_context(style.RC):
        fig.savefig(png)
    assert _png_width(png) <= WIDTH_LIMIT_IN * style.RC["savefig.dpi"]


def test_counterexample_y_range_is_clipped_and_says_so(drawn):
    # before: the y axis spanned 1e-71 (a geometric bound) to 1e37 (LoRA diverging)
    its = range(0, 1501, 25)
    rows = _runs(_cfg(problem="counterexample", method="lora", p=np.nan), (0, 1), its,
                 lambda t, s: min(10.0 * 1.07 ** t, 1e37), diverged_from=1200)
    rows += _runs(_cfg(problem="counterexample", p=1.0), (0, 1), its,
                  lambda t, s: max(10.0 * 0.93 ** t, 1e-29), bound=lambda t: 10.0 * 0.9 ** t)
    fig = drawn("convergence", pd.DataFrame(rows), metric="f_gap")
    (ax,) = fig.axes
    lo, hi = ax.get_ylim()
    assert 1e-32 <= lo <= 1e-29 and 1e4 <= hi <= 1e6  # data floor 1e-29; cap 1e4 x start 10
    note = fig.get_supxlabel()
    assert note.startswith("y-axis") and "capped" in note and "floored" in note
    # without diverging runs and bounds within the data: nothing is clipped, nothing said
    calm = pd.DataFrame(_runs(_cfg(), (0,), range(0, 30, 3), _geometric(0.2)))
    fig = drawn("convergence", calm, metric="f_gap")
    assert fig.get_supxlabel() == ""
    lo, hi = fig.axes[0].get_ylim()
    assert lo < 4 * 0.8 ** 27 and hi > 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["gd", "sgd"]), st.sampled_from([0.2, 0.5]),
                          st.sampled_from([1.0, 10.0, np.nan]), st.sampled_from(["a", "b"])),
                min_size=1, max_size=8))
def test_label_columns_tell_every_configuration_apart(cfgs):
    cf = pd.DataFrame(cfgs, columns=["estimator", "p", "batch", "problem.kind"])
    cf["method.p"] = cf["p"]  # a copy under another name
    cf["config_hash"] = [f"{k:08d}" for k in range(len(cf))]
    cols = data.label_columns(cf, ("estimator", "p"))
    assert data.n_distinct(cf, ["estimator", "p", *cols]) == len(cf)  # never two configurations alike
    assert "method.p" not in cols
    for k, c in enumerate(cols):  # each shown setting tells some configurations apart
        assert data.n_distinct(cf, ["estimator", "p", *cols[:k + 1]]) > data.n_distinct(cf, ["estimator", "p", *cols[:k]])


def test_too_many_panels_move_settings_into_labels_and_lines_stay_apart(drawn):
    # 3 ranks x 2 stepsizes x 3 sketches = 18 panels > MAX_PANELS: the sketch goes into the labels
    rows = []
    for f in (1.0, 2.0):
        for r in (1, 2, 4):
            for sk in ("gaussian", "orthonormal", "column"):
                for p in (0.2, 0.8):
                    rows += _runs(_cfg(stepsize=f, rank=r, sketch=sk, p=p), (0,), (0, 5, 10),
                                  _geometric(0.01 * r * f + 0.001 * len(sk)))
    fig = drawn("convergence", pd.DataFrame(rows), metric="f_gap")
    assert len(fig.axes) == 6 and 3 * 2 * 3 > style.MAX_PANELS
    labels = _legend_texts(fig)
    assert "Bernoulli-LoRA-GD (p=0.2), sketch = orthonormal" in labels
    for ax in fig.axes:  # six curves per panel, no two alike
        curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
        assert len(curves) == 6 and len({_look(ln) for ln in curves}) == 6


def test_prefixed_settings_shown_by_their_last_part_unless_ambiguous():
    from figures.layout import settings as text

    kv = {"problem.L": 10.0, "estimator.L": 2.0, "problem.mu": 0.5, "batch": np.nan}
    assert text(kv, ["problem.mu", "batch"]) == "mu = 0.5"  # n/a settings left out
    assert text(kv, ["problem.L", "estimator.L", "problem.mu"]) == "problem.L = 10, estimator.L = 2, mu = 0.5"


def test_a_configuration_without_a_setting_never_meets_its_twin(drawn):
    # SGD without a batch (n/a) beside SGD with batch 10 and 100, same p and rank: in the
    # convergence figure the n/a one may not join the batch panels (it would look the same
    # as its twin there); in the heatmap every configuration has its own cell
    rows = []
    for batch in (np.nan, 10.0, 100.0):
        for r in (1, 2):
            cfg = _cfg(estimator="sgd", batch=batch, rank=r)
            rows += _runs(cfg, (0,), (0, 5, 10), _geometric(0.1 + 0.01 * r), bound=lambda t: 4.4 * 0.9 ** t)
    df = pd.DataFrame(rows)
    fig = drawn("convergence", df, metric="f_gap")
    for ax in fig.axes:
        curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1 and ln.get_linestyle() != ":"]
        assert len({_look(ln) for ln in curves}) == len(curves) == 3
    assert {"Bernoulli-LoRA-SGD (p=0.5)", "Bernoulli-LoRA-SGD (p=0.5), batch = 10"} <= set(_legend_texts(fig))
    fig = drawn("tightness", df)
    heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert sorted(ax.get_title().split("\n")[-1] for ax in heat) == \
        ["SGD: bound on f_gap, T = 10", "batch = 10", "batch = 100"]
