"""Pretraining and one fine-tuning run of the transformer section (plain loops, AdamW).

Pretraining: ``PretrainConfig.steps`` AdamW steps on the pretraining task, linear
warm-up then constant learning rate, minibatches from :class:`.model.Batches`
(seed ``init_seed``, sub-stream :data:`PRETRAIN_SUB`). Fine-tuning: one method, one
seed, ``FinetuneConfig.steps`` steps on the shifted task (sub-stream
:data:`FINETUNE_SUB`); the seed drives the minibatch order, the coins and the
Gaussian draws, so a run's numbers depend only on its seed and configuration.

Timing (:func:`finetune`): the device is synchronised (``torch.cuda.synchronize``)
after :data:`WARMUP_STEPS` steps and after the last; ``ms_per_step`` is the time in
between over the steps in between (hooks, merges and switches included).
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from solvers.torch_optim import state_bytes

from .. import methods as mt
from ..train import sync
from .data import Task
from .methods import FinetuneConfig, setup, trainable_params
from .model import Batches, ModelConfig, build, evaluate, token_losses

PRETRAIN_SUB, FINETUNE_SUB = 0, 8
WARMUP_STEPS = 10


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01

    def check(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup", 0)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"pretrain_{name}: must be >= {low}, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"pretrain_lr: must be a positive number, got {self.lr}")


def _step(model, opt, x) -> torch.Tensor:
    loss, _ = token_losses(model, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def pretrain(mcfg: ModelConfig, pcfg: PretrainConfig, task: Task, *, vocab: int, device) -> tuple[dict, dict]:
    """(state_dict of the pretrained model on the CPU, metrics on the pretraining task)."""
    model = build(mcfg, vocab=vocab, seq_len=task.train.shape[1], device=device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / max(1, pcfg.warmup)))
    batches = Batches(mcfg.init_seed, task.train.shape[0], pcfg.batch_size, sub=PRETRAIN_SUB, device=device)
    sync(torch.device(device))
    t0 = time.perf_counter()
    for t in range(pcfg.steps):
        _step(model, opt, task.train[batches(t)])
        sched.step()
    sync(torch.device(device))
    wall = time.perf_counter() - t0
    metrics = {f"test_{k}": v for k, v in evaluate(model, task.test).items()}
    metrics.update(train_seconds=wall, ms_per_step=1e3 * wall / pcfg.steps)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, metrics


def load_base(state: dict, mcfg: ModelConfig, *, vocab: int, seq_len: int, device) -> torch.nn.Module:
    model = build(mcfg, vocab=vocab, seq_len=seq_len, device=device)
    model.load_state_dict(state)
    model.train()
    return model


def prepare(spec: mt.MethodSpec, state: dict, mcfg: ModelConfig, cfg: FinetuneConfig, task: Task, *, vocab: int,
            seed: int, device):
    """(Setup, Batches) of one run, before its first step."""
    base = load_base(state, mcfg, vocab=vocab, seq_len=task.train.shape[1], device=device)
    run = setup(spec, base, cfg, seed)
    return run, Batches(seed, task.train.shape[0], cfg.batch_size, sub=FINETUNE_SUB, device=device)


def advance(run, batches: Batches, task: Task, start: int, n: int, *, every: int | None = None,
            peak: list | None = None) -> torch.Tensor:
    """Optimiser steps ``start + 1 .. start + n`` of a run (hook after each); last loss.

    With ``every`` and ``peak`` (a one-element list), the optimiser state's bytes are
    measured after the last step of every round (before the hook's merge / reset) and
    at the last step, and ``peak[0]`` keeps the largest."""
    loss = None
    for t in range(start + 1, start + n + 1):
        loss = _step(run.model, run.optimizer, task.train[batches(t - 1)])
        if peak is not None and (t % every == 0 or t == start + n):
            peak[0] = max(peak[0], state_bytes(run.optimizer))
        if run.after_step is not None:
            run.after_step(t, run.optimizer)
    return loss


def finetune(spec: mt.MethodSpec, state: dict, mcfg: ModelConfig, cfg: FinetuneConfig, task: Task, *, vocab: int,
             seed: int, device) -> dict:
    """One fine-tuning run; its row (metrics, counts, bytes, timing) as a dict."""
    device = torch.device(device)
    run, batches = prepare(spec, state, mcfg, cfg, task, vocab=vocab, seed=seed, device=device)
    warm = min(WARMUP_STEPS, cfg.steps - 1)
    peak = [0]
    advance(run, batches, task, 0, warm, every=cfg.every, peak=peak)
    sync(device)
    t0 = time.perf_counter()
    last = advance(run, batches, task, warm, cfg.steps - warm, every=cfg.every, peak=peak)
    sync(device)
    wall = time.perf_counter() - t0
    expected, most = trainable_params(spec, run, cfg.rank)
    row = {"method": spec.name, "p": spec.p, "label": spec.label, "seed": int(seed),
           "test_loss": None, "test_acc": None, "train_loss_last": float(last),
           "trainable_params": expected, "trainable_params_max": most,
           "trainable_now": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
           "opt_state_bytes": peak[0], "adapter_bytes": run.adapter_bytes,
           "ms_per_step": 1e3 * wall / (cfg.steps - warm), "timed_steps": cfg.steps - warm,
           "diverged": not math.isfinite(float(last))}
    ev = evaluate(run.model, task.test)
    row["test_loss"], row["test_acc"] = ev["loss"], ev["acc"]
    if run.galore is not None:
        row["galore_impl"] = run.galore
    return row
