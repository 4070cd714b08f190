"""Nothing lost, and right the first time (issue 10): a job deletes only what it
made, refuses a bad results_root before any work, is claimed before it runs,
survives unreadable results, stops on a full or read-only disk, says where a
skipped result is, and reports progress and a summary in logs."""
import errno
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from experiments import claims, collect, results, storage
from resultstore import files as store_files
from experiments.conf.schema import job_config
from experiments.progress import make_progress
from experiments.results import RESULTS_FILE, config_hash, write_job
from tests.test_app import ENV, _app
from tests.test_results import CFG, table

TINY = ["steps=5", "seeds=2", "eval_every=5", "progress=false"]


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def _one_error_line(stderr, needle):
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr[-2000:]


# ----------------------------------------------------------------------------- 1. delete only what was made

def test_refused_job_in_an_existing_folder_keeps_every_file_of_it(tmp_path):
    user = tmp_path / "checkout"
    (user / ".git").mkdir(parents=True)
    (user / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (user / "notes.txt").write_text("mine")
    (user / "run.log").write_text("my own log\n")  # same name as Hydra's log: still the user's
    before = _files(user)
    r = _app("method.p=1.5", "hydra.run.dir=.", *TINY, f"results_root={tmp_path / 'r'}", cwd=user)
    assert r.returncode == 2
    _one_error_line(r.stderr, "method.p")
    assert _files(user) == before
    assert (user / "run.log").read_text().startswith("my own log\n")
    assert not (tmp_path / "r").exists()  # refused before any work


def test_refused_job_removes_the_folders_made_for_it(tmp_path):
    (tmp_path / "keep").mkdir()
    r = _app("method.rank=0", f"hydra.run.dir={tmp_path / 'new' / 'deep'}", *TINY,
             f"results_root={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 2 and "rank" in r.stderr
    assert _files(tmp_path) == ["keep"]


def test_failed_job_removes_its_partial_results_and_nothing_else(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    crash = ("import runpy, sys\nfrom resultstore import files\n"
             "def boom(data):\n    raise RuntimeError('crash after results.parquet')\n"
             "files.dump_yaml = boom\nsys.argv = ['experiments.run'] + sys.argv[1:]\n"
             "runpy.run_module('experiments.run', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", crash, f"hydra.run.dir={user}", *TINY,
                        f"results_root={tmp_path / 'r'}"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "crash after results.parquet" in r.stderr
    assert sorted(os.listdir(user)) == ["notes.txt", "run.log"]  # partial results gone, the log of the crash kept


def test_a_folder_holding_another_jobs_results_is_not_overwritten(tmp_path):
    job = tmp_path / "old_job"
    write_job(job, table(), CFG)
    before = {p: (job / p).read_bytes() for p in os.listdir(job)}
    r = _app(f"hydra.run.dir={job}", *TINY, f"results_root={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 2
    _one_error_line(r.stderr, "hydra.run.dir")
    assert {p: (job / p).read_bytes() for p in os.listdir(job)} == before


# ----------------------------------------------------------------------------- 2. results_root

def test_empty_results_root_is_refused_and_nothing_lands_at_the_root(tmp_path):
    existed = Path("/runs").exists()
    r = _app("results_root=", *TINY, cwd=tmp_path)
    assert r.returncode == 2
    _one_error_line(r.stderr, "results_root")
    if not existed:
        assert not Path("/runs").exists()
    assert _files(tmp_path) == []


def test_results_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = _app("-m", "method.p=0.2,0.4", "results_root=afile", *TINY, cwd=tmp_path)
    assert r.returncode == 2
    _one_error_line(r.stderr, "results_root: afile exists and is not a folder")
    assert _files(tmp_path) == ["afile"]


def test_check_results_root_unit(tmp_path):
    for bad in (None, "", "  "):
        with pytest.raises(ValueError, match="^results_root: "):
            storage.check_results_root(bad)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        storage.check_results_root(tmp_path / "f" / "below")
    assert storage.check_results_root(tmp_path / "new") == tmp_path / "new"


# ----------------------------------------------------------------------------- 3. claims and duplicates

def test_claim_is_exclusive_released_and_taken_over_when_stale(tmp_path):
    h = "ab" * 32
    first = claims.try_claim(tmp_path, h, out_dir=tmp_path / "job")
    assert first is not None
    assert claims.try_claim(tmp_path, h, out_dir=tmp_path / "other") is None  # held
    assert claims.holder(tmp_path, h)["pid"] == os.getpid()
    first.release()
    with claims.try_claim(tmp_path, h, out_dir=tmp_path / "job") as again:
        assert again is not None
    # a claim whose holder was killed: its file is left, its lock is gone
    code = ("import sys, os, signal; from experiments import claims; "
            f"c = claims.try_claim({str(tmp_path)!r}, {h!r}, out_dir='x'); print('held', flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert "held" in r.stdout and r.returncode == -9
    assert (tmp_path / claims.CLAIMS_DIR / f"{h}.lock").exists()
    taken = claims.try_claim(tmp_path, h, out_dir=tmp_path / "job")
    assert taken is not None and claims.holder(tmp_path, h)["pid"] == os.getpid()
    taken.release()


def test_a_job_claimed_by_a_live_process_is_not_run_again(tmp_path):
    root = tmp_path / "r"
    h = config_hash(job_config(steps=5, seeds=2, eval_every=5))
    held = claims.try_claim(root, h, out_dir="/elsewhere/job")
    try:
        r = _app(*TINY, f"results_root={root}", cwd=tmp_path)
    finally:
        held.release()
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"being run by pid {os.getpid()}" in r.stdout + r.stderr
    assert results.complete_jobs(root) == [] and not (root / "runs").exists()
    r = _app(*TINY, f"results_root={root}", cwd=tmp_path)  # released: now it runs
    assert r.returncode == 0 and len(results.complete_jobs(root)) == 1


@pytest.mark.slow  # two concurrent Hydra multiruns (about a minute): scripts/test.sh -m slow
def test_two_sweeps_into_one_root_run_every_job_once(tmp_path):
    args = ["-m", "method.p=0.1,0.4,0.7", "steps=200", "seeds=2", "eval_every=100", "progress=false",
            f"results_root={tmp_path}"]
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    per_hash = pd.Series([results.read_marker(d)["config_hash"] for d in results.complete_jobs(tmp_path)])
    assert len(per_hash) == 3 and per_hash.is_unique, outs
    assert sum(o.count("skipped: config") for o in outs) == 3


def test_collect_keeps_one_copy_of_duplicated_rows_and_says_so(tmp_path, capsys):
    write_job(tmp_path / "sweep_a" / "0", table(), CFG)
    write_job(tmp_path / "sweep_b" / "0", table(), CFG)
    assert collect.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "collected 6 rows" in out and "6 duplicate row(s) dropped" in out
    df = pd.read_parquet(tmp_path / "collected.parquet")
    assert not df.duplicated(list(results.ROW_KEY)).any()


def test_sweep_outside_results_root_still_finds_its_completed_jobs(tmp_path):
    root = tmp_path / "r"
    args = ["-m", "method.p=0.2", *TINY, f"results_root={root}"]
    r = _app(*args, f"hydra.sweep.dir={tmp_path / 'elsewhere' / 'one'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _app(*args, f"hydra.sweep.dir={tmp_path / 'elsewhere' / 'two'}", cwd=tmp_path)
    assert r.returncode == 0 and "skipped: config" in r.stdout + r.stderr
    assert str(tmp_path / "elsewhere" / "one" / "0") in r.stdout + r.stderr
    assert len(results.complete_jobs(tmp_path)) == 1
    assert not (tmp_path / "elsewhere" / "two").exists()  # made for the rerun, nothing in it


# ----------------------------------------------------------------------------- 4. unreadable results

def _two_jobs_one_corrupt(root):
    write_job(root / "good", table(), CFG)
    cfg2 = {**CFG, "seed": 7}
    bad = write_job(root / "bad", table(cfg2), cfg2)
    bad.write_bytes(b"\0" * bad.stat().st_size)  # corrupt, same size: the marker still matches
    return bad


def test_load_results_skips_a_corrupt_file_with_a_warning_naming_it(tmp_path):
    bad = _two_jobs_one_corrupt(tmp_path)
    with pytest.raises(ValueError, match=str(bad)):
        results.load_results(tmp_path)
    with pytest.warns(results.UnreadableResults, match=str(bad)):
        df = results.load_results(tmp_path, on_error="warn")
    assert len(df) == 6 and set(df["config_hash"]) == {config_hash(CFG)}
    seen = []
    assert len(results.load_results(tmp_path, on_error=lambda p, m: seen.append(p))) == 6 and seen == [bad]


def test_collect_cli_skips_a_corrupt_file(tmp_path):
    bad = _two_jobs_one_corrupt(tmp_path)
    r = subprocess.run([sys.executable, "-m", "experiments.collect", str(tmp_path)], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and str(bad) in r.stderr and "collected 6 rows" in r.stdout


# ----------------------------------------------------------------------------- 5. disk full, temp files

_FAULT = """
import errno, os, runpy, sys
from resultstore import files
def full(df, tmp):
    raise OSError(errno.{code}, os.strerror(errno.{code}), tmp)
files._write_parquet = full
sys.argv = ["experiments.run"] + sys.argv[1:]
runpy.run_module("experiments.run", run_name="__main__")
"""


def test_storage_errors_are_the_ones_no_later_job_could_avoid():
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        assert storage.is_storage_error(OSError(code, os.strerror(code)))
    assert not storage.is_storage_error(OSError(errno.ENOENT, "gone"))
    assert not storage.is_storage_error(ValueError("x"))


def test_full_disk_stops_the_multirun_with_one_line(tmp_path):
    code = "ENOSPC"
    r = subprocess.run([sys.executable, "-c", _FAULT.format(code=code), "-m", "method.p=0.2,0.4,0.6", *TINY,
                        f"results_root={tmp_path}"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    _one_error_line(r.stderr, "results_root: cannot write")
    assert os.strerror(errno.ENOSPC) in r.stderr
    assert "#0 : method.p=0.2" in r.stdout and "#1 : " not in r.stdout  # job 1 never started
    assert results.complete_jobs(tmp_path) == [] and results.incomplete_jobs(tmp_path) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux /sys (a folder nobody may create in)")
def test_results_root_that_cannot_be_created_is_refused_in_one_line(tmp_path):
    r = _app("-m", "method.p=0.2,0.4", "results_root=/sys/blora_results", *TINY, cwd=tmp_path)
    assert r.returncode == 2
    _one_error_line(r.stderr, "results_root: cannot create /sys/blora_results")


def test_leftover_temp_files_are_removed_only_when_the_suites_and_stale(tmp_path):
    job = tmp_path / "r" / "old"
    job.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def temp(target, host, pid, age_s=0.0):
        p = job / f".{target}.~{host}~{pid}~0a1b2c3d.tmp"
        p.write_text("partial")
        os.utime(p, (time.time() - age_s, time.time() - age_s))
        return p

    gone = [temp(RESULTS_FILE, storage.HOST, dead.pid),                   # writer on this host exited
            temp("config.yaml", "otherhost", 123, age_s=2 * 3600)]       # other host, old
    kept = [temp(RESULTS_FILE, storage.HOST, os.getpid()),                # live writer (this test)
            temp(RESULTS_FILE, "otherhost", 123),                         # other host, recent
            job / ".notes.tmp", job / "results.parquet.tmp"]             # not the suite's pattern
    for p in kept[2:]:
        p.write_text("user's")
    r = _app("method.p=0.3", *TINY, f"results_root={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)


def test_atomic_write_temp_names_match_the_cleanup_pattern(tmp_path, monkeypatch):
    names = []

    def spy(df, tmp):
        names.append(Path(tmp).name)
        df.to_parquet(tmp, index=False)

    monkeypatch.setattr(store_files, "_write_parquet", spy)
    write_job(tmp_path, table(), CFG)
    m = storage.TEMP_RE.match(names[0])
    assert m and m["target"] == RESULTS_FILE and int(m["pid"]) == os.getpid() and m["host"] == storage.HOST


# ----------------------------------------------------------------------------- 6. skip message, 7. progress

def test_rerun_says_where_the_result_is_and_leaves_no_empty_folder(tmp_path):
    r = _app(*TINY, f"results_root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    h = config_hash(job_config(steps=5, seeds=2, eval_every=5))
    assert f"job {h[:12]} bernoulli_lora/gd p=0.5 rank=2: 2 seeds x 5 steps in " in out
    assert "final median f_gap" in out and "verdict: " in out
    (done,) = results.complete_jobs(tmp_path)
    runs = sorted((tmp_path / "runs").iterdir())
    r = _app(*TINY, f"results_root={tmp_path}", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and f"already complete in {done}" in out and "delete that folder" in out
    assert sorted((tmp_path / "runs").iterdir()) == runs


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_progress_logs_every_tenth_or_every_few_seconds_without_a_terminal(caplog):
    now = [0.0]
    show = make_progress(True, label="job", stream=_Stream(False), clock=lambda: now[0])
    with caplog.at_level("INFO", logger="experiments.run"):
        for t in range(0, 101):
            show(t, 100)
    pcts = [int(r.getMessage().split("(")[1].rstrip("%)")) for r in caplog.records]
    assert pcts == list(range(10, 101, 10))
    caplog.clear()
    show = make_progress(True, label="job", stream=_Stream(False), clock=lambda: now[0])
    with caplog.at_level("INFO", logger="experiments.run"):
        for t in range(0, 4):
            now[0] += 6.0  # slow job: a line every 5 s although under 10 % apart
            show(t, 1000)
    assert len(caplog.records) == 3
    tty = _Stream(True)
    with caplog.at_level("INFO", logger="experiments.run"):
        caplog.clear()
        show = make_progress(True, label="job", stream=tty)
        for t in range(0, 11):
            show(t, 10)
    assert caplog.records == [] and "100% (10/10)" in tty.getvalue()
    assert make_progress(False, label="job") is None


def test_multirun_refusal_keeps_finished_jobs_and_leaves_no_empty_folders(tmp_path):
    r = _app("-m", "method.p=0.5,1.5", *TINY, f"results_root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 2
    _one_error_line(r.stderr, "method.p")
    (sweep,) = (tmp_path / "sweeps").iterdir()
    assert sorted(os.listdir(sweep)) == ["0", "multirun.yaml"]  # job 0 kept, job 1's folder gone
    assert len(results.complete_jobs(tmp_path)) == 1
    other = tmp_path / "other"
    r = _app("-m", "method.p=1.5,2.0", *TINY, f"results_root={other}", cwd=tmp_path)
    assert r.returncode == 2 and not other.exists()
