"""The transformer experiment: pretrain a small Llama on a synthetic language, fine-tune on a shifted one.

Examples::

    python -m experiments.real_model.lm --out out/lm --device cpu --seeds 2 --steps 40 \\
        --pretrain-steps 200 --method lora_a,bernoulli_lora --p 0.5          # a few minutes on a CPU
    bash scripts/gpu_transformer.sh                                            # the paper_repro table (GPU)

Stages (``--stage``, comma list, in this order): ``pretrain`` (once, reused), ``finetune``
(every method x p x seed; ``--shard i/n`` runs every n-th job from i, so n processes can
share the device), ``bench`` (step time of every method, interleaved repetitions,
ratio to LoRA), ``collect`` (results.csv and _COMPLETE once every job is finished).
``all`` = all four. Running a command again computes only what is missing (layout and
contract: :mod:`experiments.real_model.lm.runs`). The markdown table:
``python -m experiments.real_model.lm.table OUT``. Bad input fails before any work
with one line ``error: --OPTION: ...`` and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .. import methods as mt
from .. import store
from . import runs
from .data import LanguageConfig
from .methods import FinetuneConfig, parse_methods
from .model import ModelConfig
from .train import PretrainConfig

STAGES = ("pretrain", "finetune", "bench", "collect")
DEFAULT_P = "0.2,0.5,0.8"
_L, _M, _P, _F = LanguageConfig(), ModelConfig(), PretrainConfig(), FinetuneConfig()
#: option -> (config, field): every numeric option and where it goes
FIELDS = {
    "vocab": ("lang", "vocab"), "successors": ("lang", "successors"), "sharpness": ("lang", "sharpness"),
    "shift": ("lang", "shift"), "seq-len": ("lang", "seq_len"), "data-seed": ("lang", "data_seed"),
    "pretrain-sequences": ("lang", "pretrain_sequences"), "finetune-sequences": ("lang", "finetune_sequences"),
    "test-sequences": ("lang", "test_sequences"),
    "hidden": ("model", "hidden"), "layers": ("model", "layers"), "heads": ("model", "heads"),
    "intermediate": ("model", "intermediate"), "init-seed": ("model", "init_seed"),
    "pretrain-steps": ("pretrain", "steps"), "pretrain-batch-size": ("pretrain", "batch_size"),
    "pretrain-lr": ("pretrain", "lr"), "pretrain-warmup": ("pretrain", "warmup"),
    "pretrain-weight-decay": ("pretrain", "weight_decay"),
    "steps": ("finetune", "steps"), "batch-size": ("finetune", "batch_size"), "lr": ("finetune", "lr"),
    "weight-decay": ("finetune", "weight_decay"), "rank": ("finetune", "rank"), "alpha": ("finetune", "alpha"),
    "init-std": ("finetune", "init_std"), "every": ("finetune", "every"), "galore-scale": ("finetune", "galore_scale"),
}
_DEFAULTS = {"lang": _L, "model": _M, "pretrain": _P, "finetune": _F}
_CLASSES = {"lang": LanguageConfig, "model": ModelConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig}


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m experiments.real_model.lm", description=__doc__.split("\n\n")[0],
                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (running again finishes what is missing)")
    ap.add_argument("--stage", default="all", help="comma list of " + ", ".join(STAGES) + " or all (default: all)")
    ap.add_argument("--method", default="all", help="comma list of " + ", ".join(("all",) + mt.FAMILIES[1:] + (
        "galore", "bernoulli_lora_opt")) + ", or single names (lora_a, rac_lora_b, ...) (default: all)")
    ap.add_argument("--p", default=DEFAULT_P, help=f"Bernoulli-LoRA p values (default: {DEFAULT_P})")
    ap.add_argument("--seeds", type=int, default=10, help="number of fine-tuning seeds (default: 10)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    ap.add_argument("--shard", default="0/1", help="i/n: run jobs i, i+n, ... of the finetune stage (default: 0/1)")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the device (recorded) (default: 1)")
    ap.add_argument("--stop-after", type=float, default=None,
                    help="finetune: start no job after this many seconds (rerun for the rest) (default: none)")
    ap.add_argument("--opt-state", default=_F.opt_state, help=f"reset | keep (default: {_F.opt_state})")
    ap.add_argument("--bench-reps", type=int, default=5, help="bench: interleaved repetitions (default: 5)")
    ap.add_argument("--bench-steps", type=int, default=50, help="bench: timed steps per repetition (default: 50)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of this process (data, draws; the model too on cpu) (default: 1)")
    for opt, (where, field) in FIELDS.items():
        default = getattr(_DEFAULTS[where], field)
        ap.add_argument(f"--{opt}", type=type(default), default=default, help=f"(default: {default})")
    return ap


def validate(args):
    """(stages, plan, device, shard); raises UsageError / ValueError naming the option."""
    stages = STAGES if args.stage == "all" else tuple(s.strip() for s in args.stage.split(","))
    for s in stages:
        if s not in STAGES:
            raise UsageError(f"stage: unknown stage {s!r} (choose from {', '.join(STAGES)} or all)")
    try:
        ps = [float(x) for x in args.p.split(",")]
    except ValueError:
        raise UsageError(f"p: not a comma list of numbers: {args.p!r}") from None
    for p in ps:
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"p: {p:g} is outside [0, 1]")
    if len(set(ps)) != len(ps):
        raise UsageError(f"p: a value is given twice in {args.p!r}")
    specs = parse_methods(args.method, ps)
    for name, value, low in (("seeds", args.seeds, 1), ("workers", args.workers, 1), ("bench-reps", args.bench_reps, 1),
                             ("bench-steps", args.bench_steps, 1), ("threads", args.threads, 1), ("seed", args.seed, 0)):
        if value < low:
            raise UsageError(f"{name}: must be >= {low}, got {value}")
    try:
        i, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        raise UsageError(f"shard: expected i/n, got {args.shard!r}") from None
    if not 0 <= i < n:
        raise UsageError(f"shard: need 0 <= i < n, got {args.shard!r}")
    if args.stop_after is not None and not args.stop_after > 0:
        raise UsageError(f"stop-after: must be a positive number of seconds, got {args.stop_after}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device: unknown value {args.device!r} (choose auto, cpu or cuda)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device: cuda requested but torch.cuda.is_available() is False")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"out: {args.out} exists and is not a directory")
    values = {k: {} for k in _CLASSES}
    for opt, (where, field) in FIELDS.items():
        values[where][field] = getattr(args, opt.replace("-", "_"))
    values["finetune"]["opt_state"] = args.opt_state
    cfgs = {k: _CLASSES[k](**v) for k, v in values.items()}
    back = {(w, f): o for o, (w, f) in FIELDS.items()}
    back[("finetune", "opt_state")] = "opt-state"
    for where, cfg in cfgs.items():
        try:
            cfg.check()
        except ValueError as exc:  # name the option, not the dataclass field
            field, _, rest = str(exc).partition(": ")
            field = field.removeprefix("pretrain_") if where == "pretrain" else field
            raise UsageError(f"{back.get((where, field), field)}: {rest}") from None
    max_rank = min(cfgs["model"].hidden, cfgs["model"].intermediate)
    if cfgs["finetune"].rank > max_rank:
        raise UsageError(f"rank: must be <= {max_rank} (smallest projection dimension), got {cfgs['finetune'].rank}")
    seeds = tuple(range(args.seed, args.seed + args.seeds))
    plan = runs.Plan(Path(args.out), cfgs["lang"], cfgs["model"], cfgs["pretrain"], cfgs["finetune"], tuple(specs), seeds)
    return stages, plan, device, (i, n)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        stages, plan, device, shard = validate(args)
    except (UsageError, mt.MethodError) as exc:
        field, sep, rest = str(exc).partition(": ")
        print(f"error: --{field}: {rest}" if sep and " " not in field else f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)  # also on cuda: WORKERS processes share the host's cores
    try:
        if "pretrain" in stages:
            runs.stage_pretrain(plan, device)
        if "finetune" in stages:
            stop_at = None if args.stop_after is None else time.time() + args.stop_after
            runs.stage_finetune(plan, device, shard=shard, workers=args.workers, stop_at=stop_at)
        if "bench" in stages:
            runs.stage_bench(plan, device, reps=args.bench_reps, steps=args.bench_steps, seed=args.seed)
        if "collect" in stages and runs.stage_collect(plan) is None:
            return 1
    except (store.ClaimError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
