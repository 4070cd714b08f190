"""The transformer: a Llama built from a config (``transformers``), pretrained here from scratch.

The model is ``transformers.LlamaForCausalLM`` with a small :class:`ModelConfig`; its
initial weights come from ``torch.manual_seed(init_seed)`` (``transformers`` draws them
from torch's global generator). LoRA / GaLore / Bernoulli-LoRA act on the seven
projections of every decoder layer (:data:`TARGETS`, as in PEFT's Llama recipes).

Losses and accuracies are next-token cross-entropy and argmax accuracy over the targets
at positions ``t >= 2`` (:data:`.data.FIRST_TARGET`), averaged over tokens.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

from solvers import rng

from .data import FIRST_TARGET

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here; nothing is fetched
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    init_seed: int = 0

    def check(self) -> None:
        for name in ("hidden", "layers", "heads", "intermediate"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"heads: {self.heads} does not divide hidden {self.hidden}")


def build(cfg: ModelConfig, *, vocab: int, seq_len: int, device=None) -> nn.Module:
    """A freshly initialised ``LlamaForCausalLM`` (float32) on ``device``."""
    import transformers

    cfg.check()
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                                      num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                      num_key_value_heads=cfg.heads, max_position_embeddings=seq_len,
                                      tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(cfg.init_seed)
    return transformers.LlamaForCausalLM(config).to(device)


def target_modules(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every target projection, in ``named_modules`` order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS]


def token_losses(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, accuracy) of next-token prediction on ``x`` (N, T), targets t >= 2."""
    logits = model(input_ids=x).logits[:, FIRST_TARGET - 1:-1]
    y = x[:, FIRST_TARGET:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    acc = (logits.argmax(-1) == y).float().mean()
    return loss, acc


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, *, batch: int = 256) -> dict[str, float]:
    """Held-out loss and accuracy (token-weighted over batches), model in eval mode."""
    was = model.training
    model.eval()
    tot_l = tot_a = 0.0
    for i in range(0, x.shape[0], batch):
        l, a = token_losses(model, x[i:i + batch])
        n = x[i:i + batch].shape[0]
        tot_l += float(l) * n
        tot_a += float(a) * n
    model.train(was)
    return {"loss": tot_l / x.shape[0], "acc": tot_a / x.shape[0]}


class Batches:
    """Minibatch indices of a run, one permutation drawn per pass (cached)."""

    def __init__(self, seed: int, n: int, batch: int, *, sub: int, device=None):
        if batch > n:
            raise ValueError(f"batch_size: {batch} exceeds the training set ({n} sequences)")
        self.seed, self.n, self.batch, self.sub, self.device = seed, n, batch, sub, device
        self._pass, self._order = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        q, i = divmod(step, self.n // self.batch)
        if q != self._pass:
            self._order = rng.subset(torch.tensor([self.seed]), rng.Stream.MINIBATCH, q, self.n, self.n,
                                     sub=self.sub)[0].to(self.device)
            self._pass = q
        return self._order[i * self.batch:(i + 1) * self.batch]
