"""The shell scripts' control flow, with a stub interpreter (no experiment is run):
reproduce.sh reports each experiment, still makes the summary and figures after a
violated bound, and then exits with verify's status."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
# records its arguments; fails the module named in $STUB_FAIL with status $STUB_STATUS
echo "$*" >> "$STUB_LOG"
if [ "$2" = "$STUB_FAIL" ]; then echo "stub: $2 fails"; exit "$STUB_STATUS"; fi
exit 0
"""


def _reproduce(tmp_path, fail_module, status):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.txt"
    env = dict(os.environ, PY=str(stub), OUT=str(tmp_path / "out"), STUB_LOG=str(log),
               STUB_FAIL=fail_module, STUB_STATUS=str(status))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    calls = [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []
    return r, calls


def test_reproduce_exits_with_verify_status_after_making_the_figures(tmp_path):
    r, calls = _reproduce(tmp_path, "experiments.verify", 1)
    assert r.returncode == 1, r.stdout + r.stderr
    # every later stage still ran beside the failed verify (side by side: in any order
    # but the summaries' own), and the script waited for them all
    after = calls[calls.index("experiments.multirun") + 1:]
    assert sorted(after) == sorted(["experiments.collect", "experiments.verify", "experiments.summarize", "curves",
                                    "rates", "figures.make"])
    assert after.index("experiments.collect") < min(after.index(c) for c in ("experiments.summarize", "figures.make"))
    assert [c for c in after if c in ("experiments.summarize", "curves", "rates")] == \
        ["experiments.summarize", "curves", "rates"]
    assert "verify exited with status 1" in r.stdout
    timing = (tmp_path / "out" / "timing.txt").read_text()
    assert all(f"{stage} done" in timing for stage in ("figures", "verify", "summary table, median curves, rates"))
    assert "verify exited with status 1" in (tmp_path / "out" / "timing.txt").read_text()


def test_reproduce_runs_every_experiment_in_one_process(tmp_path):
    """The experiments are queued (one line of tab-separated overrides each) and run by ONE
    ``experiments.multirun`` process, which prints a line per experiment with its time
    (tests/test_multirun.py); no ``experiments.run`` process per experiment."""
    r, calls = _reproduce(tmp_path, "none", 0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls.count("experiments.multirun") == 1 and "experiments.run" not in calls
    assert calls.index("experiments.multirun") < calls.index("experiments.collect")
    queue = (tmp_path / "out" / "queue.txt").read_text().splitlines()
    assert len(queue) >= 10
    assert all(line.split("\t")[0].split("=")[0] in ("experiment", "problem") for line in queue)
    assert "\tmethod.p=0,0.5,1\t" in "\n".join(queue)  # one override per field
    assert (tmp_path / "out" / "timing.txt").read_text().splitlines()[-1].startswith("[")


@pytest.mark.parametrize("module", ["experiments.multirun", "experiments.collect"])
def test_reproduce_stops_at_once_on_any_other_failure(tmp_path, module):
    r, calls = _reproduce(tmp_path, module, 3)
    assert r.returncode != 0
    # nothing after it ran (verify starts beside collect, so it may be logged after it)
    assert module in calls and not {"experiments.summarize", "curves", "rates", "figures.make"} & set(calls)
    assert calls[-1] in (module, "experiments.verify")


@pytest.mark.parametrize("module", ["experiments.summarize", "figures.make"])
def test_reproduce_fails_when_a_stage_beside_verify_fails(tmp_path, module):
    """The summaries and the figures run beside verify: a failure of either still fails the
    script (its status, not verify's 0), and no total line is written."""
    r, calls = _reproduce(tmp_path, module, 3)
    assert r.returncode == 3, r.stdout + r.stderr
    assert module in calls
    assert "total" not in (tmp_path / "out" / "timing.txt").read_text()


def test_cpu_linreg_authors_never_clears_a_named_work_folder(tmp_path):
    """A WORK folder the user names is never emptied: a non-empty one is refused, its files kept."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "cpu_linreg_authors.sh"), str(tmp_path / "dest")],
                       cwd=ROOT, env=dict(os.environ, WORK=str(work), PY="false"), capture_output=True, text=True)
    assert r.returncode == 2 and "WORK:" in r.stderr
    assert (work / "precious.txt").read_text() == "keep me"
