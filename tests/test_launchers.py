"""Launchers: the Hydra app's jobs record their overrides and are found complete by
the batched sweep; the Ray launcher (a local Ray cluster, one thread per worker)
gives the same bits as the basic launcher (all threads)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
# rate_vs_p: a quadratic whose construction and exact expectations go through LAPACK
CMD = ["experiment=rate_vs_p", "method.p=0.0,0.5", "steps=10", "seeds=2", "eval_every=5", "progress=false",
       "device=cpu"]


def _app(*args, cwd, env=ENV):
    r = subprocess.run([sys.executable, "-m", "experiments.run", "-m", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _table(root):
    from experiments.results import load_results

    key = ["config_hash", "seed", "iteration"]
    return load_results(root).drop(columns="time_s").sort_values(key).reset_index(drop=True)


@pytest.mark.slow
def test_app_records_each_jobs_overrides_and_the_batched_sweep_finds_its_jobs(tmp_path):
    from experiments.presets import expand
    from experiments.results import COMPLETE_MARKER, complete_jobs, config_hash
    from experiments.sweep import main

    root = tmp_path / "root"
    _app(*CMD, f"results_root={root}", cwd=tmp_path)
    marks = [json.loads((d / COMPLETE_MARKER).read_text()) for d in complete_jobs(root)]
    jobs = expand([*CMD, f"results_root={root}"])
    assert {m["config_hash"]: m["overrides"] for m in marks} == {config_hash(c): o for c, o in jobs}
    assert main(["rate_vs_p", *CMD[1:], "--out", str(root)]) == 0  # nothing left to run
    assert len(complete_jobs(root)) == 2


@pytest.mark.slow
def test_ray_launcher_gives_the_bits_of_the_basic_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    _app(*CMD, f"results_root={tmp_path / 'basic'}", cwd=tmp_path, env=dict(ENV, OMP_NUM_THREADS="2"))
    _app("hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", *CMD, f"results_root={tmp_path / 'ray'}",
         cwd=tmp_path)
    basic, ray = _table(tmp_path / "basic"), _table(tmp_path / "ray")
    assert len(basic) == 2 * 2 * 3
    pd.testing.assert_frame_equal(basic, ray, check_exact=True)
