"""The results store: schema, config hash, atomic job writes, loading, collect."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import collect, results
from resultstore import files as store_files
from experiments.results import (COLUMNS, COMPLETE_MARKER, CONFIG_FILE, RESULTS_FILE, config_hash,
                                  find_complete, is_complete, load_results, validate, write_job)

ROOT = Path(__file__).resolve().parents[1]

CFG = {
    "problem": {"name": "quadratic", "m": 6, "n": 5, "mu": 0.1, "L": 1.0},
    "method": {"name": "bernoulli_lora", "p": 0.5, "rank": 2},
    "estimator": {"name": "gd"}, "sketch": {"name": "gaussian"},
    "stepsize": {"rule": "constant", "factor": 1.0},
    "steps": 20, "seeds": 2, "seed": 0, "eval_every": 10, "device": "cpu",
}


def table(cfg=CFG, seeds=(0, 1), iterations=(0, 10, 20)):
    h = config_hash(cfg)
    rows = []
    for s in seeds:
        for t in iterations:
            g = 2.0 * 0.9 ** t
            rows.append(dict(method="bernoulli_lora", estimator="gd", problem="quadratic", p=0.5, rank=2,
                             stepsize_factor=1.0, gamma=1.0, sketch="gaussian", compressor="identity", seed=s,
                             iteration=float(t), epochs=float(t), bits=0.0, time_s=0.01 * t, loss=g,
                             f_gap=g, grad_norm_sq=2 * g, dist_sq=2 * g, avg_grad_norm_sq=np.nan,
                             min_grad_norm_sq=np.nan, avg_f_gap=np.nan, min_f_gap=np.nan, bound=3.0 * 0.95 ** t,
                             bound_metric="f_gap", bound_status="holds", config_hash=h, diverged=False,
                             m=6, n=5, device="cpu"))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- schema

def test_validate_accepts_table_and_extra_columns():
    df = results.coerce(table())
    assert validate(df) is df
    assert df["iteration"].dtype == np.int64


def test_validate_names_missing_column():
    df = results.coerce(table()).drop(columns=["grad_norm_sq"])
    with pytest.raises(ValueError, match="missing column.*'grad_norm_sq'"):
        validate(df)


def test_validate_names_bad_dtype():
    df = results.coerce(table())
    df["diverged"] = df["diverged"].astype(float)
    with pytest.raises(ValueError, match="'diverged'"):
        validate(df)
    df = results.coerce(table())
    df["rank"] = 2.5
    with pytest.raises(ValueError, match="'rank'"):
        results.coerce(df)


def test_columns_cover_design_minimum():
    design = ("method estimator problem p rank stepsize_factor sketch seed iteration epochs bits time_s f_gap "
              "grad_norm_sq dist_sq bound bound_metric config_hash diverged").split()
    assert set(design) <= set(COLUMNS)


# --------------------------------------------------------------------------- hash

def test_config_hash_stable_under_key_order_and_spelling():
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v)
                 for k, v in reversed(list(CFG.items()))}
    assert config_hash(reordered) == config_hash(CFG)
    spelled = {**CFG, "stepsize": {"rule": "constant", "factor": 1}, "extra_none": None}
    assert config_hash(spelled) == config_hash(CFG)
    assert len(config_hash(CFG)) == 64


def test_config_hash_ignores_non_result_keys_only():
    moved = {**CFG, "device": "cuda", "hydra": {"run": {"dir": "/x"}}, "results_root": "/y"}
    assert config_hash(moved) == config_hash(CFG)
    for change in ({"method": {**CFG["method"], "p": 0.6}}, {"seeds": 3}, {"steps": 21},
                   {"sketch": {"name": "orthonormal"}}):
        assert config_hash({**CFG, **change}) != config_hash(CFG)


def test_config_hash_accepts_omegaconf():
    from omegaconf import OmegaConf

    assert config_hash(OmegaConf.create(CFG)) == config_hash(CFG)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=4),
                       st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, width=32), st.text(max_size=3)),
                       min_size=1, max_size=6), st.randoms())
def test_config_hash_permutation_invariant(d, rnd):
    items = list(d.items())
    rnd.shuffle(items)
    assert config_hash(dict(items)) == config_hash(d)


# --------------------------------------------------------------------------- writing

def test_write_job_roundtrip(tmp_path):
    job = tmp_path / "sweep" / "0"
    path = write_job(job, table(), CFG)
    assert path == job / RESULTS_FILE
    h = config_hash(CFG)
    assert is_complete(job) and is_complete(job, h) and not is_complete(job, "0" * 64)
    assert find_complete(tmp_path / "sweep", h) == job
    assert find_complete(tmp_path / "sweep", "0" * 64) is None
    assert find_complete(tmp_path / "nowhere", h) is None
    assert results.complete_hashes(tmp_path) == {h: job} and results.complete_hashes(tmp_path / "nowhere") == {}
    back = load_results(job)
    assert len(back) == 6 and back["iteration"].dtype == np.int64 and "m" in back.columns
    assert results.read_config(job)["method"]["p"] == 0.5
    assert [p.name for p in job.iterdir() if p.name.startswith(".")] == []


def test_write_job_fills_and_checks_hash(tmp_path):
    df = table().drop(columns=["config_hash"])
    write_job(tmp_path / "a", df, CFG)
    assert set(load_results(tmp_path / "a")["config_hash"]) == {config_hash(CFG)}
    with pytest.raises(ValueError, match="config_hash"):
        write_job(tmp_path / "b", table(), {**CFG, "steps": 99})
    assert not is_complete(tmp_path / "b")


def _boom_parquet(df, tmp):
    with open(tmp, "wb") as fh:
        fh.write(b"PAR1 partial")
    raise KeyboardInterrupt


def test_interrupted_results_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(store_files, "_write_parquet", _boom_parquet)
    with pytest.raises(KeyboardInterrupt):
        write_job(tmp_path / "j", table(), CFG)
    assert os.listdir(tmp_path / "j") == []
    assert not is_complete(tmp_path / "j")
    assert find_complete(tmp_path, config_hash(CFG)) is None


def test_interrupted_rewrite_invalidates_old_marker(tmp_path, monkeypatch):
    write_job(tmp_path / "j", table(), CFG)
    assert is_complete(tmp_path / "j")
    monkeypatch.setattr(store_files, "_write_parquet", _boom_parquet)
    with pytest.raises(KeyboardInterrupt):
        write_job(tmp_path / "j", table(), CFG)
    assert not is_complete(tmp_path / "j")
    assert sorted(os.listdir(tmp_path / "j")) == [CONFIG_FILE, RESULTS_FILE]  # old files, no marker, no temp


def test_interrupted_before_marker_is_incomplete(tmp_path, monkeypatch):
    real = store_files.atomic_write

    def no_marker(path, write):
        if path.name == COMPLETE_MARKER:
            raise RuntimeError("killed")
        real(path, write)

    monkeypatch.setattr(store_files, "atomic_write", no_marker)
    with pytest.raises(RuntimeError):
        write_job(tmp_path / "j", table(), CFG)
    assert (tmp_path / "j" / RESULTS_FILE).is_file() and not is_complete(tmp_path / "j")
    assert load_results(tmp_path).empty


def test_load_results_ignores_incomplete_and_tampered(tmp_path):
    write_job(tmp_path / "ok", table(), CFG)
    cfg2 = {**CFG, "seed": 5}
    write_job(tmp_path / "tampered", table(cfg2), cfg2)
    (tmp_path / "tampered" / RESULTS_FILE).write_bytes(b"truncated")
    (tmp_path / "partial").mkdir()
    table().to_parquet(tmp_path / "partial" / RESULTS_FILE)
    df = load_results(tmp_path)
    assert len(df) == 6 and set(df["config_hash"]) == {config_hash(CFG)}
    assert [p.name for p in results.incomplete_jobs(tmp_path)] == ["partial", "tampered"]
    empty = load_results(tmp_path / "partial")
    assert empty.empty and list(empty.columns) == list(COLUMNS)
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing")


# --------------------------------------------------------------------------- collect

def _sweep(root):
    for k, p in enumerate((0.2, 0.5, 0.8)):
        cfg = {**CFG, "method": {**CFG["method"], "p": p}}
        df = table(cfg)
        df["p"] = p
        write_job(root / "multirun" / str(k), df, cfg)
    (root / "multirun" / "3").mkdir()  # a job killed before its marker
    table().to_parquet(root / "multirun" / "3" / RESULTS_FILE)


def test_collect_main(tmp_path, capsys):
    _sweep(tmp_path)
    assert collect.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "18 rows from 3 job(s)" in out and "1 incomplete" in out
    df = pd.read_parquet(tmp_path / "collected.parquet")
    assert sorted(df["p"].unique()) == [0.2, 0.5, 0.8]
    # collected.parquet is not itself a job: collecting again gives the same table
    assert collect.main([str(tmp_path), "-o", str(tmp_path / "again.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "again.parquet")) == 18
    assert len(load_results(tmp_path / "again.parquet")) == 18


def test_collect_cli_end_to_end(tmp_path):
    _sweep(tmp_path)
    out = tmp_path / "out" / "all.parquet"
    r = subprocess.run([sys.executable, "-m", "experiments.collect", str(tmp_path), "-o", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "18 rows from 3 job(s)" in r.stdout and out.is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "experiments.collect", str(empty)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no complete results" in r.stderr
