"""End-to-end through the Hydra app: multirun -> results -> verdicts -> figures,
kill-and-resume, collision-free sweep folders, bad overrides."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))


def _app(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _tool(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300)


SMALL = ["steps=30", "seeds=4", "eval_every=5", "progress=false"]


@pytest.mark.slow
def test_multirun_results_verdicts_and_figures(tmp_path):
    r = _app("-m", "method.p=0.2,0.8", "method.rank=1,2", *SMALL, f"results_root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    from experiments.results import complete_jobs, load_results

    assert len(complete_jobs(tmp_path)) == 4
    table = load_results(tmp_path)
    assert len(table) == 4 * 4 * 7  # jobs x seeds x evaluation points
    assert (table["bound_status"] == "ok").all() and table["bound"].notna().all()
    v = _tool("experiments.verify", str(tmp_path), cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    assert v.stdout.count("holds") >= 4
    c = _tool("experiments.collect", str(tmp_path), cwd=tmp_path)
    assert c.returncode == 0 and (tmp_path / "collected.parquet").exists()
    f = _tool("figures.make", str(tmp_path), "--out", str(tmp_path / "fig"), cwd=tmp_path)
    assert f.returncode == 0, f.stderr
    written = {p.name for p in (tmp_path / "fig").iterdir()}
    for stem in ("convergence", "rate_vs_p", "rate_vs_rank", "tightness"):
        assert any(n.startswith(stem) and n.endswith(".pdf") for n in written), (stem, written)
        assert any(n.startswith(stem) and n.endswith(".png") for n in written), (stem, written)


@pytest.mark.slow
def test_killed_multirun_resumes_without_lost_or_duplicated_rows(tmp_path):
    args = ["-m", "method.p=0.1,0.3,0.5,0.7,0.9,1.0", "steps=400", "seeds=3", "eval_every=100", "progress=false",
            f"results_root={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from experiments.results import complete_jobs, load_results

    deadline = time.time() + 240
    while time.time() < deadline and len(complete_jobs(tmp_path)) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a real kill, mid-sweep
    proc.wait()
    done_before = len(complete_jobs(tmp_path))
    assert 2 <= done_before < 6, "the kill should land mid-sweep"
    r = _app(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (r.stderr + r.stdout).count("skipped: config") == done_before
    table = load_results(tmp_path)
    per_job = table.groupby("config_hash").size()
    assert len(per_job) == 6  # no lost job
    assert (per_job == 3 * 5).all()  # no duplicated rows (3 seeds x 5 points each)
    assert not table.duplicated(["config_hash", "seed", "iteration"]).any()


@pytest.mark.slow
def test_sweeps_started_together_never_share_a_folder(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.run", "-m", "method.p=0.5", "steps=5", "seeds=1",
                               "progress=false", f"results_root={tmp_path}", f"seed={k}"], cwd=tmp_path, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    sweeps = sorted((tmp_path / "sweeps").iterdir())
    assert len(sweeps) == 2 and sweeps[0].name != sweeps[1].name


@pytest.mark.parametrize("override,needle", [
    ("method.p=1.5", "method.p"),
    ("problem=nonexistent", "problem"),
    ("method.rank=0", "rank"),
    ("stepsize.factor=-1", "stepsize.factor"),
    ("steps=abc", "steps"),
    ("sketch=nope", "sketch"),
    ("+method.foo=1", "error: method.foo: unknown key"),
])
def test_wrong_override_fails_clearly_and_writes_nothing(tmp_path, override, needle):
    r = _app(override, "steps=3", "seeds=1", f"results_root={tmp_path}", cwd=tmp_path)
    assert r.returncode != 0
    assert needle in r.stderr
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_submitit_launcher_in_local_mode(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = _app("-m", "hydra/launcher=submitit_local", "method.p=0.3,0.7", *SMALL, f"results_root={tmp_path}", cwd=tmp_path,
             timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from experiments.results import complete_jobs

    assert len(complete_jobs(tmp_path)) == 2


@pytest.mark.slow
def test_joblib_launcher_and_experiment_preset(tmp_path):
    r = _app("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=sketch_comparison", "steps=10",
             "seeds=2", "eval_every=5", "progress=false", f"results_root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from experiments.results import load_results

    table = load_results(tmp_path)
    assert set(table["sketch"]) == {"gaussian", "orthonormal", "rademacher", "column"}
    assert set(table["p"]) == {0.3, 0.7}
