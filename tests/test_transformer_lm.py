"""Transformer section (experiments.real_model.lm), CPU smoke version: a tiny Llama pretrained
on the synthetic language, fine-tuned a few steps through peft and as an optimiser.

Invariants checked on the real runs (one per form):
* adapter form: Bernoulli-LoRA through the shipped switcher with p = 1 IS RAC-LoRA (B random)
  through the fixed-side driver, bit for bit; p = 0 is not (so the comparison can fail);
* optimiser form: BernoulliLoRAOptimizer follows the adapter form's trajectory (same seed);
* trainable parameters measured in the model = the MNIST section's formula.
Plus the complete / resume contract, refusals and the table generator.
"""
import json
import math

import pandas as pd
import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

from experiments.real_model import store  # noqa: E402
from experiments.real_model.lm import cli, data, table  # noqa: E402

TINY = ["--device", "cpu", "--seeds", "1", "--vocab", "8", "--successors", "2", "--seq-len", "8",
        "--pretrain-sequences", "64", "--finetune-sequences", "32", "--test-sequences", "16",
        "--hidden", "16", "--intermediate", "16", "--heads", "2", "--layers", "1",
        "--pretrain-steps", "5", "--pretrain-batch-size", "8", "--steps", "6", "--batch-size", "8",
        "--every", "3", "--rank", "2", "--alpha", "2", "--lr", "1e-2"]
METHODS = ["--method", "rac_lora_b,bernoulli_lora,bernoulli_lora_opt", "--p", "1,0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    argv = ["--out", str(out)] + TINY + METHODS
    assert cli.main(argv) == 0
    df = pd.read_csv(out / "results.csv")
    return out, argv, df.set_index("label")


def test_adapter_form_p1_is_rac_lora_b_bit_for_bit_and_p0_is_not(run):
    _, _, df = run
    for col in ("test_loss", "test_acc", "train_loss_last"):
        assert df.loc["bernoulli_lora(p=1)", col] == df.loc["rac_lora_b", col]
    assert df.loc["bernoulli_lora(p=0)", "test_loss"] != df.loc["rac_lora_b", "test_loss"]


def test_optimiser_form_follows_the_adapter_form(run):
    _, _, df = run
    for p in (1, 0):
        a, o = df.loc[f"bernoulli_lora(p={p})"], df.loc[f"bernoulli_lora_opt(p={p})"]
        assert math.isclose(a["test_loss"], o["test_loss"], rel_tol=1e-5)
        assert math.isclose(a["train_loss_last"], o["train_loss_last"], rel_tol=1e-5)
    # not an identity of the comparison: the two sides give different losses
    assert not math.isclose(df.loc["bernoulli_lora_opt(p=1)", "test_loss"],
                            df.loc["bernoulli_lora_opt(p=0)", "test_loss"], rel_tol=1e-5)


def test_trainable_parameters_measured_equal_the_formula(run):
    _, _, df = run
    # hidden 16, intermediate 16, one layer: q, k, v, o (16 -> 16), gate, up (16 -> 16), down (16 -> 16)
    n_in = n_out = 7 * 16
    r = 2
    assert df.loc["rac_lora_b", "trainable_now"] == r * n_in == df.loc["rac_lora_b", "trainable_params"]
    assert df.loc["bernoulli_lora(p=0)", "trainable_now"] == r * n_out
    # optimiser state: AdamW moments of the trained factor only (2 tensors of r x n per layer, float32)
    assert df.loc["rac_lora_b", "opt_state_bytes"] >= 2 * r * n_in * 4


def test_rerun_does_nothing_and_a_lost_job_is_redone_alone(run, capsys):
    out, argv, _ = run
    rows = {d.name: (d / "row.json").stat().st_mtime_ns for d in (out / "jobs").iterdir()}
    assert cli.main(argv) == 0
    assert {d.name: (d / "row.json").stat().st_mtime_ns for d in (out / "jobs").iterdir()} == rows
    victim = sorted(rows)[0]
    store.remove_marker(out / "jobs" / victim)
    assert not store.finished(out / "jobs" / victim)
    assert cli.main(argv) == 0
    after = {d.name: (d / "row.json").stat().st_mtime_ns for d in (out / "jobs").iterdir()}
    assert [k for k in rows if after[k] != rows[k]] == [victim]
    assert store.finished(out) and store.finished(out / "jobs" / victim)


def test_collect_refuses_while_jobs_are_missing(tmp_path, capsys):
    argv = ["--out", str(tmp_path)] + TINY + ["--method", "rac_lora_b"]
    assert cli.main(argv + ["--stage", "pretrain"]) == 0
    assert cli.main(argv + ["--stage", "finetune", "--stop-after", "1e-9"]) == 0  # budget spent: no job starts
    assert "left for a rerun" in capsys.readouterr().out
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
    assert cli.main(argv + ["--stage", "collect"]) == 1
    assert not (tmp_path / "results.csv").exists() and not store.finished(tmp_path)


def test_table_has_a_row_per_configuration_from_the_raw_files(run):
    out, _, df = run
    text = table.markdown(out)
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(body) == len(df) == 5
    pre = json.loads(next(out.glob("pretrain-*/pretrain.json")).read_text())
    assert f"{pre['oracle_finetune_loss']:.4f}" in text


def test_table_reads_a_copy_without_weights_and_refuses_a_truncated_raw_file(run, tmp_path):
    import shutil

    out, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    next(copy.glob("pretrain-*/weights.pt")).unlink()  # the GPU script's tarball leaves it out
    assert table.markdown(copy) == table.markdown(out)
    raw = next(copy.glob("pretrain-*/pretrain.json"))
    raw.write_text(raw.read_text()[:-2])
    with pytest.raises(FileNotFoundError, match="pretrain"):
        table.markdown(copy)


@pytest.mark.parametrize("extra,field", [(["--p", "1.5"], "--p"), (["--stage", "train"], "--stage"),
                                         (["--rank", "0"], "--rank"), (["--steps", "0"], "--steps"),
                                         (["--method", "dora"], "--method"), (["--shard", "2/2"], "--shard"),
                                         (["--opt-state", "fresh"], "--opt-state"),
                                         (["--pretrain-lr", "0"], "--pretrain-lr"),
                                         (["--stop-after", "0"], "--stop-after")])
def test_bad_input_is_refused_in_one_line_naming_the_option(tmp_path, capsys, extra, field):
    rc = cli.main(["--out", str(tmp_path / "o")] + TINY + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {field}: "), err
    assert not (tmp_path / "o").exists()


def test_language_is_a_pure_function_of_the_seed_and_the_shift_changes_the_chain():
    cfg = data.LanguageConfig(vocab=8, successors=2, seq_len=8, pretrain_sequences=4, finetune_sequences=4,
                              test_sequences=4)
    a, b = data.make_tasks(cfg), data.make_tasks(cfg)
    assert all((a[k].train == b[k].train).all() for k in a)
    only = data.make_tasks(cfg, only=("finetune",))
    assert list(only) == ["finetune"] and (only["finetune"].test == a["finetune"].test).all()
    P, Q = a["pretrain"].chain, a["finetune"].chain
    changed = (P != Q).any(dim=-1).double().mean()
    assert abs(float(changed) - cfg.shift) <= 1 / 64 + 1e-12
    assert float((P.sum(-1) - 1).abs().max()) < 1e-12


def test_gpu_script_passes_options_the_cli_accepts(tmp_path):
    """scripts/gpu_transformer.sh with a PY that only records its arguments: every call of the
    CLI it makes (pretrain, finetune shards, bench, collect) validates, with the sizes it states."""
    import os
    import shlex
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    log = tmp_path / "calls.txt"
    fake = tmp_path / "py"
    # one write per call: the fine-tuning shards run in parallel and append to the same log
    fake.write_text(f'#!/usr/bin/env bash\nline=$(printf "%q " "$@")\nprintf "%s\\n" "$line" >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PY=str(fake), OUT=str(tmp_path / "final"), WORK=str(tmp_path / "work"), DEVICE="cpu",
               WHEELS=str(tmp_path / "no_wheels"))  # never installs a checkout's carried wheels into /tmp/site
    subprocess.run(["bash", "scripts/gpu_transformer.sh"], cwd=root, env=env, capture_output=True, timeout=60)
    calls = [shlex.split(line)[2:] for line in log.read_text().splitlines() if "experiments.real_model.lm" in line
             and "experiments.real_model.lm.table" not in line]
    stages = [c[c.index("--stage") + 1] for c in calls]
    assert stages == ["pretrain"] + ["finetune"] * 6 + ["bench", "collect"], stages
    for argv in calls:
        args = cli.build_parser().parse_args(argv)
        _, plan, _, _ = cli.validate(args)
        assert len(plan.seeds) == 10 and plan.model.hidden == 128 and len(plan.specs) == 16


def test_step_overheads_optimiser_draws_one_coin_per_round_and_factors_are_the_modules_tensors(monkeypatch):
    """Item 7's two overhead fixes keep their meaning: the optimiser form asks for the coin once
    per round (it asked at every step: one CPU hash each), and ``factors`` (registry reads) returns
    exactly ``lora_A[name].weight`` / ``lora_B[name].weight``."""
    import peft
    import torch

    from experiments.real_model.bernoulli_peft.layers import factors, lora_layers
    from experiments.real_model.lm.model import TARGETS, ModelConfig, build
    from solvers.torch_optim import BernoulliLoRAOptimizer

    model = build(ModelConfig(hidden=8, layers=1, heads=2, intermediate=8), vocab=8, seq_len=8)
    weights = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    opt = BernoulliLoRAOptimizer(weights, lr=1e-2, rank=2, p=0.5, every=5, seed=3)
    asked = []
    real = opt.side_of_round
    monkeypatch.setattr(opt, "side_of_round", lambda k: asked.append(k) or real(k))
    x = torch.randint(0, 8, (2, 8))
    for _ in range(12):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    assert asked == [0, 1, 2]
    pm = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=list(TARGETS)))
    for _, m in lora_layers(pm):
        A, B = factors(m, "default")
        assert A is m.lora_A["default"].weight and B is m.lora_B["default"].weight


def test_galore_loader_can_be_called_twice():
    """The second call must not fail on the stand-in package's missing __spec__ (it did on the H200)."""
    from experiments.real_model.lm.methods import galore_adamw
    first = galore_adamw()
    assert galore_adamw() == first
