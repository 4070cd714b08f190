"""Command line of the real-model section (plain argparse, no Hydra).

    python -m experiments.real_model --data digits --method all --seeds 5 --epochs 50 --out out/digits
    python -m experiments.real_model --data mnist --mnist-dir ../shared/data/mnist \\
        --method all --p 0,0.01,0.2,0.4,0.6,0.8,0.99,1 --rank 1 --seeds 20 --epochs 50 --out out/mnist
    python -m experiments.real_model --data mnist --mnist-dir ... --bench --out out/bench

Writes OUT/results.parquet (a row per configuration and seed), OUT/summary.{md,csv},
OUT/accuracy_vs_p.{pdf,png}, OUT/pretrain.csv; with --bench only OUT/bench.json.
All seeds of a configuration train together as one batched model. Bad input fails
before any work with one line ``error: FIELD: ...`` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from . import methods as mt
from .data import DataError, load_bundle
from .model import layer_dims
from .report import plot_accuracy_vs_p, write_summary
from .train import TrainConfig, finetune, finetune_sweep, pretrain


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message otherwise)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m experiments.real_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits", help="digits | mnist")
    ap.add_argument("--mnist-dir", default=None, help="directory with t10k-*-ubyte[.gz] (default $MNIST_DIR)")
    ap.add_argument("--download", action="store_true", help="fetch the official MNIST files if missing")
    ap.add_argument("--method", default="all", help="comma list of " + ", ".join(("all",) + mt.FAMILIES + mt.METHODS[1:-1]))
    ap.add_argument("--p", default=",".join(f"{p:g}" for p in mt.DEFAULT_P), help="Bernoulli-LoRA p values, comma list")
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--pretrain-epochs", type=int, default=50)
    ap.add_argument("--pretrain-patience", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (run k uses seed + k)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--switch", default="epoch", help="epoch | step: when COLA / RAC / Bernoulli merge")
    ap.add_argument("--switch-every", type=int, default=1, help="merge every k epochs (or steps)")
    ap.add_argument("--opt-state", default="keep", help="keep | reset the optimiser moments at merges")
    ap.add_argument("--no-resample", action="store_true", help="keep each side's first random factor")
    ap.add_argument("--no-rezero", action="store_true", help="do not re-zero the trained factor at merges")
    ap.add_argument("--init-std", type=float, default=1.0, help="std of the Gaussian factor")
    ap.add_argument("--optimizer", default="adamw", help="adamw | sgd (fine-tuning)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--pretrain-lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps-per-epoch", type=int, default=None,
                    help="optimiser steps per epoch (default: one pass); e.g. 215 matches the paper's "
                         "steps on the 60k training set (merges, LR schedule per epoch)")
    ap.add_argument("--no-batch-p", action="store_true", help="run each p separately, not as one batch")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="float32", help="float32 | float64")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU: tiny matmuls)")
    ap.add_argument("--bench", action="store_true", help="time steps and optimiser memory, write bench.json")
    ap.add_argument("--bench-steps", type=int, default=200)
    ap.add_argument("--out", default="results/real_model", help="output directory")
    return ap


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _floats(text: str, field: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{field}: not a comma list of numbers: {text!r}") from None


def validate(args) -> tuple[list[mt.MethodSpec], TrainConfig, torch.device, torch.dtype]:
    """Every check that needs no data; raises UsageError / MethodError with one line."""
    if args.data not in ("digits", "mnist"):
        raise UsageError(f"data: unknown data set {args.data!r} (choose digits or mnist)")
    ps = _floats(args.p, "p")
    if not ps:
        raise UsageError("p: empty list")
    for p in ps:
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"p: {p:g} is outside [0, 1]")
    specs = mt.parse_methods(args.method, ps, resample_frozen=not args.no_resample, rezero_trained=not args.no_rezero)
    for name, value, low in (("epochs", args.epochs, 1), ("pretrain-epochs", args.pretrain_epochs, 0),
                             ("seeds", args.seeds, 1), ("switch-every", args.switch_every, 1),
                             ("batch-size", args.batch_size, 1), ("bench-steps", args.bench_steps, 1),
                             ("pretrain-patience", args.pretrain_patience, 1),
                             ("steps-per-epoch", args.steps_per_epoch or 1, 1)):
        if value < low:
            raise UsageError(f"{name}: must be >= {low}, got {value}")
    for name, value in (("lr", args.lr), ("pretrain-lr", args.pretrain_lr), ("alpha", args.alpha),
                        ("init-std", args.init_std)):
        if not value > 0 or value != value or value == float("inf"):
            raise UsageError(f"{name}: must be a positive number, got {value}")
    for name, value, choices in (("switch", args.switch, ("epoch", "step")), ("optimizer", args.optimizer, ("adamw", "sgd")),
                                 ("opt-state", args.opt_state, ("keep", "reset")),
                                 ("device", args.device, ("auto", "cpu", "cuda")), ("dtype", args.dtype, ("float32", "float64"))):
        if value not in choices:
            raise UsageError(f"{name}: unknown value {value!r} (choose {' or '.join(choices)})")
    in_dim = 64 if args.data == "digits" else 784
    max_rank = min(min(d) for d in layer_dims(in_dim))
    if not 1 <= args.rank <= max_rank:
        raise UsageError(f"rank: must be in [1, {max_rank}] (min layer dimension), got {args.rank}")
    if args.data == "mnist":
        mnist_dir = args.mnist_dir or os.environ.get("MNIST_DIR")
        if not mnist_dir:
            raise UsageError("mnist-dir: no MNIST directory given (use --mnist-dir or set MNIST_DIR)")
        if not args.download and not Path(mnist_dir).is_dir():
            raise UsageError(f"mnist-dir: directory {mnist_dir!r} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device: cuda requested but torch.cuda.is_available() is False")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    cfg = TrainConfig(epochs=args.epochs, pretrain_epochs=args.pretrain_epochs, pretrain_patience=args.pretrain_patience,
                      batch_size=args.batch_size, lr=args.lr, pretrain_lr=args.pretrain_lr, optimizer=args.optimizer,
                      rank=args.rank, alpha=args.alpha, init_std=args.init_std, switch=args.switch,
                      switch_every=args.switch_every, opt_state=args.opt_state, steps_per_epoch=args.steps_per_epoch)
    return specs, cfg, device, getattr(torch, args.dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _atomic_parquet(df: pd.DataFrame, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def run_table(args, specs, cfg, device, dtype, bundle, out: Path) -> pd.DataFrame:
    seeds = torch.arange(args.seed, args.seed + args.seeds, dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    base, info = pretrain(bundle.pretrain, seeds, cfg, dtype=dtype)
    _sync(device)
    pre_wall = time.perf_counter() - t0
    pre = pd.DataFrame({"seed": seeds.cpu().numpy(), "pretrain_test_acc": info["test_acc"].cpu().numpy(),
                        "pretrain_val_acc": info["val_acc"].cpu().numpy(), "pretrain_epochs": info["epochs"].cpu().numpy(),
                        "pretrain_wall_s": pre_wall})
    pre.to_csv(out / "pretrain.csv", index=False)
    print(f"pretrained {args.seeds} seeds on {bundle.name} 0-4: test acc median {100 * pre['pretrain_test_acc'].median():.2f}% "
          f"({pre_wall:.1f}s)", flush=True)
    rows = []
    dims = base.dims
    # the batched Bernoulli-LoRA p sweep first (one batch), then the other methods
    sweep = [s for s in specs if s.family == "bernoulli_lora" and not args.no_batch_p]
    batches = ([sweep] if sweep else []) + [[s] for s in specs if s.family != "bernoulli_lora" or args.no_batch_p]
    for batch in batches:
        t0 = time.perf_counter()
        if len(batch) == 1:
            results = [finetune(base, bundle.finetune, batch[0], seeds, cfg)]
        else:
            results = finetune_sweep(base, bundle.finetune, batch, seeds, cfg)
        _sync(device)
        batch_wall = time.perf_counter() - t0
        for spec, res in zip(batch, results):
            _rows(rows, spec, res, batch_wall, len(batch), args, cfg, device, dtype, bundle, seeds, info, dims)
        _atomic_parquet(pd.DataFrame(rows), out / "results.parquet")
    df = pd.DataFrame(rows)
    write_summary(df, out)
    plot_accuracy_vs_p(df, out)
    return df


def _rows(rows, spec, res, batch_wall, n_configs, args, cfg, device, dtype, bundle, seeds, info, dims):
    """Append one row per seed of a configuration; wall_s is its share of the batch's wall time."""
    wall = batch_wall / n_configs
    expected, most = mt.trainable_params(spec, dims, cfg.rank)
    acc = res["test_acc"].cpu().numpy()
    for i, s in enumerate(seeds.cpu().tolist()):
        rows.append({"method": spec.name, "p": spec.p if spec.p is not None else float("nan"), "rank": cfg.rank,
                     "seed": s, "test_acc": float(acc[i]), "val_acc": float(res["val_acc"][i]),
                     "trainable_params": expected, "trainable_params_max": most,
                     "opt_state_bytes": int(res["opt_state_bytes"]), "wall_s": wall, "batch_wall_s": batch_wall,
                     "batched_runs": args.seeds * n_configs, "steps_per_epoch": cfg.steps_per_epoch or 0,
                     "device": str(device), "data": bundle.name, "switch": cfg.switch,
                     "switch_every": cfg.switch_every, "optimizer": cfg.optimizer, "epochs": cfg.epochs,
                     "lr": cfg.lr, "alpha": cfg.alpha, "opt_state": cfg.opt_state,
                     "resample_frozen": spec.resample_frozen, "rezero_trained": spec.rezero_trained,
                     "diverged": bool(res["diverged"][i]), "pretrain_test_acc": float(info["test_acc"][i]),
                     "dtype": str(dtype).replace("torch.", "")})
    print(f"{spec.label:24s} acc median {100 * float(pd.Series(acc).median()):6.2f}%  "
          f"trainable {expected:g}  {wall:.1f}s", flush=True)


def bench(args, cfg, device, dtype, bundle, out: Path) -> dict:
    """ms per training step (batched seeds) and AdamW state bytes per method."""
    from .train import Run, epoch_order, init_mlp

    seeds = torch.arange(args.seed, args.seed + args.seeds, dtype=torch.int64, device=device)
    base = init_mlp(seeds, bundle.in_dim, dtype=dtype, device=device)
    ps = _floats(args.p, "p")
    p = ps[0] if len(ps) == 1 else 0.5  # one --p value is benchmarked as given
    specs = [None, mt.MethodSpec("lora_a"), mt.MethodSpec("bernoulli_lora", p)]
    train = bundle.finetune.train
    order = epoch_order(seeds, 0, len(train), 8)
    b = min(cfg.batch_size, len(train))
    n_batches = max(1, len(train) // b)
    result = {"device": str(device), "data": bundle.name, "seeds": args.seeds, "rank": cfg.rank, "batch_size": b,
              "switch": cfg.switch, "dtype": str(dtype).replace("torch.", ""), "steps": args.bench_steps, "methods": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for spec in specs:
        run = Run(base, seeds, cfg, train, spec=spec if spec is not None else mt.MethodSpec("fpft"), optimizer="adamw")
        for i in range(10):  # warm-up
            run.train_step(order[:, (i % n_batches) * b:(i % n_batches + 1) * b])
        _sync(device)
        t0 = time.perf_counter()
        for i in range(args.bench_steps):
            run.train_step(order[:, (i % n_batches) * b:(i % n_batches + 1) * b])
        _sync(device)
        dt = (time.perf_counter() - t0) / args.bench_steps
        spec = spec or mt.MethodSpec("fpft")
        expected, most = mt.trainable_params(spec, base.dims, cfg.rank)
        result["methods"][spec.label] = {
            "ms_per_step": 1e3 * dt, "ms_per_step_per_seed": 1e3 * dt / args.seeds,
            "trainable_params": expected, "trainable_params_max": most,
            "adamw_state_bytes_per_seed": run.opt.state_bytes() // args.seeds,
            "adamw_state_bytes_min_per_seed": 2 * most * torch.finfo(dtype).bits // 8,
        }
        print(f"{spec.label:24s} {1e3 * dt:8.3f} ms/step ({args.seeds} seeds)  AdamW state "
              f"{run.opt.state_bytes() // args.seeds} B/seed", flush=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        specs, cfg, device, dtype = validate(args)
        if device.type == "cpu":
            torch.set_num_threads(args.threads or 1)
        bundle = load_bundle(args.data, mnist_dir=args.mnist_dir, download=args.download, dtype=dtype, device=device)
    except (UsageError, mt.MethodError, DataError) as exc:
        return _fail(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.bench:
        bench(args, cfg, device, dtype, bundle, out)
    else:
        run_table(args, specs, cfg, device, dtype, bundle, out)
    return 0
