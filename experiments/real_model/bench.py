"""``--bench``: milliseconds per training step (all seeds batched) and AdamW state bytes."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import methods as mt
from . import store
from .model import init_mlp
from .train import Run, TrainConfig, epoch_order, sync


def bench(*, seeds: torch.Tensor, p: float, steps: int, cfg: TrainConfig, device, dtype, bundle, out: Path) -> dict:
    """Time ``steps`` training steps of FPFT, LoRA (A Gaussian) and Bernoulli-LoRA(p) after
    10 warm-up steps, on fresh (not pretrained) MNIST-shaped models; write ``out/bench.json``."""
    S = int(seeds.shape[0])
    base = init_mlp(seeds, bundle.in_dim, dtype=dtype, device=device)
    specs = [mt.MethodSpec("fpft"), mt.MethodSpec("lora_a"), mt.MethodSpec("bernoulli_lora", p)]
    train = bundle.finetune.train
    order = epoch_order(seeds, 0, len(train), 8)
    b = min(cfg.batch_size, len(train))
    n_batches = max(1, len(train) // b)
    result = {"device": str(device), "data": bundle.name, "seeds": S, "rank": cfg.rank, "batch_size": b,
              "switch": cfg.switch, "dtype": str(dtype).replace("torch.", ""), "steps": steps, "methods": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for spec in specs:
        run = Run(base, seeds, cfg, train, spec=spec, optimizer="adamw")
        for i in range(10):  # warm-up
            run.train_step(order[:, (i % n_batches) * b:(i % n_batches + 1) * b])
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            run.train_step(order[:, (i % n_batches) * b:(i % n_batches + 1) * b])
        sync(device)
        dt = (time.perf_counter() - t0) / steps
        expected, most = mt.trainable_params(spec, base.dims, cfg.rank)
        result["methods"][spec.label] = {
            "ms_per_step": 1e3 * dt, "ms_per_step_per_seed": 1e3 * dt / S,
            "trainable_params": expected, "trainable_params_max": most,
            "adamw_state_bytes_per_seed": run.opt.state_bytes() // S,
            "adamw_state_bytes_min_per_seed": 2 * most * torch.finfo(dtype).bits // 8,
        }
        print(f"{spec.label:24s} {1e3 * dt:8.3f} ms/step ({S} seeds)  AdamW state "
              f"{run.opt.state_bytes() // S} B/seed", flush=True)
    store.atomic_write(out / "bench.json", store.text_writer(json.dumps(result, indent=2)))
    return result
