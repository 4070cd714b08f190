"""One source of jobs: the Hydra presets, expanded without Hydra (experiments.presets)
exactly as Hydra's basic sweeper expands them, and run batched (experiments.sweep)
into the same config hashes, tables and completion markers as the Hydra app."""
import json

import numpy as np
import pandas as pd
import pytest

import experiments.run  # noqa: F401  (registers the structured configs and resolvers)
from experiments.presets import expand, preset_names
from experiments.results import COMPLETE_MARKER, complete_jobs, config_hash, load_results

PRESETS = preset_names()


def hydra_jobs(overrides, compose=None):
    """(job config, job overrides) of ``python -m experiments.run -m *overrides``, by
    Hydra's own code: the master config, its basic sweeper's split of params and
    command line, and each job composed by ``load_sweep_config`` (no launcher).
    ``compose(n)``: the indices of the jobs to compose (config None for the others;
    Hydra composes about 10 jobs a second on a 2-core machine)."""
    from hydra import initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
        params = master.hydra.sweeper.params
        params = {} if params is None else OmegaConf.to_container(params, resolve=True)
        task = OmegaConf.to_container(master.hydra.overrides.task, resolve=False)
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            [f"{k}={v}" for k, v in params.items()] + list(task))
        out = []
        batch, = BasicSweeper.split_arguments(parsed, None)
        chosen = set(range(len(batch)) if compose is None else compose(len(batch)))
        for k, job in enumerate(batch):
            if k not in chosen:
                out.append((None, list(job)))
                continue
            if True:
                cfg = loader.load_sweep_config(master, list(job))
                job_overrides = list(cfg.hydra.overrides.task)
                with open_dict(cfg):
                    del cfg["hydra"]
                out.append((experiments.run.job_config(cfg), job_overrides))
    return out


def _spread(n, most=8):
    """At most ``most`` indices of 0..n-1, first and last included, evenly spread."""
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)}) if n > most else range(n)


def _same_jobs(overrides, compose=_spread):
    """Both expansions give the same jobs in the same order with the same override
    lists (all jobs), and the same configurations and hashes (the composed ones)."""
    mine, theirs = expand(overrides), hydra_jobs(overrides, compose)
    assert [o for _, o in mine] == [o for _, o in theirs]
    pairs = [(a, b) for (a, _), (b, _) in zip(mine, theirs) if b is not None]
    assert len(pairs) == min(len(mine), 8) if compose is _spread else len(pairs) == len(mine)
    assert [a for a, _ in pairs] == [b for _, b in pairs]  # same configurations (types included)
    assert [config_hash(a) for a, _ in pairs] == [config_hash(b) for _, b in pairs]
    return mine


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_expands_as_hydra_does_at_size_ci(preset):
    assert len(_same_jobs([f"experiment={preset}"])) >= 1


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith("linreg")])
def test_linreg_presets_expand_as_hydra_does_at_size_paper(preset):
    _same_jobs([f"experiment={preset}", "size=paper"])


@pytest.mark.slow
def test_every_job_of_every_preset_composes_as_in_hydra_at_size_ci():
    """Every job composed by Hydra, not a sample (about 220 compositions; size=paper
    is covered by the sampled test above and the pinned paper digests)."""
    hashes = {}
    for preset in PRESETS:
        jobs = _same_jobs([f"experiment={preset}", "size=ci"], compose=None)
        hashes[preset] = {config_hash(c) for c, _ in jobs}
    # the count: the linreg GD figure is 48 + 2 jobs at ci through either path
    assert len(hashes["linreg_gd"]) == 48 and len(hashes["linreg_gd_fpft"]) == 2


@pytest.mark.parametrize("overrides", [
    # command-line sweeps replace the preset's (in its place) or add to them; groups; no preset
    ["experiment=linreg_finite_sum", "estimator=page", "stepsize.factor=1", "method.p=0.1,0.5,0.9"],
    ["experiment=counterexample", "method=lora,cola,asymm_lora", "stepsize.factor=1.0"],
    ["method.p=0.2,0.8", "method.rank=1,2", "steps=30", "seeds=4", "eval_every=5", "progress=false"],
    ["experiment=nonisotropic_p", "problem.mu=2.0", "seeds=3"],
    ["size=paper", "experiment=linreg_gd_authors", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    ["experiment=linreg_gd_fpft", "problem.variant=authors", "device=cpu", "results_root=/tmp/x"],
    ["problem=logistic", "problem.n_clients=4", "estimator=qgd", "compressor=randk", "compressor.k=2,3"],
    ["stepsize.factor=1e-1,0.50,2", "method.p=0", "sketch=orthonormal,'column'", "progress=False"],
])
def test_command_lines_expand_as_hydra_does(overrides):
    _same_jobs(overrides)


@pytest.mark.parametrize("override,field", [
    ("+method.foo=1", "+method.foo"),
    ("~method.p", "~method.p"),
    ("method.p=range(0,1,0.5)", "method.p"),
    ("method.p=[0.1,0.2]", "method.p"),
    ("experiment=linreg_gd,pl_sgd", "experiment"),
    ("experiment=no_such_preset", "experiment"),
    ("steps=${seeds}", "steps"),
])
def test_what_the_expander_does_not_read_is_refused_with_one_line(override, field):
    with pytest.raises(ValueError) as err:
        expand([override])
    line = str(err.value)
    assert "\n" not in line and line.startswith(field), line


#: sha256 of the sorted config hashes the batched path gave the paper's two linreg figures
#: before the presets became its source (experiments/sweeps.py at commit dbbb5ac; the
#: settings of paper_repro.md A1/A2's H200 runs): the presets give exactly those jobs
PAPER_FIGURES = {("linreg_gd", "linreg_gd_fpft"): (98, "dea72a9e7aa4e540"),
                 ("linreg_finite_sum", "linreg_finite_sum_page"): (8, "1ca4082e2cd45a84")}


@pytest.mark.parametrize("presets", list(PAPER_FIGURES))
def test_paper_presets_give_the_jobs_of_the_published_gpu_sweeps(presets):
    import hashlib

    hashes = sorted(config_hash(c) for p in presets for c, _ in expand([f"experiment={p}", "size=paper"]))
    n, digest = PAPER_FIGURES[presets]
    assert (len(hashes), hashlib.sha256(" ".join(hashes).encode()).hexdigest()[:16]) == (n, digest)


@pytest.mark.parametrize("size", ["ci", "paper"])
def test_page_runs_as_many_epochs_as_sgd(size):
    """linreg_finite_sum_page's steps: SGD's epochs (b/N a step) at PAGE's expected
    cost of q + (1-q) 2b/N epochs a step, q the estimator's own b/(b+N)."""
    from experiments.problems.linreg_build import SIZES
    from solvers.estimators import PAGE

    sgd, = {(c["steps"], c["estimator"]["batch"]) for c, _ in expand(["experiment=linreg_finite_sum", f"size={size}"])}
    page, = {c["steps"] for c, _ in expand(["experiment=linreg_finite_sum_page", f"size={size}"])}
    n, (steps, b) = SIZES[size]["ft_n_samples"], sgd
    q = PAGE(batch=b).prob(n)
    assert page == int(steps * b / n / (q + (1 - q) * 2 * b / n))


def _markers(root):
    return {json.loads((d / COMPLETE_MARKER).read_text())["config_hash"]:
            json.loads((d / COMPLETE_MARKER).read_text()).get("overrides") for d in complete_jobs(root)}


def test_batched_and_hydra_paths_write_the_same_tables_and_find_each_others_jobs(tmp_path):
    """pl_sgd at size ci (3 jobs, one engine call when batched): the tables of the
    jobs run one by one by the Hydra app's job function and of the batched sweep are
    equal bit for bit (CPU), every marker holds the job's overrides, and each path
    skips the jobs the other completed."""
    from experiments.job import run_job
    from experiments.sweep import run_sweep

    cmd = ["experiment=pl_sgd", "device=cpu", "progress=false"]
    hydra = hydra_jobs(cmd)
    for k, (cfg, ov) in enumerate(hydra):
        run_job(cfg, tmp_path / "hydra" / str(k), results_root=tmp_path / "hydra", overrides=ov)
    batched = expand(cmd)
    lines = []
    run_sweep([c for c, _ in batched], str(tmp_path / "batched"), log=lines.append, overrides=[o for _, o in batched])
    assert "3 jobs, 120 runs" in lines[1]  # one engine call
    key = ["config_hash", "seed", "iteration"]
    a = load_results(tmp_path / "hydra").drop(columns="time_s").sort_values(key).reset_index(drop=True)
    b = load_results(tmp_path / "batched").drop(columns="time_s").sort_values(key).reset_index(drop=True)
    assert len(a) == 3 * 40 * 5 and set(a["config_hash"]) == {config_hash(c) for c, _ in hydra}
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    marks = _markers(tmp_path / "hydra")
    assert marks == _markers(tmp_path / "batched") == {config_hash(c): o for c, o in hydra}
    # each path finds the other's completed jobs
    lines = []
    run_sweep([c for c, _ in batched], str(tmp_path / "hydra"), log=lines.append)
    assert lines == [f"3 jobs, 3 already complete under {tmp_path / 'hydra'}"]
    out = run_job(hydra[0][0], tmp_path / "batched" / "again", results_root=tmp_path / "batched")
    assert out.status == "skipped" and not (tmp_path / "batched" / "again").exists()


def test_sweep_command_line_runs_presets_with_overrides_and_lists_jobs(tmp_path, capsys):
    from experiments.sweep import main

    out = tmp_path / "out"
    assert main(["linreg_gd_fpft", "pl_sgd", "steps=4", "seeds=2", "device=cpu", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    expected = [o for p in ("linreg_gd_fpft", "pl_sgd") for _, o in expand([f"experiment={p}", "steps=4", "seeds=2",
                                                                          "device=cpu"])]
    assert [line.split(" ", 1)[1].split() for line in listed] == expected and len(expected) == 5
    assert main(["pl_sgd", "steps=4", "seeds=2", "device=cpu", "progress=false", "--out", str(out)]) == 0
    capsys.readouterr()
    ran = expand(["experiment=pl_sgd", "steps=4", "seeds=2", "device=cpu", "progress=false"])
    assert _markers(out) == {config_hash(c): o for c, o in ran} and len(ran) == 3
    assert main(["pl_sgd", "experiment=pl_sgd", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: experiment: ")
    assert main(["pl_sgd", "seeds=0", "--out", str(tmp_path / "refused")]) == 2
    assert capsys.readouterr().err == "error: seeds: must be an integer >= 1, got 0\n"
    assert not (tmp_path / "refused").exists()


def _clear_build_caches():
    import experiments.build as build

    for name in ("_PROBLEM_CACHE", "_DEVICE_CACHE"):
        getattr(build, name).clear()


@pytest.mark.parametrize("preset", PRESETS)
def test_a_jobs_numbers_do_not_depend_on_the_thread_count(preset):
    """A Ray worker runs with one thread, a local job with all cores: the same job must
    give the same bits (MKL's LAPACK did not: f_gap differed in the last bits)."""
    import torch

    from experiments.job import execute

    cfg, _ = expand([f"experiment={preset}", "device=cpu", "seeds=2", "steps=10", "eval_every=5"])[0]
    tables = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # restored by the conftest fixture
        _clear_build_caches()
        tables.append(execute(cfg)[0])
    _clear_build_caches()
    for col in tables[0].columns:
        if col != "time_s" and pd.api.types.is_float_dtype(tables[0][col]):
            assert np.array_equal(tables[0][col].to_numpy(), tables[1][col].to_numpy(), equal_nan=True), col


def test_gpu_sweeps_script_runs_each_figure_from_its_presets(tmp_path):
    """scripts/gpu_sweeps.sh hands each figure's presets and SET overrides to
    experiments.sweep (stub interpreter: nothing runs)."""
    import os
    import stat
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\necho "$*" >> "$STUB_LOG"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.txt"
    env = dict(os.environ, PY=str(stub), OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), STUB_LOG=str(log),
               BENCH="0", PREP="0", SIZE="ci", DEVICE="cpu", SET="problem.variant=authors", TAG="_a",
               SWEEPS="linreg_gd linreg_finite_sum pl_sgd")
    r = subprocess.run(["bash", str(root / "scripts" / "gpu_sweeps.sh")], cwd=root, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    sweeps = [line for line in log.read_text().splitlines() if line.startswith("-m experiments.sweep ")]
    work = tmp_path / "work"
    assert sweeps == [
        f"-m experiments.sweep linreg_gd linreg_gd_fpft size=ci device=cpu problem.variant=authors --out {work}/linreg_gd_a",
        f"-m experiments.sweep linreg_finite_sum linreg_finite_sum_page size=ci device=cpu problem.variant=authors "
        f"--out {work}/linreg_finite_sum_a",
        f"-m experiments.sweep pl_sgd size=ci device=cpu problem.variant=authors --out {work}/pl_sgd_a"]
