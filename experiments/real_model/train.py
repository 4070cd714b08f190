"""Batched training: pretraining (digits 0-4) and fine-tuning (5-9) of S seeds at once.

Everything is a tensor with a leading seed axis and every per-seed decision
(minibatch order, dropout, coin, sketch, learning-rate reduction, early stopping) is
taken on the device with ``torch.where``: no Python branch depends on a value, so a
CUDA run has no host synchronisation inside an epoch, and seed s of a batch of S
computes what seed s alone computes.

Optimisers (:mod:`.optim`) are functional and elementwise, hence exactly per seed:
AdamW and SGD masked per (seed, tensor), and ReduceLROnPlateau per seed, stepped on
the validation loss after every epoch.

Optimiser state across merges: ``opt_state='keep'`` (default, like the authors'
Lightning code, whose optimiser lives through the merges) keeps the moments of each
factor; ``'reset'`` zeroes them at every merge.

Pretraining: AdamW, up to ``pretrain_epochs`` epochs, early stopping per seed on the
validation loss (patience ``pretrain_patience``, stopped seeds are masked out of the
updates) and the best-validation weights are kept. One pretrained model per seed (the
pretraining seed is the fine-tuning seed), so runs of different seeds share nothing.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch

from solvers import rng

from . import methods as mt
from .data import Split, Task
from .model import DROPOUT, MLPParams, accuracy_per_seed, forward, init_mlp, nll_per_seed
from .optim import SGD, AdamW, Plateau, flat_views

# sub-streams of rng.Stream.MINIBATCH / rng.Stream.NOISE per phase
PRETRAIN_SUB, FINETUNE_SUB = 0, 8
#: most random numbers drawn at once for dropout masks on CPU (see Run._dropout)
MASK_CHUNK_ELEMENTS = 2**19


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 50
    pretrain_epochs: int = 50
    pretrain_patience: int = 10
    batch_size: int = 128
    lr: float = 2e-4
    pretrain_lr: float = 2e-4
    optimizer: str = "adamw"  # adamw | sgd (fine-tuning; pretraining always AdamW)
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    plateau_patience: int = 10
    plateau_factor: float = 0.1
    rank: int = 1
    alpha: float = 1.0
    init_std: float = 1.0  # std of the random (Gaussian) factor, 1 in the authors' code
    switch: str = "epoch"  # epoch | step: when merging methods merge
    switch_every: int = 1  # merge every k epochs / k steps
    opt_state: str = "keep"  # keep | reset optimiser moments at merges
    dropout: float = DROPOUT  # after each hidden ReLU (Run._dropout draws the masks)
    steps_per_epoch: int | None = None  # None: one pass over the data; else K steps cycling through passes
    # batch_size above a training set's size means the whole set (full batch), see Run.batch
    mask_block: int = 8  # dropout masks are drawn for this many steps at once (fewer kernel launches)


def sync(device) -> None:
    """Wait for the device's queued kernels (so wall-clock timings are honest on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_order(seeds, epoch: int, n: int, sub: int) -> torch.Tensor:
    """Per-seed random permutation of range(n) for this epoch, (S, n)."""
    return rng.subset(seeds, rng.Stream.MINIBATCH, epoch, n, n, sub=sub)


def evaluate(params: MLPParams, split: Split, adapters=None):
    """(mean NLL (S,), accuracy (S,)) in eval mode (no dropout)."""
    with torch.no_grad():
        logp = forward(params, split.x, adapters=adapters)
        return nll_per_seed(logp, split.y), accuracy_per_seed(logp, split.y)


class Run:
    """One batched training run: params (+ adapters), optimiser, per-seed state."""

    def __init__(self, params: MLPParams, seeds: torch.Tensor, cfg: TrainConfig, train: Split, *,
                 spec: mt.MethodSpec | None = None, sub: int = FINETUNE_SUB, lr: float | None = None,
                 optimizer: str | None = None, p: torch.Tensor | None = None):
        self.cfg, self.spec, self.seeds, self.train, self.sub = cfg, spec, seeds, train, sub
        # a minibatch cannot hold more than the whole set: cap (same numbers as batch_size = len(train))
        self.batch = min(cfg.batch_size, len(train))
        self.p = p  # per-run Bernoulli probability (batched p sweep), else spec.p
        self._order, self._start, self._pass = None, 0, 0
        self._mask_block, self._masks_cache = -1, None
        self.params = params.clone()
        self.S = params.n_seeds
        self.dtype = params.weights[0].dtype
        self.step_count = 0
        self.round = 0
        self.adapters, self.roles = None, None
        self.diverged = torch.zeros(self.S, dtype=torch.bool, device=seeds.device)
        if spec is None or not spec.uses_adapters:
            tensors, kinds = self.params.tensors(), [None] * (2 * len(self.params.weights))
        else:
            self.adapters, self.roles = mt.start_round(spec, seeds, 0, self.params, cfg.rank, alpha=cfg.alpha,
                                                       std=cfg.init_std, p=p)
            train_a, train_b = spec.may_train(None if p is None else p.tolist())
            kinds = [k for _ in self.params.weights for k, on in (("A", train_a), ("B", train_b)) if on]
            tensors = [t for a, b in zip(self.adapters.A, self.adapters.B) for t, on in ((a, train_a), (b, train_b)) if on]
        # trainable tensors become views of one flat buffer (the optimiser's parameter)
        self.flat, self.leaves, sizes = flat_views(tensors, self.S)
        views = iter(self.leaves)
        if self.adapters is None:  # tensors() order is W0, b0, W1, b1, ...
            self.params = MLPParams(self.leaves[0::2], self.leaves[1::2])
        else:
            for l in range(len(self.params.weights)):
                if train_a:
                    self.adapters.A[l] = next(views)
                if train_b:
                    self.adapters.B[l] = next(views)
        self._kinds = kinds
        for x in self.leaves:
            x.requires_grad_(True)
        opt_cls = {"adamw": AdamW, "sgd": SGD}[cfg.optimizer if optimizer is None else optimizer]
        self.opt = opt_cls(self.flat, sizes, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.lr = torch.full((self.S,), cfg.lr if lr is None else lr, dtype=self.dtype, device=seeds.device)
        self.active = None  # (S,) bool: seeds still training (early stopping), None = all

    @property
    def active(self):
        return self._seed_active

    @active.setter
    def active(self, value):
        self._seed_active, self._active_cache = value, None

    def _active(self):
        """(S, L) bool: which trainable tensors of which seeds step now (None: all)."""
        if self._active_cache is not None:
            return self._active_cache[0]
        cols = []
        for kind in self._kinds:
            m = None
            if kind is not None and not self.spec.trains_both:
                m = self.roles.train_A if kind == "A" else self.roles.train_B
            if self.active is not None:
                m = self.active if m is None else (m & self.active)
            cols.append(m)
        out = None if all(c is None for c in cols) else torch.stack(
            [torch.ones(self.S, dtype=torch.bool, device=self.seeds.device) if c is None else c for c in cols], dim=1)
        self._active_cache = (out,)
        return out

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the per-seed minibatch ``idx`` (S, b); returns the losses (S,)."""
        xb, yb = self.train.x[idx], self.train.y[idx]
        masks = self._dropout(idx.shape[1]) if self.cfg.dropout > 0 else None
        logp = forward(self.params, xb, adapters=self.adapters, masks=masks)
        losses = nll_per_seed(logp, yb)
        grads = torch.autograd.grad(losses.sum(), self.leaves)
        grad = torch.cat([g.reshape(self.S, -1) for g in grads], dim=1)
        self.opt.update(self.flat, grad, self._active(), self.lr)
        self.diverged |= ~torch.isfinite(losses.detach())
        self.step_count += 1
        if self.spec is not None and self.spec.merges and self.cfg.switch == "step" \
                and self.step_count % self.cfg.switch_every == 0:
            self.merge()
        return losses.detach()

    def _dropout(self, batch: int):
        """Inverted-dropout masks of this step, [(S, batch, h_l)].

        Drawn ``mask_block`` steps at a time: rng.random_bits (stream NOISE, step = block
        index, sub = phase) of shape (block, self.batch, sum h_l) per seed, into one buffer
        kept for the whole run. On CPU the seeds are drawn in chunks of at most
        :data:`MASK_CHUNK_ELEMENTS` numbers: the generator's int64 temporaries then stay
        small enough for the heap (whole-batch draws of 40 runs made ~400k page faults
        per block); every seed's bits depend on that seed only, so chunks change nothing.
        """
        block, j = divmod(self.step_count, self.cfg.mask_block)
        hidden = [m for m, _ in self.params.dims[:-1]]
        if block != self._mask_block:
            shape = (self.cfg.mask_block, self.batch, sum(hidden))
            if self._masks_cache is None:
                self._masks_cache = torch.empty((self.S,) + shape, dtype=self.dtype, device=self.seeds.device)
            per_seed = math.prod(shape)
            chunk = self.S if self.seeds.device.type != "cpu" else max(1, MASK_CHUNK_ELEMENTS // per_seed)
            keep = 1.0 - self.cfg.dropout
            for c in range(0, self.S, chunk):
                bits = rng.random_bits(self.seeds[c:c + chunk], rng.Stream.NOISE, block, shape, sub=self.sub)
                out = self._masks_cache[c:c + chunk]
                out.copy_(bits < int(keep * 2**32))  # 1.0 / 0.0, then / keep: (bits < t).to(dtype) / keep
                out.div_(keep)
            self._mask_block = block
        m = self._masks_cache[:, j, :batch]
        offsets = [sum(hidden[:i]) for i in range(len(hidden))]
        return [m[..., o:o + h] for o, h in zip(offsets, hidden)]

    def next_batch(self) -> torch.Tensor:
        """Indices (S, b) of the next minibatch: passes over the data in per-seed random
        order (pass q uses rng.Stream.MINIBATCH step q), the last batch of a pass partial."""
        n = len(self.train)
        if self._order is None or self._start >= n:
            if self._order is not None:
                self._pass += 1
            self._order, self._start = epoch_order(self.seeds, self._pass, n, self.sub), 0
        idx = self._order[:, self._start:self._start + self.batch]
        self._start += self.batch
        return idx

    def merge(self):
        """Fold scale * B A into W0 and start the next round (new coin, sketches, zeros)."""
        with torch.no_grad():
            for w, a, b in zip(self.params.weights, self.adapters.A, self.adapters.B):
                w.add_(torch.bmm(b, a), alpha=self.adapters.scale)
            self.round += 1
            self._active_cache = None
            new, self.roles = mt.start_round(self.spec, self.seeds, self.round, self.params, self.cfg.rank,
                                             alpha=self.cfg.alpha, std=self.cfg.init_std,
                                             previous=self.adapters.clone(), p=self.p)
            for old, fresh in zip(self.adapters.A + self.adapters.B, new.A + new.B):
                old.copy_(fresh)
            if self.cfg.opt_state == "reset":
                self.opt.reset()

    def epoch(self, e: int) -> torch.Tensor:
        """One epoch: a pass over the data (or ``steps_per_epoch`` steps); mean loss (S,)."""
        n, b = len(self.train), self.batch
        steps = -(-n // b) if self.cfg.steps_per_epoch is None else self.cfg.steps_per_epoch
        total = torch.zeros(self.S, dtype=self.dtype, device=self.seeds.device)
        seen = 0
        for _ in range(steps):
            idx = self.next_batch()
            total = total + self.train_step(idx) * idx.shape[1]
            seen += idx.shape[1]
        if self.spec is not None and self.spec.merges and self.cfg.switch == "epoch" \
                and (e + 1) % self.cfg.switch_every == 0:
            self.merge()
        return total / seen

    def evaluate(self, split: Split):
        return evaluate(self.params, split, self.adapters)


class EpochProgress:
    """A line on stderr at most every ``every_s`` seconds while epochs run (and none for
    runs shorter than that): long fine-tunings are never silent in a log."""

    def __init__(self, label: str, total: int, *, every_s: float = 10.0, stream=None):
        self.label, self.total, self.every_s = label, int(total), float(every_s)
        self.stream = sys.stderr if stream is None else stream
        self.t0 = self.last = time.perf_counter()

    def __call__(self, epoch: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            print(f"  {self.label}: epoch {epoch + 1}/{self.total} ({now - self.t0:.0f} s)", file=self.stream, flush=True)


def pretrain(task: Task, seeds: torch.Tensor, cfg: TrainConfig, *, dtype=torch.float32) -> tuple[MLPParams, dict]:
    """Per-seed pretraining with early stopping; returns the best-validation weights."""
    params = init_mlp(seeds, task.train.x.shape[1], dtype=dtype, device=seeds.device)
    run = Run(params, seeds, cfg, task.train, spec=None, sub=PRETRAIN_SUB, lr=cfg.pretrain_lr, optimizer="adamw")
    best = run.params.clone()
    best_loss = torch.full((run.S,), math.inf, dtype=dtype, device=seeds.device)
    wait = torch.zeros(run.S, dtype=torch.int64, device=seeds.device)
    run.active = torch.ones(run.S, dtype=torch.bool, device=seeds.device)
    epochs_run = torch.zeros(run.S, dtype=torch.int64, device=seeds.device)
    progress = EpochProgress("pretraining", cfg.pretrain_epochs)
    for e in range(cfg.pretrain_epochs):
        run.epoch(e)
        progress(e)
        epochs_run += run.active.long()
        val_loss, _ = run.evaluate(task.val)
        improved = (val_loss < best_loss) & run.active
        best_loss = torch.where(improved, val_loss, best_loss)
        for dst, src in zip(best.tensors(), run.params.tensors()):
            dst.copy_(torch.where(improved.view((-1,) + (1,) * (src.ndim - 1)), src.detach(), dst))
        wait = torch.where(improved, torch.zeros_like(wait), wait + 1)
        run.active = run.active & (wait < cfg.pretrain_patience)
        if not bool(run.active.any()):  # one host sync per epoch
            break
    _, val_acc = evaluate(best, task.val)
    _, test_acc = evaluate(best, task.test)
    return best, {"val_loss": best_loss, "val_acc": val_acc, "test_acc": test_acc, "epochs": epochs_run}


def finetune(params: MLPParams, task: Task, spec: mt.MethodSpec, seeds: torch.Tensor, cfg: TrainConfig,
             p: torch.Tensor | None = None) -> dict:
    """Fine-tune S seeds with one method; per-seed results as (S,) tensors.

    ``p`` (S,): per-run Bernoulli probability, to run a p sweep as one batch (see
    :func:`finetune_sweep`)."""
    run = Run(params, seeds, cfg, task.train, spec=spec, sub=FINETUNE_SUB, p=p)
    plateau = Plateau(run.lr, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    progress = EpochProgress(f"fine-tuning {spec.name}" + ("" if p is None else " (p sweep)"), cfg.epochs)
    for e in range(cfg.epochs):
        run.epoch(e)
        progress(e)
        val_loss, _ = run.evaluate(task.val)
        plateau.step(torch.nan_to_num(val_loss, nan=math.inf))
        run.lr = plateau.lr
    val_loss, val_acc = run.evaluate(task.val)
    _, test_acc = run.evaluate(task.test)
    diverged = run.diverged | ~torch.isfinite(val_loss)
    test_acc = torch.where(diverged, torch.full_like(test_acc, math.nan), test_acc)
    return {"test_acc": test_acc, "val_acc": val_acc, "val_loss": val_loss, "diverged": diverged,
            "final_lr": run.lr, "opt_state_bytes": run.opt.state_bytes() // run.S, "run": run}


def finetune_sweep(params: MLPParams, task: Task, specs: list, seeds: torch.Tensor, cfg: TrainConfig) -> list[dict]:
    """Several Bernoulli-LoRA p values (same options) as ONE batch of len(specs) * S runs.

    Run (i, s) has seed ``seeds[s]`` and ``p = specs[i].p``; its numbers are those of
    ``finetune(params, task, specs[i], seeds, cfg)`` seed s (all draws depend on the
    seed only, the coin compares against the run's own p). Returns one result dict per spec.
    """
    P, S = len(specs), seeds.shape[0]
    assert all(s.family == "bernoulli_lora" and dataclasses.replace(s, p=None) == dataclasses.replace(specs[0], p=None)
               for s in specs), "finetune_sweep batches Bernoulli-LoRA specs that differ in p only"
    p = torch.tensor([s.p for s in specs], dtype=torch.float64, device=seeds.device).repeat_interleave(S)
    res = finetune(params.repeat(P), task, specs[0], seeds.repeat(P), cfg, p=p)
    out = []
    for i in range(P):
        part = {k: (v[i * S:(i + 1) * S] if torch.is_tensor(v) and v.ndim == 1 and v.shape[0] == P * S else v)
                for k, v in res.items()}
        out.append(part)
    return out
