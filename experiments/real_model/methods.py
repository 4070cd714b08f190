"""Fine-tuning methods as data: which factor is random, which is trained, when to merge.

Convention (PEFT / loralib): ``W = W0 + (alpha / r) B @ A``, ``B`` (m x r) LEFT factor
(output side), ``A`` (r x n) RIGHT factor (input side). A method's adapters live in
*rounds*: round 0 starts fine-tuning; methods that merge (COLA, RAC-LoRA,
Bernoulli-LoRA) fold ``scale * B A`` into ``W0`` at the end of a round and start the
next one. In every round one factor is the *random* side (Gaussian, std ``init_std``)
and the other the *zero* side (starts at 0, so a merge + restart preserves the
function):

==================  ===============  ================  ========  =========================
method              random side      trained           merges    rank-1 MNIST trainable
==================  ===============  ================  ========  =========================
fpft                (no adapters)    all W and b       no        54,725
lora_a / lora_b     A / B            A and B           no        1,045
cola_a / cola_b     A / B            A and B           yes       1,045
asymm_lora_a / _b   A / B (fixed)    the zero side     no        133 / 912
rac_lora_a / _b     A / B (fresh)    the zero side     yes       133 / 912
bernoulli_lora      B w.p. p else A  the zero side     yes       912 w.p. p, 133 w.p. 1-p
==================  ===============  ================  ========  =========================

Trainable counts (biases frozen for adapter methods): a rank-r adapter of layer
``n -> m`` has ``r n`` entries in A and ``r m`` in B; for ``784 -> 64 -> 64 -> 5``,
``sum n = 784 + 64 + 64 = 912`` and ``sum m = 64 + 64 + 5 = 133``, the paper's 912
(train A, B Gaussian) and 133 (train B, A Gaussian) at rank 1.

Bernoulli-LoRA: at the start of round k a coin ``c ~ Bernoulli(p)`` (rng.Stream.COIN,
step k) picks c = 1: "B sampled and frozen, A trained from zero" (left sketch,
``W <- W - gamma H_B G`` in the theory) or c = 0: "A sampled and frozen, B trained"
(right sketch). p = 1 is ``rac_lora_b`` and p = 0 is ``rac_lora_a`` draw for draw:
all random factors come from rng.Stream.SKETCH at step k (sub-stream ``2 l`` for A of
layer l, ``2 l + 1`` for B), so methods that share a side share its draws.

Merge options (``resample_frozen``, ``rezero_trained``, both True by default and in
the theory): with ``resample_frozen=False`` each side's random value is the round-0
draw, reused; with ``rezero_trained=False`` the zero side keeps its value from the
previous round instead of restarting at 0 (the function then changes at the merge,
since ``B A`` is in W0 and still in the adapter).
"""
from __future__ import annotations

import dataclasses

import torch

from solvers import rng

from .model import Adapters, MLPParams

FAMILIES = ("fpft", "lora", "cola", "asymm_lora", "rac_lora", "bernoulli_lora")
METHODS = ("fpft", "lora_a", "lora_b", "cola_a", "cola_b", "asymm_lora_a", "asymm_lora_b",
           "rac_lora_a", "rac_lora_b", "bernoulli_lora")
ALIASES = {
    "all": METHODS,
    "lora": ("lora_a", "lora_b"),
    "cola": ("cola_a", "cola_b"),
    "asymm_lora": ("asymm_lora_a", "asymm_lora_b"),
    "rac_lora": ("rac_lora_a", "rac_lora_b"),
}
PAPER_P = (0.01, 0.2, 0.4, 0.6, 0.8, 0.99)
DEFAULT_P = (0.0,) + PAPER_P + (1.0,)


class MethodError(ValueError):
    """Bad method specification; one line naming the field."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str  # one of METHODS
    p: float | None = None  # Bernoulli-LoRA only
    resample_frozen: bool = True
    rezero_trained: bool = True

    @property
    def family(self) -> str:
        return self.name[:-2] if self.name.endswith(("_a", "_b")) else self.name

    @property
    def random_side(self) -> str | None:
        """'A' or 'B' for fixed-side methods, None for fpft and bernoulli_lora."""
        return self.name[-1].upper() if self.name.endswith(("_a", "_b")) else None

    @property
    def merges(self) -> bool:
        return self.family in ("cola", "rac_lora", "bernoulli_lora")

    @property
    def uses_adapters(self) -> bool:
        return self.family != "fpft"

    @property
    def trains_both(self) -> bool:
        return self.family in ("lora", "cola")

    def may_train(self, ps=None) -> tuple[bool, bool]:
        """(A ever trained, B ever trained): which factors need optimiser state.

        ``ps``: the p values of a batched p sweep (default: this spec's p)."""
        if not self.uses_adapters:
            return (False, False)
        if self.trains_both:
            return (True, True)
        if self.family == "bernoulli_lora":
            ps = [self.p] if ps is None else [float(x) for x in ps]
            return (max(ps) > 0.0, min(ps) < 1.0)
        return (self.random_side == "B", self.random_side == "A")

    @property
    def label(self) -> str:
        return f"{self.name}(p={self.p:g})" if self.p is not None else self.name


def parse_methods(methods: str, ps=DEFAULT_P, **options) -> list[MethodSpec]:
    """'all' or a comma list of names / family aliases -> specs (one per p for Bernoulli)."""
    names = []
    for token in [t.strip() for t in str(methods).split(",") if t.strip()]:
        if token in ALIASES:
            names.extend(ALIASES[token])
        elif token in METHODS:
            names.append(token)
        else:
            raise MethodError(f"method: unknown method {token!r} (choose from {', '.join(('all',) + FAMILIES + METHODS[1:-1])})")
    if not names:
        raise MethodError("method: empty method list")
    for p in ps:
        if not 0.0 <= float(p) <= 1.0:
            raise MethodError(f"p: {p} is outside [0, 1]")
    specs = []
    for name in dict.fromkeys(names):  # keep order, drop duplicates
        if name == "bernoulli_lora":
            specs.extend(MethodSpec(name, float(p), **options) for p in ps)
        else:
            specs.append(MethodSpec(name, None, **options))
    return specs


def trainable_params(spec: MethodSpec, dims, rank: int) -> tuple[float, int]:
    """(expected trainable parameters per step, most at any step) for one seed.

    ``dims``: [(m_l, n_l)]. FPFT trains every weight and bias; adapter methods train
    factors only (biases frozen): A has ``r n_l``, B ``r m_l`` entries per layer.
    """
    if not spec.uses_adapters:
        n = sum(m * k + m for m, k in dims)
        return float(n), n
    n_a = rank * sum(k for _, k in dims)
    n_b = rank * sum(m for m, _ in dims)
    if spec.trains_both:
        return float(n_a + n_b), n_a + n_b
    if spec.family == "bernoulli_lora":
        most = max(n_a if spec.p > 0 else 0, n_b if spec.p < 1 else 0)
        return spec.p * n_a + (1 - spec.p) * n_b, most
    n = n_a if spec.random_side == "B" else n_b
    return float(n), n


@dataclasses.dataclass
class RoundState:
    """Per-seed role of the factors in the current round, (S,) bool each."""

    random_B: torch.Tensor  # B is the random side (else A)
    train_A: torch.Tensor
    train_B: torch.Tensor
    k: int  # round index


def round_roles(spec: MethodSpec, seeds: torch.Tensor, k: int, p=None) -> RoundState:
    """Roles in round k; ``p`` (R,) overrides ``spec.p`` per run (a batched p sweep)."""
    S, dev = seeds.shape[0], seeds.device
    if spec.family == "bernoulli_lora":
        c = rng.bernoulli(seeds, rng.Stream.COIN, k, spec.p if p is None else p)
        return RoundState(c, c.clone(), ~c, k)
    ones = torch.ones(S, dtype=torch.bool, device=dev)
    random_B = ones if spec.random_side == "B" else ~ones
    if spec.trains_both:
        return RoundState(random_B, ones.clone(), ones.clone(), k)
    return RoundState(random_B, random_B.clone(), ~random_B, k)


def random_factors(seeds, k: int, dims, rank: int, *, std: float, dtype, device=None):
    """Gaussian candidates for both sides of round k: ([A_l (S, r, n)], [B_l (S, m, r)])."""
    A = [(std * rng.normal(seeds, rng.Stream.SKETCH, k, (rank, n), sub=2 * l)).to(dtype) for l, (m, n) in enumerate(dims)]
    B = [(std * rng.normal(seeds, rng.Stream.SKETCH, k, (m, rank), sub=2 * l + 1)).to(dtype) for l, (m, n) in enumerate(dims)]
    return A, B


def start_round(spec: MethodSpec, seeds: torch.Tensor, k: int, params: MLPParams, rank: int, *, alpha: float = 1.0,
                std: float = 1.0, previous: Adapters | None = None, p=None) -> tuple[Adapters, RoundState]:
    """Adapters and roles of round k (k = 0: start; previous = last round's adapters)."""
    roles = round_roles(spec, seeds, k, p)
    dims, dtype = params.dims, params.weights[0].dtype
    A_rand, B_rand = random_factors(seeds, k if spec.resample_frozen else 0, dims, rank, std=std, dtype=dtype)
    A, B = [], []
    for l, (m, n) in enumerate(dims):
        if previous is None or spec.rezero_trained:
            zero_A = torch.zeros_like(A_rand[l])
            zero_B = torch.zeros_like(B_rand[l])
        else:
            zero_A, zero_B = previous.A[l], previous.B[l]
        rb = roles.random_B
        A.append(torch.where(rb[:, None, None], zero_A, A_rand[l]))
        B.append(torch.where(rb[:, None, None], B_rand[l], zero_B))
    return Adapters(A, B, alpha / rank), roles
