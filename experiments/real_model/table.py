"""The real-model table with the results store's complete / resume contract.

Layout of ``OUT`` (every directory written by :func:`store.write_marked`: atomic
files, ``_COMPLETE`` last)::

    pretrain-<hash12>/        weights.pt (the S pretrained models), pretrain.csv
    jobs/<label>-<hash12>/    results.parquet of ONE configuration (method, p, all seeds)
    results.parquet, pretrain.csv, summary.{csv,md}, accuracy_vs_p.{pdf,png}, config.yaml
    _COMPLETE                 written last: the whole command finished

A configuration's hash is :func:`experiments.results.config_hash` of everything that
changes its numbers (data, seeds, dtype, every :class:`TrainConfig` field, the method
spec); the run's hash adds the list of configurations. Running the same command again
reuses the pretrained models and every finished configuration and computes only what
is missing; the top-level table exists only once every configuration is finished, so
a killed run never leaves a partial ``results.parquet`` that looks finished. The
device, ``--threads``, ``--no-batch-p`` and ``--out`` change no numbers and are not
hashed (a batched p sweep equals separate runs; CPU and GPU agree up to rounding).
"""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pandas as pd
import torch

from experiments.results import RESULTS_FILE, canonical_config, config_hash

from . import methods as mt
from . import store
from .model import MLPParams
from .report import report_files
from .train import TrainConfig, finetune, finetune_sweep, pretrain, sync

PRETRAIN_FILES = ("weights.pt", "pretrain.csv")


class OutError(ValueError):
    """--out holds something this command must not overwrite; one line."""


@dataclasses.dataclass(frozen=True)
class Job:
    spec: mt.MethodSpec
    config: dict
    hash: str
    dir: Path


@dataclasses.dataclass(frozen=True)
class Plan:
    out: Path
    seeds: tuple
    config: dict  # the run's (canonical) configuration
    hash: str
    pretrain_config: dict
    pretrain_hash: str
    jobs: tuple

    @property
    def pretrain_dir(self) -> Path:
        return self.out / f"pretrain-{self.pretrain_hash[:12]}"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def make_plan(*, out, data: str, seeds, dtype: torch.dtype, cfg: TrainConfig, specs) -> Plan:
    """Configurations, hashes and directories of one command (no I/O)."""
    out = Path(out)
    base = {"table_version": store.TABLE_VERSION, "data": data, "seeds": [int(s) for s in seeds],
            "dtype": str(dtype).replace("torch.", ""), "train": dataclasses.asdict(cfg)}
    pre = canonical_config({**base, "phase": "pretrain"})
    jobs = []
    for spec in specs:
        c = canonical_config({**base, "phase": "finetune", "method": dataclasses.asdict(spec)})
        h = config_hash(c)
        jobs.append(Job(spec, c, h, out / "jobs" / f"{_safe(spec.label)}-{h[:12]}"))
    hashes = [j.hash for j in jobs]
    if len(set(hashes)) != len(hashes):
        raise ValueError("a configuration is listed twice")  # parse_methods / validate dedupe
    run = canonical_config({**base, "configs": [canonical_config(dataclasses.asdict(s)) for s in specs]})
    return Plan(out, tuple(int(s) for s in seeds), run, config_hash(run), pre, config_hash(pre), tuple(jobs))


def out_state(plan: Plan) -> str:
    """'done' when OUT holds this command's finished run, 'run' when there is work to do.

    Raises :class:`OutError` when OUT holds a finished run of another command, or a
    ``results.parquet`` that is not this command's (an older or foreign table): those
    are never overwritten."""
    out = plan.out
    if store.finished(out, plan.hash):
        return "done"
    if store.finished(out):
        other = str(store.read_marker(out).get("config_hash", ""))[:12]
        raise OutError(f"out: {out} holds the finished run of another command (config_hash {other}); "
                       f"choose another --out")
    if (out / RESULTS_FILE).exists():
        found = store.read_config(out)
        if found is None or config_hash(found) != plan.hash:
            raise OutError(f"out: {out / RESULTS_FILE} exists and is not from this command; "
                           f"remove it or choose another --out")
    return "run"


def _pretrained(plan: Plan, bundle, cfg: TrainConfig, dtype, device):
    """The S pretrained models and their per-seed table: from OUT when finished, else trained and saved."""
    d = plan.pretrain_dir
    if store.finished(d, plan.pretrain_hash):
        state = torch.load(d / "weights.pt", map_location=device, weights_only=True)
        pre = pd.read_csv(d / "pretrain.csv")
        print(f"pretrained {len(plan.seeds)} seeds on {bundle.name} 0-4: reused {d}", flush=True)
        return MLPParams(state["weights"], state["biases"]), pre
    seeds = torch.tensor(plan.seeds, dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    base, info = pretrain(bundle.pretrain, seeds, cfg, dtype=dtype)
    sync(device)
    wall = time.perf_counter() - t0
    pre = pd.DataFrame({"seed": list(plan.seeds), "pretrain_test_acc": info["test_acc"].cpu().numpy(),
                        "pretrain_val_acc": info["val_acc"].cpu().numpy(),
                        "pretrain_epochs": info["epochs"].cpu().numpy(), "pretrain_wall_s": wall})
    weights = {"weights": [w.detach().cpu() for w in base.weights], "biases": [b.detach().cpu() for b in base.biases]}
    store.write_marked(d, {"weights.pt": lambda p: torch.save(weights, p),
                           "pretrain.csv": lambda p: pre.to_csv(p, index=False)}, plan.pretrain_config)
    print(f"pretrained {len(plan.seeds)} seeds on {bundle.name} 0-4: test acc median "
          f"{100 * pre['pretrain_test_acc'].median():.2f}% ({wall:.1f}s)", flush=True)
    return base, pre


def _line(label, acc, trainable, note):
    print(f"{label:24s} acc median {100 * float(pd.Series(acc).median()):6.2f}%  trainable {trainable:g}  {note}",
          flush=True)


def run_table(plan: Plan, cfg: TrainConfig, device, dtype, bundle, *, batch_p: bool = True) -> pd.DataFrame:
    """Pretrain, fine-tune every configuration not finished yet, write the table; returns it."""
    jobs = list(plan.jobs)
    finished = store.finished_dirs(plan.out)  # a configuration finished anywhere under OUT is reused
    where = {j.hash: finished.get(j.hash, j.dir) for j in jobs}
    todo = [j for j in jobs if j.hash not in finished]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} configurations already finished in {plan.out}; "
              f"running the other {len(todo)}", flush=True)
    base, pre = _pretrained(plan, bundle, cfg, dtype, device)
    for j in jobs:
        if j not in todo:
            done = store.read_table(where[j.hash])
            _line(j.spec.label, done["test_acc"], done["trainable_params"].iloc[0], "(finished earlier)")
    seeds = torch.tensor(plan.seeds, dtype=torch.int64, device=device)
    # the batched Bernoulli-LoRA p sweep first (one batch), then the other methods
    sweep = [j for j in todo if j.spec.family == "bernoulli_lora" and batch_p]
    batches = ([sweep] if sweep else []) + [[j] for j in todo if j not in sweep]
    for batch in batches:
        t0 = time.perf_counter()
        if len(batch) == 1:
            results = [finetune(base, bundle.finetune, batch[0].spec, seeds, cfg)]
        else:
            results = finetune_sweep(base, bundle.finetune, [j.spec for j in batch], seeds, cfg)
        sync(device)
        batch_wall = time.perf_counter() - t0
        for job, res in zip(batch, results):
            df = job_rows(job, res, batch_wall=batch_wall, n_configs=len(batch), cfg=cfg, device=device,
                          dtype=dtype, data=bundle.name, pre=pre, dims=base.dims)
            store.write_table(job.dir, df, job.config)
            _line(job.spec.label, df["test_acc"], df["trainable_params"].iloc[0], f"{df['wall_s'].iloc[0]:.1f}s")
    df = pd.concat([store.read_table(where[j.hash]) for j in jobs], ignore_index=True)
    store.write_table(plan.out, df, plan.config, hashes=[j.hash for j in jobs],
                      extra={"pretrain.csv": lambda p: pre.to_csv(p, index=False), **report_files(df)})
    return df


def job_rows(job: Job, res: dict, *, batch_wall, n_configs, cfg, device, dtype, data, pre, dims) -> pd.DataFrame:
    """One row per seed of a configuration; wall_s is its share of the batch's wall time."""
    spec = job.spec
    expected, most = mt.trainable_params(spec, dims, cfg.rank)
    acc = res["test_acc"].cpu().numpy()
    S = len(acc)
    return pd.DataFrame({
        "method": spec.name, "p": spec.p if spec.p is not None else float("nan"), "rank": cfg.rank,
        "seed": pre["seed"].to_numpy().astype("int64"), "test_acc": acc.astype(float),
        "val_acc": res["val_acc"].cpu().numpy().astype(float),
        "trainable_params": expected, "trainable_params_max": most,
        "opt_state_bytes": int(res["opt_state_bytes"]), "wall_s": batch_wall / n_configs, "batch_wall_s": batch_wall,
        "batched_runs": S * n_configs, "batch_size": cfg.batch_size,
        "steps_per_epoch": 0 if cfg.steps_per_epoch is None else cfg.steps_per_epoch,
        "device": str(device), "data": data, "switch": cfg.switch, "switch_every": cfg.switch_every,
        "optimizer": cfg.optimizer, "epochs": cfg.epochs, "lr": cfg.lr, "alpha": cfg.alpha,
        "opt_state": cfg.opt_state, "resample_frozen": spec.resample_frozen, "rezero_trained": spec.rezero_trained,
        "diverged": res["diverged"].cpu().numpy().astype(bool),
        "pretrain_test_acc": pre["pretrain_test_acc"].to_numpy().astype(float),
        "dtype": str(dtype).replace("torch.", ""), "config_hash": job.hash,
    })
