"""The batched adapter MLP: S independent copies (one per seed) in one set of tensors.

Architecture (the paper's MNIST model): ``in -> 64 -> 64 -> 5``, ReLU, dropout 0.1
after each hidden ReLU, log-softmax output (trained with NLL).

Shapes, with S the seed (run) axis and layer l mapping ``n_l -> m_l``:

=================  ===============  ==========================================
``weights[l]``     (S, m_l, n_l)    base weight W0 (pretrained, merged into)
``biases[l]``      (S, m_l)         base bias
``Adapters.B[l]``  (S, m_l, r)      LEFT factor (PEFT / loralib ``lora_B``)
``Adapters.A[l]``  (S, r, n_l)      RIGHT factor (``lora_A``), input side
=================  ===============  ==========================================

Effective weight ``W = W0 + (alpha / r) B @ A`` (``Adapters.scale = alpha / r``).
Inputs are ``(N, n_0)`` (shared by all seeds: evaluation) or ``(S, N, n_0)`` (each
seed its own minibatch: training). Seed s of the batched model computes exactly what
a model built from seed s alone computes (same kernels, float tolerance).

All randomness (initial weights, dropout masks) comes from :mod:`solvers.rng`, so it
is a pure function of the seed. Use :func:`state_dict` / :func:`from_state_dicts` to
exchange one seed's weights with ``torch.nn.Linear``-style modules (names
``layers.{l}.weight`` / ``layers.{l}.bias``; PEFT names ``lora_A`` / ``lora_B``).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from solvers import rng

HIDDEN = (64, 64)
N_CLASSES = 5
DROPOUT = 0.1
# sub-stream ids inside rng.Stream.INIT / rng.Stream.NOISE (documented, keep stable)
SUB_WEIGHT, SUB_BIAS = 0, 1


def layer_dims(in_dim: int, hidden=HIDDEN, n_classes: int = N_CLASSES) -> list[tuple[int, int]]:
    """[(m_l, n_l)] = (out, in) per layer."""
    sizes = (in_dim, *hidden, n_classes)
    return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]


@dataclasses.dataclass
class MLPParams:
    weights: list  # (S, m, n) per layer
    biases: list  # (S, m) per layer

    @property
    def n_seeds(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def dims(self) -> list[tuple[int, int]]:
        return [tuple(w.shape[1:]) for w in self.weights]

    def tensors(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def clone(self) -> "MLPParams":
        return MLPParams([w.detach().clone() for w in self.weights], [b.detach().clone() for b in self.biases])

    def select(self, index) -> "MLPParams":
        """Sub-batch of seeds (``index``: int list / tensor), e.g. one seed: ``[s]``."""
        return MLPParams([w[index] for w in self.weights], [b[index] for b in self.biases])

    def repeat(self, times: int) -> "MLPParams":
        """Tile along the seed axis (one shared pretrained model for S seeds)."""
        return MLPParams([w.repeat(times, 1, 1) for w in self.weights], [b.repeat(times, 1) for b in self.biases])


@dataclasses.dataclass
class Adapters:
    A: list  # (S, r, n) per layer, right factor
    B: list  # (S, m, r) per layer, left factor
    scale: float  # alpha / r

    @property
    def rank(self) -> int:
        return int(self.A[0].shape[1])

    def clone(self) -> "Adapters":
        return Adapters([a.detach().clone() for a in self.A], [b.detach().clone() for b in self.B], self.scale)

    def select(self, index) -> "Adapters":
        return Adapters([a[index] for a in self.A], [b[index] for b in self.B], self.scale)


def init_mlp(seeds, in_dim: int, *, hidden=HIDDEN, n_classes=N_CLASSES, dtype=torch.float32, device=None) -> MLPParams:
    """``torch.nn.Linear``'s default init, U(-1/sqrt(n), 1/sqrt(n)) for W and b, from rng.INIT."""
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device)
    weights, biases = [], []
    for layer, (m, n) in enumerate(layer_dims(in_dim, hidden, n_classes)):
        bound = 1.0 / math.sqrt(n)
        u = rng.uniform(seeds, rng.Stream.INIT, layer, (m, n), sub=SUB_WEIGHT)
        ub = rng.uniform(seeds, rng.Stream.INIT, layer, (m,), sub=SUB_BIAS)
        weights.append(((2 * u - 1) * bound).to(dtype))
        biases.append(((2 * ub - 1) * bound).to(dtype))
    return MLPParams(weights, biases)


def zero_adapters(params: MLPParams, rank: int, alpha: float = 1.0) -> Adapters:
    S, dev, dt = params.n_seeds, params.weights[0].device, params.weights[0].dtype
    A = [torch.zeros(S, rank, n, dtype=dt, device=dev) for (m, n) in params.dims]
    B = [torch.zeros(S, m, rank, dtype=dt, device=dev) for (m, n) in params.dims]
    return Adapters(A, B, alpha / rank)


def _linear(x, w, b):
    """x (N, n) or (S, N, n); w (S, m, n); b (S, m) -> (S, N, m)."""
    if x.ndim == 2:
        return torch.matmul(x, w.transpose(-1, -2)) + b[:, None, :]
    return torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))


def forward(params: MLPParams, x: torch.Tensor, *, adapters: Adapters | None = None, masks=None) -> torch.Tensor:
    """Log-probabilities (S, N, C). ``masks``: dropout masks (training) or None (eval).

    The adapter path is computed in factored form, ``((x A^T) B^T) * scale``:
    O(N r (m + n)) extra work, never the m x n product.
    """
    h = x
    n_layers = len(params.weights)
    for layer in range(n_layers):
        out = _linear(h, params.weights[layer], params.biases[layer])
        if adapters is not None:
            low = torch.matmul(h, adapters.A[layer].transpose(-1, -2))  # (S, N, r)
            out = torch.baddbmm(out, low, adapters.B[layer].transpose(1, 2), alpha=adapters.scale)
        if layer < n_layers - 1:
            out = torch.relu(out)
            if masks is not None:
                out = out * masks[layer]
        h = out
    return F.log_softmax(h, dim=-1)


def nll_per_seed(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean NLL per seed, (S,). ``y``: (N,) shared or (S, N) per seed."""
    if y.ndim == 1:
        y = y.expand(logp.shape[0], -1)
    return -torch.gather(logp, 2, y[..., None]).squeeze(-1).mean(dim=1)


def accuracy_per_seed(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logp.argmax(dim=-1) == y).to(logp.dtype).mean(dim=1)


def merge(params: MLPParams, adapters: Adapters) -> MLPParams:
    """Base weights with the adapters folded in: W0 + scale * B @ A (biases unchanged)."""
    weights = [w + adapters.scale * torch.bmm(b, a) for w, a, b in zip(params.weights, adapters.A, adapters.B)]
    return MLPParams(weights, list(params.biases))


def state_dict(params: MLPParams, seed_index: int, adapters: Adapters | None = None) -> dict:
    """One seed's tensors with ``nn.Linear``-style names (and PEFT-style adapter names)."""
    out = {}
    for l, (w, b) in enumerate(zip(params.weights, params.biases)):
        out[f"layers.{l}.weight"] = w[seed_index].detach().clone()
        out[f"layers.{l}.bias"] = b[seed_index].detach().clone()
        if adapters is not None:
            out[f"layers.{l}.lora_A"] = adapters.A[l][seed_index].detach().clone()
            out[f"layers.{l}.lora_B"] = adapters.B[l][seed_index].detach().clone()
    return out


def from_state_dicts(dicts: list[dict]) -> MLPParams:
    """Inverse of :func:`state_dict` over seeds (adapter entries ignored)."""
    n_layers = sum(1 for k in dicts[0] if k.endswith(".weight"))
    weights = [torch.stack([d[f"layers.{l}.weight"] for d in dicts]) for l in range(n_layers)]
    biases = [torch.stack([d[f"layers.{l}.bias"] for d in dicts]) for l in range(n_layers)]
    return MLPParams(weights, biases)
