"""experiments.multirun: the queued Hydra multiruns of scripts/reproduce.sh in one process
make the jobs (config hashes, rows) that the app makes, each multirun's output in its own
log, a line per multirun; a failing multirun stops the queue with exit status 1."""
from hydra import compose, initialize_config_module

from experiments import multirun
from experiments.results import complete_jobs, config_hash, load_results
from experiments.run import job_config

TINY = ["steps=3", "seeds=2", "eval_every=1", "progress=false"]


def _common(root):
    return [f"results_root={root}", f"hydra.sweep.dir={root}/sweeps/" + "${now:%H-%M-%S}_${blora_unique:}"]


def _hashes(overrides, root):
    with initialize_config_module("experiments.conf", version_base="1.3"):
        return {config_hash(job_config(compose("config", overrides=o + [f"results_root={root}"])))
                for o in overrides}


def test_queue_runs_every_multirun_in_one_process(tmp_path, capsys):
    root = tmp_path / "res"
    queue = tmp_path / "queue.txt"
    queue.write_text("\t".join(["method.p=0.2,0.8", *TINY]) + "\n\n" + "\t".join(["method.rank=2", *TINY]) + "\n")
    timing = tmp_path / "timing.txt"
    status = multirun.main([str(queue), "--timing", str(timing), "--logs", str(tmp_path / "logs"), "--since", "7",
                            "--", *_common(root)])
    assert status == 0
    assert len(complete_jobs(root)) == 3
    want = _hashes([["method.p=0.2", *TINY], ["method.p=0.8", *TINY], ["method.rank=2", *TINY]], root)
    table = load_results(root)
    assert set(table["config_hash"]) == want and len(table) == 3 * 2 * 4
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").iterdir()}
    assert sorted(logs) == ["01.log", "02.log"]
    assert "Launching 2 jobs" in logs["01.log"] and "method.rank=2" not in logs["01.log"]
    assert "Launching 1 jobs" in logs["02.log"] and "method.p=0.8" not in logs["02.log"]
    lines = timing.read_text().splitlines()
    words = [line.split("] ")[1].split(" ")[2] for line in lines]
    assert words == ["method.p=0.2,0.8", "done", "method.rank=2", "done"]
    assert all(line.startswith("[") for line in lines) and int(lines[0][1:5]) >= 7
    assert lines == capsys.readouterr().out.splitlines()


def test_a_failing_multirun_stops_the_queue(tmp_path, capsys):
    root = tmp_path / "res"
    queue = tmp_path / "queue.txt"
    queue.write_text("method.p=2\t" + "\t".join(TINY) + "\n" + "\t".join(TINY) + "\n")
    status = multirun.main([str(queue), "--timing", str(tmp_path / "t.txt"), "--logs", str(tmp_path / "logs"),
                            "--", *_common(root)])
    assert status == 1
    err = capsys.readouterr().err
    assert "error: method.p" in err  # the failing multirun's log, shown
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["01.log"]  # the second never ran
    assert "experiment 1 failed" in (tmp_path / "t.txt").read_text()
    assert not complete_jobs(root) if root.exists() else True


def test_the_sweep_runner_makes_the_hydra_runners_table(tmp_path):
    """``--runner sweep`` (scripts/reproduce.sh's default) runs the same jobs as the Hydra
    multiruns, with the same config hashes and, every column but time_s, the same numbers
    (the p-sweep is one batched engine call there); and a bad line stops the queue."""
    import pandas as pd

    from scripts.compare_collected import compare

    queue = tmp_path / "queue.txt"
    queue.write_text("\t".join(["method.p=0.2,0.8", *TINY]) + "\n" + "\t".join(["estimator=sgd", "estimator.noise=0.1", "estimator.batch=null",
                                                                              *TINY]) + "\n")
    tables = {}
    for runner in ("hydra", "sweep"):
        root = tmp_path / runner
        status = multirun.main([str(queue), "--timing", str(tmp_path / f"{runner}.txt"), "--logs",
                                str(tmp_path / f"logs_{runner}"), "--runner", runner, "--", *_common(root)])
        assert status == 0
        tables[runner] = load_results(root)
    assert len(tables["sweep"]) == 3 * 2 * 4 and compare(tables["hydra"], tables["sweep"]) == []
    assert isinstance(tables["sweep"], pd.DataFrame)
    queue.write_text("method.p=2\t" + "\t".join(TINY) + "\n")
    status = multirun.main([str(queue), "--timing", str(tmp_path / "t.txt"), "--logs", str(tmp_path / "logs_bad"),
                            "--runner", "sweep", "--", *_common(tmp_path / "bad")])
    assert status == 1
