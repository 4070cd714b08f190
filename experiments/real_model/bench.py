"""``--bench``: milliseconds per training step (all seeds batched) and AdamW state bytes."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from resultstore import files

from . import methods as mt
from .model import init_mlp
from .train import Run, TrainConfig, epoch_order, sync


def interleaved_ms(advance, n_methods: int, *, reps: int, steps: int, device) -> list[list[float]]:
    """Milliseconds per step of each of ``n_methods`` methods: ``reps`` repetitions,
    interleaved in a rotating order (repetition k starts with method k mod M, so slow drifts
    of the machine hit every method alike), each ``advance(k, steps)`` timed between two
    device syncs. Returns one list of ``reps`` values per method."""
    times = [[] for _ in range(n_methods)]
    for rep in range(reps):
        for j in range(n_methods):
            k = (rep + j) % n_methods
            sync(device)
            t0 = time.perf_counter()
            advance(k, steps)
            sync(device)
            times[k].append(1e3 * (time.perf_counter() - t0) / steps)
    return times


def bench(*, seeds: torch.Tensor, p: float, steps: int, cfg: TrainConfig, device, dtype, bundle, out: Path,
          reps: int = 5) -> dict:
    """Time ``steps`` training steps of FPFT, LoRA (A Gaussian) and Bernoulli-LoRA(p) after
    10 warm-up steps, on fresh (not pretrained) MNIST-shaped models; write ``out/bench.json``.

    The methods are timed ``reps`` times, interleaved in a rotating order (repetition k
    starts with method k mod 3), so slow drifts of the machine hit every method alike;
    ``ms_per_step`` is the median over repetitions, with the range, and the ratio of
    Bernoulli-LoRA's step to LoRA's is given per repetition (median and range): one run,
    several repetitions, the spread reported."""
    S = int(seeds.shape[0])
    base = init_mlp(seeds, bundle.in_dim, dtype=dtype, device=device)
    specs = [mt.MethodSpec("fpft"), mt.MethodSpec("lora_a"), mt.MethodSpec("bernoulli_lora", p)]
    train = bundle.finetune.train
    order = epoch_order(seeds, 0, len(train), 8)
    b = min(cfg.batch_size, len(train))
    n_batches = max(1, len(train) // b)
    result = {"device": str(device), "data": bundle.name, "seeds": S, "rank": cfg.rank, "batch_size": b,
              "switch": cfg.switch, "dtype": str(dtype).replace("torch.", ""), "steps": steps, "reps": reps,
              "methods": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    runs, done = [], [0] * len(specs)

    def advance(k, n):
        for _ in range(n):
            i = done[k] % n_batches
            runs[k].train_step(order[:, i * b:(i + 1) * b])
            done[k] += 1

    for k, spec in enumerate(specs):
        runs.append(Run(base, seeds, cfg, train, spec=spec, optimizer="adamw"))
        advance(k, 10)  # warm-up
    times = interleaved_ms(advance, len(specs), reps=reps, steps=steps, device=device)
    for k, spec in enumerate(specs):
        ms = sorted(times[k])
        med = statistics.median(ms)
        expected, most = mt.trainable_params(spec, base.dims, cfg.rank)
        result["methods"][spec.label] = {
            "ms_per_step": med, "ms_per_step_min": ms[0], "ms_per_step_max": ms[-1],
            "ms_per_step_reps": times[k], "ms_per_step_per_seed": med / S,
            "trainable_params": expected, "trainable_params_max": most,
            "adamw_state_bytes_per_seed": runs[k].opt.state_bytes() // S,
            "adamw_state_bytes_min_per_seed": 2 * most * torch.finfo(dtype).bits // 8,
        }
        print(f"{spec.label:24s} {med:8.3f} ms/step [{ms[0]:.3f}, {ms[-1]:.3f}] ({S} seeds, {reps} reps)  AdamW state "
              f"{runs[k].opt.state_bytes() // S} B/seed", flush=True)
    ratios = sorted(bl / lo for bl, lo in zip(times[2], times[1]))
    result["bernoulli_over_lora"] = {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1],
                                     "per_rep": [bl / lo for bl, lo in zip(times[2], times[1])]}
    print(f"Bernoulli-LoRA / LoRA step time: median {statistics.median(ratios):.3f} "
          f"[{ratios[0]:.3f}, {ratios[-1]:.3f}] over {reps} interleaved repetitions", flush=True)
    files.atomic_write(out / "bench.json", files.text_writer(json.dumps(result, indent=2)))
    return result
