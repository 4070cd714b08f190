"""Real-model section (experiments.real_model): data, counts, learning, merging, batching, CLI."""
import gzip
import hashlib
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.real_model import data, methods as mt, model as md, optim as op, train as tr
from experiments.real_model.cli import main

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIMS = md.layer_dims(784)
DIGITS_DIMS = md.layer_dims(64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls: OpenMP threads only contend on a shared machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits32():
    return data.load_bundle("digits", dtype=torch.float32)


@pytest.fixture(scope="module")
def digits64():
    return data.load_bundle("digits", dtype=torch.float64)


@pytest.fixture(scope="module")
def pretrained(digits32):
    seeds = torch.arange(3)
    cfg = tr.TrainConfig(pretrain_epochs=20, pretrain_lr=3e-3)
    base, info = tr.pretrain(digits32.pretrain, seeds, cfg)
    return base, info, seeds


# ----------------------------------------------------------------------------- data
def _write_idx(path: Path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _tiny_mnist(directory: Path, gz=True, n=30):
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, size=(n, 28, 28))
    labels = np.arange(n) % 10
    suffix = ".gz" if gz else ""
    _write_idx(directory / ("t10k-images-idx3-ubyte" + suffix), images, gz)
    _write_idx(directory / ("t10k-labels-idx1-ubyte" + suffix), labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_roundtrip_and_checksums(tmp_path, gz):
    images, labels = _tiny_mnist(tmp_path, gz)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    x, y = data.load_mnist(tmp_path, checksums=sums)
    assert x.shape == (30, 784) and np.array_equal(x, images.reshape(30, -1))
    assert np.array_equal(y, labels)
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.load_mnist(tmp_path)  # official checksums: the tiny files must be refused


def test_idx_reader_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abcde")
    with pytest.raises(data.DataError, match="magic"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 9) + b"abc")
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx(tmp_path / "short")


def test_stratified_split_is_fixed_disjoint_and_60_20_20():
    y = np.repeat(np.arange(10), 50)
    a = data.stratified_split(y)
    b = data.stratified_split(y)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    allidx = np.concatenate(a)
    assert np.array_equal(np.sort(allidx), np.arange(500))
    for part, frac in zip(a, (0.6, 0.2, 0.2)):
        assert np.all(np.bincount(y[part], minlength=10) == int(frac * 50))


def test_digits_bundle_tasks(digits32):
    b = digits32
    assert b.in_dim == 64
    for task in (b.pretrain, b.finetune):
        for split in (task.train, task.val, task.test):
            assert set(split.y.unique().tolist()) == {0, 1, 2, 3, 4}
    assert abs(float(b.pretrain.train.x.mean())) < 0.2  # standardised


# ----------------------------------------------------------------------------- counts
def test_trainable_counts_match_the_paper_at_rank_one():
    count = lambda name, p=None: mt.trainable_params(mt.MethodSpec(name, p), MNIST_DIMS, 1)
    assert count("rac_lora_a") == (133.0, 133)  # A Gaussian and frozen, B trained: 64+64+5
    assert count("rac_lora_b") == (912.0, 912)  # B Gaussian and frozen, A trained: 784+64+64
    assert count("asymm_lora_a")[1] == 133 and count("asymm_lora_b")[1] == 912
    assert count("lora_a") == (1045.0, 1045) and count("cola_b") == (1045.0, 1045)
    assert count("fpft") == (784 * 64 + 64 + 64 * 64 + 64 + 64 * 5 + 5,) * 2 or count("fpft")[1] == 54725
    assert count("bernoulli_lora", 0.99) == (pytest.approx(0.99 * 912 + 0.01 * 133), 912)
    assert count("bernoulli_lora", 0.0) == (133.0, 133)
    assert mt.trainable_params(mt.MethodSpec("lora_a"), MNIST_DIMS, 3)[1] == 3 * 1045


# ----------------------------------------------------------------------------- optimisers
def test_functional_adamw_matches_torch_adamw():
    torch.manual_seed(0)
    p0 = [torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in p0] for _ in range(5)]
    flat, views, sizes = op.flat_views(p0, 2)
    opt = op.AdamW(flat, sizes, weight_decay=0.01)
    ref = [p.clone().requires_grad_(True) for p in p0]
    topt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01)
    for g in grads:
        opt.update(flat, torch.cat([x.reshape(2, -1) for x in g], 1), None, torch.full((2,), 1e-2, dtype=torch.float64))
        for r, x in zip(ref, g):
            r.grad = x.clone()
        topt.step()
    for v, r in zip(views, ref):
        assert torch.allclose(v, r.detach(), rtol=0, atol=1e-13)


def test_masked_adamw_leaves_inactive_seeds_and_tensors_untouched():
    p = [torch.ones(3, 2, 2, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)]
    flat, views, sizes = op.flat_views(p, 3)
    opt = op.AdamW(flat, sizes)
    active = torch.tensor([[True, False], [False, False], [True, True]])
    opt.update(flat, torch.ones_like(flat), active, torch.full((3,), 0.1, dtype=torch.float64))
    assert torch.equal(views[0][1], p[0][1]) and torch.equal(views[1][0], p[1][0]) and torch.equal(views[1][1], p[1][1])
    assert not torch.equal(views[0][0], p[0][0]) and not torch.equal(views[1][2], p[1][2])
    assert opt.t.tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    assert torch.equal(opt.m[1], torch.zeros(8, dtype=torch.float64))


def test_per_seed_plateau_matches_torch_scheduler():
    metrics = np.array([[1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85],
                        [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]])
    ours = op.Plateau(torch.full((2,), 1.0, dtype=torch.float64), patience=2)
    for t in range(metrics.shape[1]):
        ours.step(torch.as_tensor(metrics[:, t]))
    for s in range(2):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)
        for t in range(metrics.shape[1]):
            sched.step(metrics[s, t])
        assert ours.lr[s].item() == pytest.approx(opt.param_groups[0]["lr"])
    assert ours.lr[0] < ours.lr[1]


# ----------------------------------------------------------------------------- learning
LEARN_CFG = dict(epochs=6, lr=3e-2, rank=4)


@pytest.mark.parametrize("name", [s.label for s in mt.parse_methods("all", ps=(0.5,))] + ["bernoulli_lora(p=0.5)/step"])
def test_each_method_learns_and_trains_only_its_parameters(pretrained, digits32, name):
    base, info, seeds = pretrained
    assert info["test_acc"].min() > 0.9
    switch = "step" if name.endswith("/step") else "epoch"
    spec = next(s for s in mt.parse_methods("all", ps=(0.5,)) if s.label == name.split("/")[0])
    cfg = tr.TrainConfig(switch=switch, switch_every=4 if switch == "step" else 1, **LEARN_CFG)
    # --- parameters: a few steps inside one round move exactly the trainable tensors
    run = tr.Run(base, seeds, cfg, digits32.finetune.train, spec=spec)
    before_w = [w.detach().clone() for w in run.params.tensors()]
    before_a = run.adapters.clone() if run.adapters is not None else None
    order = tr.epoch_order(seeds, 0, len(digits32.finetune.train), 8)
    for i in range(3):
        run.train_step(order[:, 32 * i:32 * (i + 1)])
    changed_w = [not torch.equal(a, b) for a, b in zip(before_w, run.params.tensors())]
    if spec.uses_adapters:
        assert not any(changed_w), "base weights and biases must stay frozen within a round"
        for l in range(3):
            for side, tensors, trained in (("A", (before_a.A[l], run.adapters.A[l]), run.roles.train_A),
                                           ("B", (before_a.B[l], run.adapters.B[l]), run.roles.train_B)):
                for s in range(3):
                    moved = not torch.equal(tensors[0][s], tensors[1][s])
                    assert moved == bool(trained[s]), f"{side}{l} seed {s}"
        n_trained = sum(int(t.numel() // 3) for t in run.leaves)
        expected = mt.trainable_params(spec, run.params.dims, cfg.rank)[1]
        assert n_trained == (expected if spec.family != "bernoulli_lora" else (64 * 3 + 133) * cfg.rank)
    else:
        assert all(changed_w)
        assert sum(int(t.numel() // 3) for t in run.leaves) == mt.trainable_params(spec, run.params.dims, 4)[1]
    # --- learning: well above chance (0.2) on the five new classes
    res = tr.finetune(base, digits32.finetune, spec, seeds, cfg)
    assert not res["diverged"].any()
    assert res["test_acc"].min().item() > 0.6, res["test_acc"]


@pytest.mark.parametrize("name,p", [("rac_lora_a", None), ("cola_b", None), ("bernoulli_lora", 0.5)])
def test_merge_preserves_the_function(digits64, name, p):
    seeds = torch.arange(2)
    base = md.init_mlp(seeds, 64, dtype=torch.float64)
    cfg = tr.TrainConfig(lr=1e-2, rank=2)
    run = tr.Run(base, seeds, cfg, digits64.finetune.train, spec=mt.MethodSpec(name, p))
    order = tr.epoch_order(seeds, 0, len(digits64.finetune.train), 8)
    for i in range(4):
        run.train_step(order[:, 16 * i:16 * (i + 1)])
    x = digits64.finetune.val.x
    before = md.forward(run.params, x, adapters=run.adapters)
    assert any(float(b.detach().abs().max()) > 0 for b in run.adapters.B) and any(float(a.detach().abs().max()) > 0 for a in run.adapters.A)
    run.merge()
    after = md.forward(run.params, x, adapters=run.adapters)
    assert torch.allclose(before, after, rtol=0, atol=1e-12)
    # and the fresh round starts with one zero side per layer and seed
    for a, b in zip(run.adapters.A, run.adapters.B):
        assert torch.all((a.flatten(1).abs().sum(1) == 0) | (b.flatten(1).abs().sum(1) == 0))


@pytest.mark.parametrize("name,p,switch", [("bernoulli_lora", 0.5, "step"), ("cola_a", None, "epoch"),
                                           ("fpft", None, "epoch")])
def test_batched_seeds_equal_single_seed_runs(digits64, name, p, switch):
    seeds = torch.tensor([3, 7, 11])
    cfg = tr.TrainConfig(epochs=2, pretrain_epochs=2, lr=1e-2, pretrain_lr=3e-3, rank=2, switch=switch)
    base, _ = tr.pretrain(digits64.pretrain, seeds, cfg, dtype=torch.float64)
    batched = tr.finetune(base, digits64.finetune, mt.MethodSpec(name, p), seeds, cfg)
    for i in range(3):
        one = seeds[i:i + 1]
        base1, _ = tr.pretrain(digits64.pretrain, one, cfg, dtype=torch.float64)
        assert all(torch.allclose(a[i], b[0], rtol=0, atol=1e-10) for a, b in zip(base.tensors(), base1.tensors()))
        single = tr.finetune(base1, digits64.finetune, mt.MethodSpec(name, p), one, cfg)
        for x, y in zip(batched["run"].params.tensors(), single["run"].params.tensors()):
            assert torch.allclose(x[i], y[0], rtol=0, atol=1e-10)
        assert batched["test_acc"][i] == single["test_acc"][0]
        assert abs(batched["val_loss"][i] - single["val_loss"][0]) < 1e-10


def test_bernoulli_p1_and_p0_are_the_two_rac_lora_methods(pretrained, digits32):
    base, _, seeds = pretrained
    cfg = tr.TrainConfig(epochs=2, lr=1e-2, rank=2)
    for p, rac in ((1.0, "rac_lora_b"), (0.0, "rac_lora_a")):
        a = tr.finetune(base, digits32.finetune, mt.MethodSpec("bernoulli_lora", p), seeds, cfg)
        b = tr.finetune(base, digits32.finetune, mt.MethodSpec(rac), seeds, cfg)
        assert all(torch.equal(x, y) for x, y in zip(a["run"].params.tensors(), b["run"].params.tensors()))


# ----------------------------------------------------------------------------- CLI
def _one_error_line(capsys, argv, field):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {field}:"), err
    return err[0]


def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path):
    out = str(tmp_path / "o")
    _one_error_line(capsys, ["--p", "0.5,1.5", "--out", out], "--p")
    _one_error_line(capsys, ["--rank", "0", "--out", out], "--rank")
    _one_error_line(capsys, ["--rank", "6", "--out", out], "--rank")
    _one_error_line(capsys, ["--method", "lora,bogus", "--out", out], "--method")
    _one_error_line(capsys, ["--data", "cifar", "--out", out], "--data")
    _one_error_line(capsys, ["--lr", "-1", "--out", out], "--lr")
    _one_error_line(capsys, ["--switch", "sometimes", "--out", out], "--switch")
    _one_error_line(capsys, ["--data", "mnist", "--mnist-dir", str(tmp_path / "missing"), "--out", out], "--mnist-dir")
    _tiny_mnist(tmp_path)
    line = _one_error_line(capsys, ["--data", "mnist", "--mnist-dir", str(tmp_path), "--out", out], "--mnist-dir")
    assert "checksum mismatch" in line
    assert not (tmp_path / "o").exists()  # failed before any work


def test_cli_module_entry_point_exit_code():
    r = subprocess.run([sys.executable, "-m", "experiments.real_model", "--p", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: --p: 2 is outside [0, 1]"


def test_cli_end_to_end_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--data", "digits", "--method", "fpft,rac_lora_b,bernoulli_lora", "--p", "0.2,0.9", "--seeds", "2",
               "--epochs", "1", "--pretrain-epochs", "2", "--lr", "1e-2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 * 4
    for col in ("method", "p", "rank", "seed", "test_acc", "trainable_params", "wall_s", "device", "data", "switch",
                "optimizer", "epochs"):
        assert col in df.columns
    assert sorted(df["seed"].unique()) == [0, 1]
    assert df.loc[df.method == "rac_lora_b", "trainable_params"].iloc[0] == 192
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["label"]) == {"FPFT", "RAC-LoRA (B sampled, A trained)", "Bernoulli-LoRA (p=0.2)",
                                     "Bernoulli-LoRA (p=0.9)"}
    assert (out / "summary.md").read_text().count("|") > 10
    assert (out / "accuracy_vs_p.pdf").stat().st_size > 0 and (out / "accuracy_vs_p.png").stat().st_size > 0


def test_cli_bench_writes_bench_json(tmp_path, capsys):
    rc = main(["--bench", "--bench-steps", "3", "--bench-reps", "3", "--seeds", "2", "--out", str(tmp_path),
               "--device", "cpu"])
    assert rc == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    m = bench["methods"]
    assert set(m) == {"fpft", "lora_a", "bernoulli_lora(p=0.5)"}
    assert m["fpft"]["adamw_state_bytes_per_seed"] > m["lora_a"]["adamw_state_bytes_per_seed"] > 0
    assert all(v["ms_per_step"] > 0 and len(v["ms_per_step_reps"]) == 3 for v in m.values())
    assert all(v["ms_per_step_min"] <= v["ms_per_step"] <= v["ms_per_step_max"] for v in m.values())
    r = bench["bernoulli_over_lora"]
    per_rep = [b / a for b, a in zip(m["bernoulli_lora(p=0.5)"]["ms_per_step_reps"], m["lora_a"]["ms_per_step_reps"])]
    assert r["per_rep"] == pytest.approx(per_rep) and r["min"] <= r["median"] <= r["max"]


def test_batched_p_sweep_equals_separate_runs(digits64):
    seeds = torch.tensor([1, 2])
    base = md.init_mlp(seeds, 64, dtype=torch.float64)
    cfg = tr.TrainConfig(epochs=2, lr=1e-2, rank=2, switch="step", switch_every=3)
    specs = [mt.MethodSpec("bernoulli_lora", p) for p in (0.3, 0.7, 1.0)]
    swept = tr.finetune_sweep(base, digits64.finetune, specs, seeds, cfg)
    for spec, res in zip(specs, swept):
        alone = tr.finetune(base, digits64.finetune, spec, seeds, cfg)
        assert torch.equal(res["test_acc"], alone["test_acc"])
        assert torch.allclose(res["val_loss"], alone["val_loss"], rtol=0, atol=1e-10)


def test_steps_per_epoch_cycles_through_passes(digits32, pretrained):
    base, _, seeds = pretrained
    n = len(digits32.finetune.train)
    cfg = tr.TrainConfig(batch_size=128, steps_per_epoch=7)
    run = tr.Run(base, seeds, cfg, digits32.finetune.train, spec=mt.MethodSpec("rac_lora_b"))
    seen = [run.next_batch() for _ in range(2 * (-(-n // 128)))]
    first_pass = torch.cat(seen[: -(-n // 128)], dim=1)
    assert all(torch.equal(torch.sort(r).values, torch.arange(n)) for r in first_pass)  # a permutation per seed
    assert not torch.equal(first_pass, torch.cat(seen[-(-n // 128):], dim=1))  # next pass: a new order
    run2 = tr.Run(base, seeds, cfg, digits32.finetune.train, spec=mt.MethodSpec("rac_lora_b"))
    run2.epoch(0)
    assert run2.step_count == 7 and run2.round == 1


@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_optimiser_mask_follows_each_new_mask_object(opt_name):
    """The expanded mask is cached per mask object: a new round's mask takes effect at once,
    and exactly the (seed, tensor) blocks it marks change (values; AdamW moments too)."""
    from experiments.real_model.optim import SGD, AdamW

    sizes, S = [3, 5, 2], 4
    flat = torch.randn(S, sum(sizes), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opt = {"adamw": AdamW, "sgd": SGD}[opt_name](flat, sizes)
    lr = torch.full((S,), 0.1, dtype=torch.float64)
    cols = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    mask_a = torch.tensor([[1, 0, 0]] * S, dtype=torch.bool)
    mask_b = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    for mask in (mask_a, mask_a, mask_b.clone(), mask_b.clone()):  # equal values, new objects too
        before = flat.clone()
        opt.update(flat, torch.ones_like(flat), mask, lr)
        changed = flat != before
        assert torch.equal(changed, mask[:, cols]), mask
    if opt_name == "adamw":
        assert torch.equal(opt.t, 2.0 * mask_a + 2.0 * mask_b)
