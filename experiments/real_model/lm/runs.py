"""Stages of the transformer experiment and everything they write (the store's contract).

Layout of ``OUT`` (every directory written by :func:`experiments.real_model.store.write_marked`:
atomic files, ``config.yaml``, the ``_COMPLETE`` marker last; a directory counts only
when :func:`~experiments.real_model.store.finished` with its expected hash)::

    pretrain-<hash12>/             weights.pt (state_dict), pretrain.json (metrics, oracle)
    jobs/<label>-s<seed>-<hash12>/ row.json: one fine-tuning run (method, p, seed)
    bench-<hash12>/                bench.json: interleaved step timing of every method
    results.csv, config.yaml, _COMPLETE   (stage ``collect``: every job finished)

A job's hash covers everything that changes its numbers (language, model, pretraining
and fine-tuning configurations, method, p, seed); the device and the number of workers
change no numbers and are recorded in the files, not hashed. A job is claimed
(:func:`~experiments.real_model.store.claim`) before it runs, so workers
(``shard=(i, n)``) and a rerun after a kill share the jobs without doing one twice;
running a stage again computes only what is missing.
"""
from __future__ import annotations

import dataclasses
import io
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from experiments.results import config_hash

from .. import methods as mt
from .. import store
from ..bench import interleaved_ms
from . import train as tr
from .data import FINETUNE, PRETRAIN, LanguageConfig, make_tasks, oracle
from .methods import FinetuneConfig
from .model import ModelConfig, evaluate

KIND = "transformer"
ROW_FILE = "row.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    out: Path
    lang: LanguageConfig
    model: ModelConfig
    pretrain: tr.PretrainConfig
    finetune: FinetuneConfig
    specs: tuple
    seeds: tuple

    def base_config(self) -> dict:
        return {"kind": KIND, "language": dataclasses.asdict(self.lang), "model": dataclasses.asdict(self.model),
                "pretrain": dataclasses.asdict(self.pretrain)}

    @property
    def pretrain_dir(self) -> Path:
        return self.out / f"pretrain-{config_hash(self.base_config())[:12]}"

    def job_config(self, spec: mt.MethodSpec, seed: int) -> dict:
        return dict(self.base_config(), finetune=dataclasses.asdict(self.finetune), method=spec.name, p=spec.p,
                    seed=int(seed))

    def jobs(self) -> list[tuple[mt.MethodSpec, int, dict, Path]]:
        """(spec, seed, config, directory) of every run, seeds inner (a shard gets every method)."""
        out = []
        for spec in self.specs:
            for seed in self.seeds:
                cfg = self.job_config(spec, seed)
                name = f"{spec.label.replace('(p=', '-p').rstrip(')')}-s{seed}-{config_hash(cfg)[:12]}"
                out.append((spec, seed, cfg, self.out / "jobs" / name))
        return out

    def bench_config(self, reps: int, steps: int, seed: int) -> dict:
        return dict(self.base_config(), finetune=dataclasses.asdict(self.finetune), bench_reps=reps,
                    bench_steps=steps, seed=seed, methods=[s.label for s in self.specs])

    def run_config(self) -> dict:
        return dict(self.base_config(), finetune=dataclasses.asdict(self.finetune),
                    methods=[s.label for s in self.specs], seeds=list(self.seeds))


def _torch_writer(obj):
    def write(tmp):
        torch.save(obj, tmp)
    return write


def _device_info(device) -> dict:
    d = torch.device(device)
    info = {"device": str(d), "torch": torch.__version__}
    if d.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(d)
    return info


def load_pretrained(plan: Plan) -> tuple[dict, dict]:
    d = plan.pretrain_dir
    if not store.finished(d, config_hash(plan.base_config())):
        raise FileNotFoundError(f"out: {d} is not a finished pretraining; run --stage pretrain first")
    return torch.load(d / "weights.pt", map_location="cpu"), json.loads((d / "pretrain.json").read_text())


def stage_pretrain(plan: Plan, device) -> dict:
    """Pretrain once (skipped when finished); metrics include the oracle and the start on the shifted task."""
    d = plan.pretrain_dir
    with store.claim(d, field="out"):
        if store.finished(d, config_hash(plan.base_config())):
            return load_pretrained(plan)[1]
        tasks = make_tasks(plan.lang, device=device)
        state, metrics = tr.pretrain(plan.model, plan.pretrain, tasks[PRETRAIN], vocab=plan.lang.vocab, device=device)
        base = tr.load_base(state, plan.model, vocab=plan.lang.vocab, seq_len=plan.lang.seq_len, device=device)
        metrics.update({f"shifted_start_{k}": v for k, v in evaluate(base, tasks[FINETUNE].test).items()})
        for name in (PRETRAIN, FINETUNE):
            metrics.update({f"oracle_{name}_{k}": v for k, v in oracle(tasks[name]).items()})
        metrics.update(_device_info(device))
        print(f"pretrained: {json.dumps(metrics)}", flush=True)
        store.write_marked(d, {"weights.pt": _torch_writer(state),
                               "pretrain.json": store.text_writer(json.dumps(metrics, indent=2))}, plan.base_config())
    return metrics


def stage_finetune(plan: Plan, device, *, shard=(0, 1), workers: int = 1, stop_at: float | None = None) -> int:
    """Run this shard's unfinished jobs (claimed one by one); returns how many it ran.

    ``stop_at`` (``time.time()`` seconds): no job starts after it (finished jobs are kept,
    running the stage again does the rest)."""
    state, _ = load_pretrained(plan)
    todo = [j for j in plan.jobs()[shard[0]::shard[1]] if not store.finished(j[3], config_hash(j[2]))]
    if not todo:
        return 0
    task = make_tasks(plan.lang, device=device, only=(FINETUNE,))[FINETUNE]
    ran = 0
    for i, (spec, seed, cfg, d) in enumerate(todo):
        if stop_at is not None and time.time() >= stop_at:
            print(f"finetune: time budget reached; {len(todo) - i} jobs of this shard left for a rerun", flush=True)
            break
        try:
            with store.claim(d, field="out"):
                if store.finished(d, config_hash(cfg)):
                    continue
                t0 = time.perf_counter()
                row = tr.finetune(spec, state, plan.model, plan.finetune, task, vocab=plan.lang.vocab, seed=seed,
                                  device=device)
                row.update(_device_info(device), workers=int(workers), wall_seconds=time.perf_counter() - t0)
                store.write_marked(d, {ROW_FILE: store.text_writer(json.dumps(row, indent=2))}, cfg)
                ran += 1
                print(f"{spec.label:28s} seed {seed:3d}: test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f} "
                      f"{row['ms_per_step']:.2f} ms/step", flush=True)
        except store.ClaimError:
            continue  # another worker holds it
    return ran


def stage_bench(plan: Plan, device, *, reps: int, steps: int, seed: int = 0) -> dict:
    """Step time of every method, one seed, ``reps`` interleaved repetitions of ``steps`` steps
    (repetition k starts with method k mod M), each timed between two device syncs;
    per repetition the ratio of each method's step time to LoRA's (``lora_a``)."""
    cfg = plan.bench_config(reps, steps, seed)
    d = plan.out / f"bench-{config_hash(cfg)[:12]}"
    with store.claim(d, field="out"):
        if store.finished(d, config_hash(cfg)):
            return json.loads((d / "bench.json").read_text())
        state, _ = load_pretrained(plan)
        task = make_tasks(plan.lang, device=device, only=(FINETUNE,))[FINETUNE]
        dev = torch.device(device)
        runs = [tr.prepare(s, state, plan.model, plan.finetune, task, vocab=plan.lang.vocab, seed=seed, device=dev)
                for s in plan.specs]
        done = [0] * len(runs)

        def advance(k, n):
            tr.advance(*runs[k], task, done[k], n)
            done[k] += n

        for k in range(len(runs)):  # warm-up
            advance(k, tr.WARMUP_STEPS)
        times = interleaved_ms(advance, len(runs), reps=reps, steps=steps, device=dev)
        labels = [s.label for s in plan.specs]
        lora = labels.index("lora_a") if "lora_a" in labels else None
        result = dict(_device_info(device), reps=reps, steps=steps, seed=seed, methods={})
        for k, label in enumerate(labels):
            ms = times[k]
            entry = {"ms_per_step": statistics.median(ms), "ms_per_step_min": min(ms), "ms_per_step_max": max(ms),
                     "ms_per_step_reps": ms}
            if lora is not None:
                ratios = [a / b for a, b in zip(ms, times[lora])]
                entry["over_lora"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                      "per_rep": ratios}
            result["methods"][label] = entry
            extra = f"  / LoRA {entry['over_lora']['median']:.3f} [{entry['over_lora']['min']:.3f}, " \
                    f"{entry['over_lora']['max']:.3f}]" if lora is not None else ""
            print(f"{label:28s} {entry['ms_per_step']:8.3f} ms/step [{min(ms):.3f}, {max(ms):.3f}]{extra}", flush=True)
        store.write_marked(d, {"bench.json": store.text_writer(json.dumps(result, indent=2))}, cfg)
    return result


def stage_collect(plan: Plan) -> pd.DataFrame | None:
    """results.csv of every job and the run's marker; None (nothing written) while jobs are missing."""
    rows, missing = [], 0
    for spec, seed, cfg, d in plan.jobs():
        if not store.finished(d, config_hash(cfg)):
            missing += 1
            continue
        rows.append(dict(json.loads((d / ROW_FILE).read_text()), config_hash=config_hash(cfg)))
    if missing:
        print(f"collect: {missing} of {len(plan.jobs())} jobs not finished; run --stage finetune again", flush=True)
        return None
    df = pd.DataFrame(rows)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    store.write_marked(plan.out, {"results.csv": store.text_writer(buf.getvalue())}, plan.run_config())
    return df
