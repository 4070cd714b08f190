"""Real-model CLI contract: refused values, --help defaults, batch cap, complete/resume, GPU script.

Runs use digits with 1-2 seeds and 1-2 epochs: what is checked (files, markers, which
configurations run again, exact equality of resumed and uninterrupted numbers) does
not depend on the size.
"""
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from experiments import results
from experiments.real_model import cli, data, methods as mt, model as md, store, table, train as tr
from resultstore import files as store_files

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "digits", "--seeds", "2", "--epochs", "1", "--pretrain-epochs", "2", "--device", "cpu"]


def _error(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- refused values
@pytest.mark.parametrize("option,value,low", [
    ("--steps-per-epoch", "0", 1), ("--threads", "0", 1), ("--epochs", "0", 1), ("--seeds", "0", 1),
    ("--switch-every", "0", 1), ("--batch-size", "0", 1), ("--bench-steps", "0", 1),
    ("--pretrain-patience", "0", 1), ("--pretrain-epochs", "-1", 0)])
def test_a_value_below_its_bound_is_refused_naming_the_option(capsys, tmp_path, option, value, low):
    # a tiny, valid rest: on the old code (0 silently read as the default) this run finishes with 0
    line = _error(capsys, [*TINY, "--method", "fpft", "--pretrain-epochs", "0", option, value,
                           "--out", str(tmp_path / "o")])
    assert line == f"error: {option}: must be >= {low}, got {value}"
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("argv,option", [
    (["--data", "mnist", "--mnist-dir", ""], "--mnist-dir"),  # not "$MNIST_DIR instead"
    (["--out", ""], "--out"),
    (["--out", "a_file"], "--out"),  # relative to tmp_path (chdir below)
    (["--p", "0.5,0.5"], "--p"),
    (["--p", "0.5,,1"], "--p"),  # not "0.5,1"
    (["--p", ""], "--p"),
    (["--alpha", "0"], "--alpha"),
    (["--method", "lora", "--p", "0.5"], "--p"),  # p of a method that does not run
    (["--bench", "--p", "0.2,0.5"], "--p"),
    (["--data", "digits", "--mnist-dir", "/somewhere"], "--mnist-dir"),  # forgot --data mnist
    (["--download"], "--download"),
])
def test_empty_duplicate_or_unused_values_are_refused(capsys, tmp_path, monkeypatch, argv, option):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    (tmp_path / "a_file").write_text("x")
    monkeypatch.chdir(tmp_path)
    line = _error(capsys, ["--epochs", "1", *argv] + (["--out", str(tmp_path / "o")] if "--out" not in argv else []))
    assert line.startswith(f"error: {option}: ")


# ----------------------------------------------------------------------------- --help
def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    options_part = text[text.index("options:"):]
    blocks = {}
    for block in re.split(r"\n(?=  -)", options_part):
        name = block.split()[0].rstrip(",")
        blocks[name] = " ".join(block.split())
    parser = cli.build_parser()
    checked = 0
    for action in parser._actions:
        if "--help" in action.option_strings:
            continue
        name = action.option_strings[-1]
        assert name in blocks, f"{name} missing from --help"
        assert "(default: " in blocks[name], f"{name}: no default in --help: {blocks[name]!r}"
        if action.default is not None:
            assert f"(default: {action.default})" in blocks[name], blocks[name]
        checked += 1
    assert checked == len(parser._actions) - 1 >= 30


# ----------------------------------------------------------------------------- batch size
@pytest.fixture(scope="module")
def digits():
    return data.load_bundle("digits", dtype=torch.float64)


def test_batch_size_above_the_training_set_is_full_batch(digits):
    """Same numbers as batch size = n, and the dropout masks stay (block, n, hidden)."""
    seeds = torch.tensor([0, 1])
    base = md.init_mlp(seeds, 64, dtype=torch.float64)
    n = len(digits.finetune.train)
    runs = {}
    for b in (n, 4 * n):
        cfg = tr.TrainConfig(epochs=2, lr=1e-2, batch_size=b)
        runs[b] = tr.finetune(base, digits.finetune, mt.MethodSpec("rac_lora_b"), seeds, cfg)
    for x, y in zip(runs[n]["run"].params.tensors() + runs[n]["run"].adapters.B,
                    runs[4 * n]["run"].params.tensors() + runs[4 * n]["run"].adapters.B):
        assert torch.equal(x, y)
    assert runs[4 * n]["run"].step_count == 2  # one full-batch step per epoch
    assert runs[4 * n]["run"]._masks_cache.shape[2] == n


def test_cli_notes_a_capped_batch_size_once(tmp_path, capsys):
    rc = cli.main([*TINY, "--method", "fpft", "--batch-size", "2000", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    notes = [l for l in out.splitlines() if l.startswith("note:")]
    assert rc == 0 and len(notes) == 1 and "--batch-size 2000" in notes[0] and "full batch" in notes[0], out
    df = pd.read_parquet(tmp_path / "o" / "results.parquet")
    assert (df["batch_size"] == 2000).all()


# ----------------------------------------------------------------------------- complete / resume
ARGV3 = [*TINY, "--method", "fpft,rac_lora_b,lora_a"]


def _numbers(df):
    return df.sort_values(["method", "seed"])[["method", "seed", "test_acc", "val_acc", "config_hash"]] \
        .reset_index(drop=True)


def test_killed_run_leaves_no_table_and_a_rerun_finishes_only_what_is_missing(tmp_path, monkeypatch):
    out = tmp_path / "o"
    real_to_parquet, calls = pd.DataFrame.to_parquet, []

    def dying_to_parquet(self, *a, **k):  # the process dies while writing the second table
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_to_parquet(self, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dying_to_parquet)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*ARGV3, "--out", str(out)])
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real_to_parquet)
    assert not (out / results.RESULTS_FILE).exists(), "a partial table must not sit where the finished one goes"
    assert not store.finished(out)
    assert not list(out.rglob("*.tmp")), "no temporary file left behind"
    assert len([d for d in (out / "jobs").iterdir() if store.finished(d)]) == 1  # fpft finished

    ran = []
    for name in ("finetune", "pretrain"):
        real = getattr(table, name)
        monkeypatch.setattr(table, name, lambda *a, _real=real, _name=name, **k: ran.append(_name) or _real(*a, **k))
    assert cli.main([*ARGV3, "--out", str(out)]) == 0
    assert ran == ["finetune", "finetune"], "only rac_lora_b and lora_a run again, on the saved pretrained models"
    assert store.finished(out)
    resumed = pd.read_parquet(out / results.RESULTS_FILE)
    assert cli.main([*ARGV3, "--out", str(tmp_path / "ref")]) == 0
    assert _numbers(resumed).equals(_numbers(pd.read_parquet(tmp_path / "ref" / results.RESULTS_FILE)))
    # a finished command is not run again
    ran.clear()
    assert cli.main([*ARGV3, "--out", str(out)]) == 0 and ran == []


def test_kill_before_the_final_marker_is_finished_by_a_rerun(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    real_write = store_files.atomic_write

    def no_final_marker(path, write):
        if Path(path) == out / results.COMPLETE_MARKER:
            raise KeyboardInterrupt
        real_write(path, write)

    monkeypatch.setattr(store_files, "atomic_write", no_final_marker)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*TINY, "--method", "fpft", "--out", str(out)])
    monkeypatch.setattr(store_files, "atomic_write", real_write)
    assert (out / results.RESULTS_FILE).exists() and not store.finished(out)
    # the store's skip rule: a finished configuration is found anywhere under OUT, not only at its usual path
    (job_dir,) = [d for d in (out / "jobs").iterdir() if d.is_dir()]
    job_dir.rename(out / "jobs" / "moved")
    assert cli.main([*TINY, "--method", "fpft", "--out", str(out)]) == 0
    assert store.finished(out)
    assert "1 of 1 configurations already finished" in capsys.readouterr().out


def test_finished_dirs_follow_the_results_store_convention(tmp_path):
    """_COMPLETE last with the config hash of config.yaml; one config_hash per configuration;
    and the Hydra jobs' readers do not mistake these tables for theirs (a shared root)."""
    out = tmp_path / "root" / "real_model"
    assert cli.main([*ARGV3, "--out", str(out)]) == 0
    df = pd.read_parquet(out / results.RESULTS_FILE)
    plan = table.make_plan(out=out, data="digits", seeds=[0, 1], dtype=torch.float32,
                           cfg=cli.validate(cli.build_parser().parse_args([*ARGV3, "--out", str(out)]))[1],
                           specs=mt.parse_methods("fpft,rac_lora_b,lora_a"))
    assert store.finished(out, plan.hash) and store.read_marker(out)["rows"] == len(df) == 6
    assert results.read_config(out) == plan.config and results.config_hash(plan.config) == plan.hash
    for job in plan.jobs:
        assert store.finished(job.dir, job.hash) and results.config_hash(results.read_config(job.dir)) == job.hash
        rows = df[df["config_hash"] == job.hash]
        assert len(rows) == 2 and set(rows["method"]) == {job.spec.name}
    assert results.complete_jobs(tmp_path / "root") == [] and len(results.load_results(tmp_path / "root")) == 0
    # a changed file is noticed (the marker vouches for every file's size)
    (out / "summary.md").write_text("edited")
    assert not store.finished(out, plan.hash)


def test_out_holding_another_table_is_refused_and_left_untouched(tmp_path, capsys):
    foreign = tmp_path / "old"
    foreign.mkdir()
    pd.DataFrame({"x": [1]}).to_parquet(foreign / "results.parquet")  # e.g. a table of the old CLI
    before = (foreign / "results.parquet").read_bytes()
    line = _error(capsys, [*TINY, "--method", "fpft", "--out", str(foreign)])
    assert line.startswith("error: --out: ") and "not from this command" in line
    assert (foreign / "results.parquet").read_bytes() == before and sorted(os.listdir(foreign)) == ["results.parquet"]
    done = tmp_path / "done"
    assert cli.main([*TINY, "--method", "fpft", "--out", str(done)]) == 0
    line = _error(capsys, [*TINY, "--method", "fpft", "--lr", "0.5", "--out", str(done)])
    assert line.startswith("error: --out: ") and "finished run of another command" in line


def test_out_claimed_by_a_live_process_is_refused_and_a_dead_ones_claim_taken_over(tmp_path, capsys):
    """The real-model CLI claims OUT with the store's job claims (experiments.claims)."""
    from experiments import claims

    out = tmp_path / "o"
    held = claims.try_claim(out, store.OUT_CLAIM, out_dir=out)
    line = _error(capsys, [*TINY, "--method", "fpft", "--out", str(out)])
    assert line.startswith("error: --out: ") and f"pid {os.getpid()}" in line
    assert sorted(os.listdir(out)) == [claims.CLAIMS_DIR]  # nothing written under another process's claim
    held.release()
    # a killed holder: its lock file stays, its flock is gone with it
    code = f"from experiments import claims; claims.try_claim({str(out)!r}, {store.OUT_CLAIM!r}, out_dir='.'); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    assert (out / claims.CLAIMS_DIR / f"{store.OUT_CLAIM}.lock").exists()
    assert cli.main([*TINY, "--method", "fpft", "--out", str(out)]) == 0
    assert store.finished(out) and not (out / claims.CLAIMS_DIR / f"{store.OUT_CLAIM}.lock").exists()


# ----------------------------------------------------------------------------- defaults that learn
def test_cli_defaults_make_every_adapter_method_learn_on_digits():
    """The CLI's defaults (fewer epochs here: 10 of 50, 2 seeds) lift every method well above
    chance (0.2) on the five new classes; the old default lr 2e-4 left them at chance.
    (Bernoulli-LoRA p = 0 / 1 are rac_lora_a / _b draw for draw: test_real_model.py.)"""
    args = cli.build_parser().parse_args([])
    _, cfg, _, _ = cli.validate(args)
    cfg.epochs = 10
    bundle = data.load_bundle("digits")
    seeds = torch.arange(2)
    base, info = tr.pretrain(bundle.pretrain, seeds, cfg)
    assert info["test_acc"].min() > 0.9
    for spec in mt.parse_methods("all", ps=(0.5,)):
        acc = tr.finetune(base, bundle.finetune, spec, seeds, cfg)["test_acc"]
        assert acc.min() > 0.35, (spec.label, acc)


# ----------------------------------------------------------------------------- scripts/gpu_real_model.sh
FAKE_PY = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1" = -c ]; then echo fake; exit 0; fi
out=${@: -1}
case "$out" in *"/$FAIL_STAGE") echo "fake failure" >&2; exit 3;; esac
mkdir -p "$out" && echo "| fake |" > "$out/summary.md"
"""


def _gpu_script(tmp_path, fail_stage, **env):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.txt"
    log.touch()
    run_env = {**os.environ, "PY": str(fake), "FAKE_LOG": str(log), "FAIL_STAGE": fail_stage,
               "OUT": str(tmp_path / "final"), "WORK": str(tmp_path / "work"), **env}
    r = subprocess.run(["bash", "scripts/gpu_real_model.sh"], cwd=ROOT, env=run_env, capture_output=True,
                       text=True, timeout=60)
    stages = [line.split("--out ")[1].rsplit("/", 1)[1] for line in log.read_text().splitlines() if "--out" in line]
    return r, stages


def test_gpu_script_stops_with_nonzero_status_at_a_failing_stage(tmp_path):
    r, stages = _gpu_script(tmp_path, "mnist_step")
    assert r.returncode != 0, r.stdout + r.stderr
    assert stages == ["bench", "bench_1seed", "mnist", "mnist_step"]  # digits, mnist_matched never started
    assert "stage mnist_step failed" in (tmp_path / "final" / "log.txt").read_text()
    assert (tmp_path / "final" / "real_model_gpu.tar.gz").stat().st_size > 0  # what finished is kept


def test_gpu_script_exits_zero_when_every_stage_succeeds(tmp_path):
    r, stages = _gpu_script(tmp_path, "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert stages == ["bench", "bench_1seed", "mnist", "mnist_step", "digits", "mnist_matched"]


def test_gpu_script_fails_fast_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    r, stages = _gpu_script(tmp_path, "none", PY=sys.executable)
    assert r.returncode != 0 and stages == []
    assert "torch.cuda.is_available() is False" in r.stdout + r.stderr


# ----------------------------------------------------------------------------- dropout masks in chunks
@pytest.mark.parametrize("chunk_elements", [1, 2 * 8 * 128 * 128, 2**40])
def test_dropout_masks_drawn_in_seed_chunks_equal_one_whole_draw(digits, monkeypatch, chunk_elements):
    """Chunks of 1 seed, 2 seeds (uneven: 5 = 2 + 2 + 1) or all at once give the masks of one
    whole-batch rng.random_bits draw, block after block (the buffer is reused)."""
    from solvers import rng

    monkeypatch.setattr(tr, "MASK_CHUNK_ELEMENTS", chunk_elements)
    seeds = torch.tensor([4, 0, 9, 2, 7])
    cfg = tr.TrainConfig(batch_size=128)
    run = tr.Run(md.init_mlp(seeds, 64, dtype=torch.float64), seeds, cfg, digits.finetune.train,
                 spec=mt.MethodSpec("lora_a"))
    keep = 1.0 - cfg.dropout
    for step in (0, 8, 17):
        run.step_count = step
        masks = run._dropout(128)
        bits = rng.random_bits(seeds, rng.Stream.NOISE, step // 8, (8, 128, 128), sub=tr.FINETUNE_SUB)
        whole = (bits < int(keep * 2**32)).to(torch.float64) / keep
        assert torch.equal(torch.cat(masks, dim=-1), whole[:, step % 8])


def test_real_model_tables_are_not_counted_as_hydra_jobs(tmp_path):
    """A results root holding a real-model output (its own marker kind) is neither a
    complete nor an incomplete Hydra job: collect and verify pass it by."""
    from experiments.real_model.store import write_marked
    from experiments.results import complete_jobs, incomplete_jobs

    d = tmp_path / "real_model"
    write_marked(d, {"results.parquet": lambda tmp: pd.DataFrame({"a": [1]}).to_parquet(tmp)}, {"x": 1}, rows=1)
    assert (d / "_COMPLETE").is_file()
    assert complete_jobs(tmp_path) == [] and incomplete_jobs(tmp_path) == []


def test_long_training_reports_progress_in_logs():
    """Epoch progress is printed (to a non-terminal stream too) at most every every_s seconds."""
    import io
    import time as _time

    from experiments.real_model.train import EpochProgress

    buf = io.StringIO()
    progress = EpochProgress("fine-tuning lora_a", 5, every_s=0.05, stream=buf)
    progress(0)
    assert buf.getvalue() == ""  # nothing before every_s has passed
    _time.sleep(0.06)
    progress(1)
    assert buf.getvalue().startswith("  fine-tuning lora_a: epoch 2/5 (")
