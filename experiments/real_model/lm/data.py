r"""A synthetic language made by the repository: an order-2 Markov chain over ``vocab`` tokens.

Pretraining task: the chain :math:`P(x_t \mid x_{t-2}, x_{t-1})`; every context
:math:`(a, b)` has ``successors`` possible next tokens (a random subset of the
vocabulary) with probabilities ``softmax(sharpness * z)``, ``z`` standard normal.
Shifted task (fine-tuning): the same chain with a fraction ``shift`` of the contexts
given fresh successors and probabilities; a model must keep what it knows of the
other contexts and learn the changed ones.

Everything is a pure function of ``data_seed`` through :mod:`solvers.rng`
(``Stream.DATA``; step 0: the chain, step 1: the shift; sequences of split ``i`` of a
task use step ``10 + i`` of the task's sub-stream). Sequences start with two uniform
tokens; losses and accuracies count the targets at positions ``t >= 2`` (where the
order-2 context is complete). :func:`oracle` gives the loss and accuracy of the true
chain on a split (the best any model can do), a reference for the table.
"""
from __future__ import annotations

import dataclasses

import torch

from solvers import rng

PRETRAIN, FINETUNE = "pretrain", "finetune"
SPLITS = ("train", "test")
#: first target position counted (the order-2 context is complete from there)
FIRST_TARGET = 2


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    vocab: int = 32
    successors: int = 4
    sharpness: float = 2.0
    shift: float = 0.5  # fraction of contexts whose successors change in the fine-tuning task
    seq_len: int = 64
    data_seed: int = 0
    pretrain_sequences: int = 16384
    finetune_sequences: int = 4096
    test_sequences: int = 1024

    def check(self) -> None:
        for name, value, low in (("vocab", self.vocab, 2), ("successors", self.successors, 1),
                                 ("seq_len", self.seq_len, FIRST_TARGET + 2), ("pretrain_sequences", self.pretrain_sequences, 1),
                                 ("finetune_sequences", self.finetune_sequences, 1), ("test_sequences", self.test_sequences, 1)):
            if int(value) < low:
                raise ValueError(f"{name}: must be >= {low}, got {value}")
        if self.successors > self.vocab:
            raise ValueError(f"successors: {self.successors} exceeds vocab {self.vocab}")
        if not 0.0 <= self.shift <= 1.0:
            raise ValueError(f"shift: must lie in [0, 1], got {self.shift}")
        if not self.sharpness >= 0:
            raise ValueError(f"sharpness: must be >= 0, got {self.sharpness}")


def _chain(cfg: LanguageConfig, step: int) -> torch.Tensor:
    """Transition table (V, V, V) float64: [a, b, :] is P(. | a, b); step picks the draw."""
    V, K = cfg.vocab, cfg.successors
    seed = torch.tensor([cfg.data_seed])
    keys = rng.random_bits(seed, rng.Stream.DATA, step, (V * V, V), sub=0)[0]
    succ = torch.argsort(keys, dim=1, stable=True)[:, :K]
    z = rng.normal(seed, rng.Stream.DATA, step, (V * V, K), sub=1)[0]
    probs = torch.zeros(V * V, V, dtype=torch.float64)
    probs.scatter_(1, succ, torch.softmax(cfg.sharpness * z, dim=1))
    return probs.reshape(V, V, V)


def chains(cfg: LanguageConfig) -> dict[str, torch.Tensor]:
    """{'pretrain': P, 'finetune': P with a fraction ``shift`` of contexts redrawn}."""
    base, fresh = _chain(cfg, 0), _chain(cfg, 1)
    V = cfg.vocab
    n_shift = int(round(cfg.shift * V * V))
    changed = torch.zeros(V * V, dtype=torch.bool)
    if n_shift:
        changed[rng.subset(torch.tensor([cfg.data_seed]), rng.Stream.DATA, 2, V * V, n_shift)[0]] = True
    shifted = torch.where(changed.reshape(V, V, 1), fresh, base)
    return {PRETRAIN: base, FINETUNE: shifted}


def sample(P: torch.Tensor, n: int, seq_len: int, *, seed: int, step: int, sub: int) -> torch.Tensor:
    """``n`` sequences (n, seq_len) int64 from the chain ``P`` (inverse-CDF sampling)."""
    V = P.shape[0]
    s = torch.tensor([seed])
    u = rng.uniform(s, rng.Stream.DATA, step, (n, seq_len), sub=sub)[0]
    x = torch.empty(n, seq_len, dtype=torch.int64)
    x[:, :FIRST_TARGET] = torch.clamp((u[:, :FIRST_TARGET] * V).long(), max=V - 1)
    cdf = P.cumsum(dim=-1)
    for t in range(FIRST_TARGET, seq_len):
        row = cdf[x[:, t - 2], x[:, t - 1]]  # (n, V)
        x[:, t] = torch.clamp(torch.searchsorted(row, u[:, t:t + 1].contiguous()).squeeze(1), max=V - 1)
    return x


@dataclasses.dataclass
class Task:
    name: str
    chain: torch.Tensor  # (V, V, V) float64
    train: torch.Tensor  # (N, T) int64
    test: torch.Tensor


def make_tasks(cfg: LanguageConfig, device=None, *, only: tuple = (PRETRAIN, FINETUNE)) -> dict[str, Task]:
    """The tasks named in ``only`` with their splits, on ``device`` (a task's sequences do not
    depend on which other tasks are made)."""
    cfg.check()
    out = {}
    for sub, (name, P) in enumerate(chains(cfg).items()):
        if name not in only:
            continue
        n_train = cfg.pretrain_sequences if name == PRETRAIN else cfg.finetune_sequences
        train = sample(P, n_train, cfg.seq_len, seed=cfg.data_seed, step=10, sub=10 + sub)
        test = sample(P, cfg.test_sequences, cfg.seq_len, seed=cfg.data_seed, step=11, sub=10 + sub)
        out[name] = Task(name, P, train.to(device), test.to(device))
    return out


def oracle(task: Task, split: str = "test") -> dict[str, float]:
    """Loss and accuracy of the true chain on a split (targets t >= 2)."""
    x = getattr(task, split).cpu()
    P = task.chain
    probs = P[x[:, :-2], x[:, 1:-1]]  # (N, T-2, V) for targets x[:, 2:]
    y = x[:, FIRST_TARGET:]
    p_true = torch.gather(probs, 2, y[..., None]).squeeze(-1)
    return {"loss": float(-torch.log(p_true).mean()), "acc": float((probs.argmax(-1) == y).double().mean())}
