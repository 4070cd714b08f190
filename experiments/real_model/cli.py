"""Command line of the real-model section (plain argparse, no Hydra).

Examples::

    python -m experiments.real_model --data digits --method all --seeds 5      # about a minute on a CPU
    python -m experiments.real_model --data mnist --mnist-dir DIR --method all \\
        --p 0,0.01,0.2,0.4,0.6,0.8,0.99,1 --rank 1 --seeds 20 --epochs 50 --lr 2e-4 --out out/mnist
    python -m experiments.real_model --data mnist --mnist-dir DIR --bench --out out/bench

Writes OUT/results.parquet (a row per configuration and seed, with its config_hash),
OUT/summary.{md,csv}, OUT/accuracy_vs_p.{pdf,png}, OUT/pretrain.csv and, last,
OUT/_COMPLETE; each configuration is also kept in OUT/jobs/ as soon as it finishes, so
running the same command again after a kill finishes only what is missing (a finished
command is not run again). With --bench only OUT/bench.json. All seeds of a
configuration train together as one batched model. Bad input fails before any work
with one line ``error: FIELD: ...`` and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from . import methods as mt
from . import store
from .bench import bench
from .data import DataError, load_bundle
from .model import layer_dims
from .table import OutError, make_plan, out_state, run_table
from .train import TrainConfig


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message otherwise)
        raise UsageError(message)


_D = TrainConfig()  # the paper's protocol (MNIST presets: scripts/gpu_real_model.sh)
#: Fine-tuning learning rate of the CLI: with it every adapter method learns on the bundled
#: digits in about a minute on one CPU thread (paper_results/cpu/real_model_digits_default.txt);
#: the paper's MNIST protocol uses TrainConfig.lr = 2e-4 (given explicitly by its presets).
QUICK_LR = 1e-2


DEFAULT_P_TEXT = ",".join(f"{p:g}" for p in mt.DEFAULT_P)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless the text already states it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m experiments.real_model", description=__doc__.split("\n\n")[0],
                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=_Help)
    ap.add_argument("--data", default="digits", help="digits (bundled with scikit-learn) | mnist (IDX files)")
    ap.add_argument("--mnist-dir", default=None,
                    help="directory with t10k-*-ubyte[.gz] (default: $MNIST_DIR; only for --data mnist)")
    ap.add_argument("--download", action="store_true", help="fetch the official MNIST files if missing")
    ap.add_argument("--method", default="all",
                    help="comma list of " + ", ".join(("all",) + mt.FAMILIES + mt.METHODS[1:-1]))
    ap.add_argument("--p", default=None,
                    help="Bernoulli-LoRA p values (probability of B sampled, A trained), comma list; "
                         "with --bench one value (default there: 0.5) "
                         f"(default: {DEFAULT_P_TEXT})")
    ap.add_argument("--rank", type=int, default=_D.rank, help="adapter rank r")
    ap.add_argument("--alpha", type=float, default=_D.alpha, help="adapter scale alpha (W = W0 + alpha/r B A)")
    ap.add_argument("--epochs", type=int, default=_D.epochs, help="fine-tuning epochs")
    ap.add_argument("--pretrain-epochs", type=int, default=_D.pretrain_epochs,
                    help="most pretraining epochs (early stopping on validation loss); 0 keeps the random init")
    ap.add_argument("--pretrain-patience", type=int, default=_D.pretrain_patience,
                    help="pretraining early-stopping patience in epochs")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (run k uses seed + k)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--switch", default=_D.switch, help="epoch | step: when COLA / RAC-LoRA / Bernoulli-LoRA merge")
    ap.add_argument("--switch-every", type=int, default=_D.switch_every, help="merge every k epochs (or steps)")
    ap.add_argument("--opt-state", default=_D.opt_state, help="keep | reset the optimiser moments at merges")
    ap.add_argument("--no-resample", action="store_true", help="keep each side's first random factor")
    ap.add_argument("--no-rezero", action="store_true", help="do not re-zero the trained factor at merges")
    ap.add_argument("--init-std", type=float, default=_D.init_std, help="std of the Gaussian factor")
    ap.add_argument("--optimizer", default=_D.optimizer, help="adamw | sgd (fine-tuning; pretraining uses AdamW)")
    ap.add_argument("--lr", type=float, default=QUICK_LR,
                    help="fine-tuning learning rate; the default makes every method learn on digits in about a "
                         f"minute; the paper's MNIST protocol uses {_D.lr:g}")
    ap.add_argument("--pretrain-lr", type=float, default=_D.pretrain_lr, help="pretraining learning rate (AdamW)")
    ap.add_argument("--batch-size", type=int, default=_D.batch_size,
                    help="minibatch size; a value above a training set's size means the whole set at every step "
                         "(full batch: the numbers of batch size = that size; a one-line note says so)")
    ap.add_argument("--steps-per-epoch", type=int, default=None,
                    help="optimiser steps per epoch, cycling through passes over the data, e.g. 211 matches our "
                         "estimate of the paper's steps on the 60k training set (merges, LR schedule per epoch) "
                         "(default: one pass over the training set)")
    ap.add_argument("--no-batch-p", action="store_true",
                    help="run each p separately, not as one batch (same numbers, more time)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda if available)")
    ap.add_argument("--dtype", default="float32", help="float32 | float64")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (tiny matmuls: more threads rarely help); ignored on cuda")
    ap.add_argument("--bench", action="store_true",
                    help="only time steps and optimiser memory (FPFT, LoRA, Bernoulli-LoRA), write bench.json")
    ap.add_argument("--bench-steps", type=int, default=200, help="timed steps per method with --bench")
    ap.add_argument("--bench-reps", type=int, default=5,
                    help="repetitions with --bench, methods interleaved in a rotating order (median and range reported)")
    ap.add_argument("--out", default="results/real_model",
                    help="output directory; running the same command again finishes what is missing")
    return ap


def _fail(message: str, parser: argparse.ArgumentParser) -> int:
    """Print ``error: --OPTION: ...`` (one line) and return exit status 2.

    Checks name the field they refuse (``steps-per-epoch: ...``); at the command line
    that field is an option, so its name is printed as the option."""
    field, sep, rest = message.partition(": ")
    options = {o for a in parser._actions for o in a.option_strings}
    if sep and f"--{field}" in options:
        message = f"--{field}: {rest}"
    print(f"error: {message}", file=sys.stderr)
    return 2


def _floats(text: str, field: str) -> list[float]:
    items = text.split(",")
    if any(not t.strip() for t in items):
        raise UsageError(f"{field}: empty item in the comma list {text!r}")
    try:
        return [float(t) for t in items]
    except ValueError:
        raise UsageError(f"{field}: not a comma list of numbers: {text!r}") from None


def validate(args) -> tuple[list[mt.MethodSpec], TrainConfig, torch.device, torch.dtype]:
    """Every check that needs no data; raises UsageError / MethodError with one line.

    A value the user gave is checked as given: nothing falls back to a default
    (``--steps-per-epoch 0`` is refused, not read as "one pass")."""
    if args.data not in ("digits", "mnist"):
        raise UsageError(f"data: unknown data set {args.data!r} (choose digits or mnist)")
    ps = _floats(DEFAULT_P_TEXT if args.p is None else args.p, "p")
    for p in ps:
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"p: {p:g} is outside [0, 1]")
    if len(set(ps)) != len(ps):
        raise UsageError(f"p: a value is given twice in {args.p!r}")
    specs = mt.parse_methods(args.method, ps, resample_frozen=not args.no_resample, rezero_trained=not args.no_rezero)
    # a value given for an option that this run does not use is a mistake, not something to ignore
    if args.p is not None and not args.bench and not any(s.family == "bernoulli_lora" for s in specs):
        raise UsageError(f"p: given, but --method {args.method!r} has no Bernoulli-LoRA")
    if args.p is not None and args.bench and len(ps) != 1:
        raise UsageError(f"p: --bench times one p value, got {args.p!r}")
    if args.data != "mnist":
        for name, given in (("mnist-dir", args.mnist_dir is not None), ("download", args.download)):
            if given:
                raise UsageError(f"{name}: only used with --data mnist (got --data {args.data})")
    ints = [("epochs", args.epochs, 1), ("pretrain-epochs", args.pretrain_epochs, 0), ("seeds", args.seeds, 1),
            ("switch-every", args.switch_every, 1), ("batch-size", args.batch_size, 1),
            ("bench-steps", args.bench_steps, 1), ("bench-reps", args.bench_reps, 1), ("pretrain-patience", args.pretrain_patience, 1),
            ("threads", args.threads, 1)]
    if args.steps_per_epoch is not None:  # None: one pass over the data
        ints.append(("steps-per-epoch", args.steps_per_epoch, 1))
    for name, value, low in ints:
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
    if not args.out:
        raise UsageError("out: empty path")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"out: {args.out} exists and is not a directory")
    if args.mnist_dir is not None and not args.mnist_dir:
        raise UsageError("mnist-dir: empty path")
    if args.data == "mnist":
        mnist_dir = args.mnist_dir if args.mnist_dir is not None else os.environ.get("MNIST_DIR")
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


def batch_note(batch_size: int, bundle) -> str | None:
    """One line when --batch-size exceeds a training set (that phase then uses the whole set per step)."""
    sizes = {"pretraining": len(bundle.pretrain.train), "fine-tuning": len(bundle.finetune.train)}
    over = {k: n for k, n in sizes.items() if batch_size > n}
    if not over:
        return None
    sets = ", ".join(f"{k} {n}" for k, n in over.items())
    return (f"note: --batch-size {batch_size} exceeds the training set ({sets} images): each step there uses "
            f"the whole set (full batch)")


def _done(plan) -> int:
    print(f"{plan.out}: this command already finished (config_hash {plan.hash[:12]}); nothing to do", flush=True)
    return 0


def main(argv=None) -> int:
    from figures.style import use_file_backend

    use_file_backend()  # the report's figure is written to files
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        specs, cfg, device, dtype = validate(args)
        if device.type == "cpu":
            torch.set_num_threads(args.threads)
        out = Path(args.out)
        seeds = list(range(args.seed, args.seed + args.seeds))
        plan = None if args.bench else make_plan(out=out, data=args.data, seeds=seeds, dtype=dtype, cfg=cfg, specs=specs)
        if plan is not None and out_state(plan) == "done":
            return _done(plan)
        bundle = load_bundle(args.data, mnist_dir=args.mnist_dir, download=args.download, dtype=dtype, device=device)
    except (UsageError, mt.MethodError, DataError, OutError) as exc:
        return _fail(str(exc), parser)
    note = batch_note(args.batch_size, bundle)
    if note:
        print(note, flush=True)
    try:
        with store.claim(out):  # one writer per OUT at a time
            if args.bench:
                bench(seeds=torch.tensor(seeds, dtype=torch.int64, device=device),
                      p=0.5 if args.p is None else float(args.p),
                      steps=args.bench_steps, reps=args.bench_reps, cfg=cfg, device=device, dtype=dtype, bundle=bundle, out=out)
            elif out_state(plan) == "done":  # another process finished it meanwhile
                return _done(plan)
            else:
                run_table(plan, cfg, device, dtype, bundle, batch_p=not args.no_batch_p)
    except (store.ClaimError, OutError) as exc:
        return _fail(str(exc), parser)
    return 0
