"""The fine-tuning methods of the transformer section, on a ``transformers`` model through ``peft``.

The method list and every method's semantics are those of the MNIST section
(:mod:`experiments.real_model.methods`: ``fpft``, ``lora_a/_b``, ``cola_a/_b``,
``asymm_lora_a/_b``, ``rac_lora_a/_b``, ``bernoulli_lora``, with the same random /
trained sides, merges and Gaussian draws, :func:`solvers.torch_optim.frozen_factor` with
``draws='real_model'``), plus two optimiser-only methods:

* ``galore``: ``galore_torch``'s AdamW on the target weights (rank ``r``, projector
  refreshed every ``every`` steps, GaLore's ``scale``);
* ``bernoulli_lora_opt``: :class:`solvers.torch_optim.BernoulliLoRAOptimizer` on the
  target weights (no adapters), the same algorithm as ``bernoulli_lora`` in weight space.

Adapter methods go through real ``peft`` LoRA layers on :data:`.model.TARGETS`:
``bernoulli_lora`` through :func:`~experiments.real_model.bernoulli_peft.prepare_bernoulli_lora`
(the shipped switcher), the fixed-side methods through :class:`FixedSideRounds`.
Only the factors are trained (and for ``galore`` / ``bernoulli_lora_opt`` only the target
weights); ``fpft`` trains every parameter. Every method uses AdamW (``bernoulli_lora_opt``
its inner AdamW) with the same learning rate and weight decay.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
import types

import torch
from torch import nn

from solvers.torch_optim import LEFT, RIGHT, BernoulliLoRAOptimizer, frozen_factor

from .. import methods as mt
from ..bernoulli_peft import prepare_bernoulli_lora
from ..bernoulli_peft.layers import factors, fold, lora_layers
from .model import TARGETS, target_modules

EXTRA = ("galore", "bernoulli_lora_opt")
METHODS = mt.METHODS + EXTRA
OPT_STATES = ("reset", "keep")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    rank: int = 4
    alpha: float = 4.0  # scale alpha / r
    init_std: float = 1.0  # std of the Gaussian (random) factor
    every: int = 50  # round length in steps (merges, switches, GaLore's projector refresh)
    opt_state: str = "reset"  # optimiser state of re-initialised factors at a round change
    galore_scale: float = 0.25

    def check(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("rank", 1), ("every", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"{name}: must be >= {low}, got {getattr(self, name)}")
        for name in ("lr", "alpha", "init_std", "galore_scale"):
            v = getattr(self, name)
            if not (v > 0 and v != float("inf")):
                raise ValueError(f"{name}: must be a positive number, got {v}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.opt_state not in OPT_STATES:
            raise ValueError(f"opt_state: unknown value {self.opt_state!r} (choose {' or '.join(OPT_STATES)})")


def parse_methods(text: str, ps) -> list[mt.MethodSpec]:
    """'all' or a comma list (MNIST names and aliases, ``galore``, ``bernoulli_lora_opt``) -> specs."""
    tokens = [t.strip() for t in str(text).split(",") if t.strip()]
    if not tokens:
        raise mt.MethodError("method: empty method list")
    expanded = []
    for t in tokens:
        expanded.extend(METHODS if t == "all" else [t])
    specs = []
    for t in dict.fromkeys(expanded):
        if t == "galore":
            specs.append(mt.MethodSpec("galore"))
        elif t == "bernoulli_lora_opt":
            specs.extend(mt.MethodSpec(t, float(p)) for p in ps)
        else:
            try:
                specs.extend(mt.parse_methods(t, ps))
            except mt.MethodError:
                raise mt.MethodError(f"method: unknown method {t!r} (choose from {', '.join(('all',) + METHODS)})") from None
    return specs


@functools.lru_cache(maxsize=None)
def galore_adamw():
    """(``galore_torch`` AdamW class, how it was loaded), or (None, reason) when not installed.

    galore-torch 1.0's ``__init__`` imports bitsandbytes (for its 8-bit variant); when that
    is missing, only ``galore_torch/adamw.py`` (and its projector) is loaded. Cached: the
    stand-in package has no ``__spec__``, so a second lookup would fail."""
    spec = importlib.util.find_spec("galore_torch")
    if spec is None:
        return None, "galore-torch not installed"
    try:
        from galore_torch import GaLoreAdamW
        return GaLoreAdamW, "galore_torch.GaLoreAdamW"
    except ImportError as err:  # bitsandbytes missing: load the AdamW module alone
        pkg = types.ModuleType("galore_torch")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["galore_torch"] = pkg
        from galore_torch.adamw import AdamW
        return AdamW, f"galore_torch.adamw.AdamW (package __init__ not loaded: {err})"


class FixedSideRounds:
    """LoRA, COLA, AsymmLoRA, RAC-LoRA on a peft model, with the MNIST section's semantics.

    Round ``k``: the random side (``spec.random_side``) is the Gaussian draw
    ``frozen_factor(seed, k, l, side, draws='real_model')`` (round 0's draw when
    ``resample_frozen=False``), the other side starts at zero; both are trained for
    LoRA / COLA, only the zero side otherwise. Merging methods fold ``s B A`` into the
    base weight after every ``every`` steps and start the next round; with
    ``opt_state='reset'`` the optimiser state of both factors is dropped then.
    """

    def __init__(self, model: nn.Module, spec: mt.MethodSpec, *, seed: int, every: int, init_std: float,
                 opt_state: str):
        self.model, self.spec, self.seed, self.every = model, spec, int(seed), int(every)
        self.init_std, self.opt_state = float(init_std), opt_state
        self.layers = lora_layers(model)
        self.side = LEFT if spec.random_side == "B" else RIGHT  # LEFT: B is the random side
        self.round = None

    @torch.no_grad()
    def start(self, k: int, optimizer=None) -> None:
        for l, (_, module) in enumerate(self.layers):
            A, B = factors(module, "default")
            rand, zero = (B, A) if self.side == LEFT else (A, B)
            if k == 0 or self.spec.resample_frozen:
                draw = frozen_factor(self.seed, k if self.spec.resample_frozen else 0, l, self.side,
                                     (B.shape[0], A.shape[1]), A.shape[0], draws="real_model", init_std=self.init_std)
                rand.copy_(draw.to(dtype=rand.dtype, device=rand.device))
            if k == 0 or self.spec.rezero_trained:
                zero.zero_()
            zero.requires_grad_(True)
            rand.requires_grad_(self.spec.trains_both)
            if optimizer is not None and self.opt_state == "reset":
                optimizer.state.pop(A, None)
                optimizer.state.pop(B, None)
        self.round = int(k)

    def step(self, t: int, optimizer=None) -> None:
        """After the ``t``-th optimiser step: merge and start the next round when due."""
        if self.spec.merges and t % self.every == 0:
            with torch.no_grad():
                for _, module in self.layers:
                    fold(module, "default")
            self.start(t // self.every, optimizer)

    def parameters(self) -> list[nn.Parameter]:
        return [t for _, m in self.layers for t in factors(m, "default")]


@dataclasses.dataclass
class Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    after_step: object  # callable(t, optimizer) or None
    adapter_bytes: int
    dims: list  # [(m, n)] of the target projections (out, in)
    galore: str | None = None  # how galore was loaded


def _only_train(model: nn.Module, params) -> None:
    ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)


def _peft(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    import peft

    lcfg = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(TARGETS), lora_dropout=0.0)
    return peft.get_peft_model(model, lcfg)


def setup(spec: mt.MethodSpec, model: nn.Module, cfg: FinetuneConfig, seed: int) -> Setup:
    """Wrap the (pretrained) ``model`` for ``spec``; its optimiser and per-step hook."""
    adamw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    dims = [tuple(m.weight.shape) for _, m in target_modules(model)]
    if spec.name == "fpft":
        _only_train(model, list(model.parameters()))
        return Setup(model, torch.optim.AdamW(model.parameters(), **adamw), None, 0, dims)
    if spec.name in EXTRA:
        weights = [m.weight for _, m in target_modules(model)]
        _only_train(model, weights)
        if spec.name == "galore":
            Galore, how = galore_adamw()
            if Galore is None:
                raise RuntimeError(f"method galore: {how} (pip install galore-torch)")
            group = {"params": weights, "rank": cfg.rank, "update_proj_gap": cfg.every, "scale": cfg.galore_scale,
                     "proj_type": "std"}
            return Setup(model, Galore([group], no_deprecation_warning=True, **adamw), None, 0, dims, galore=how)
        opt = BernoulliLoRAOptimizer(weights, rank=cfg.rank, scale=cfg.alpha / cfg.rank, p=spec.p, every=cfg.every,
                                     seed=seed, draws="real_model", init_std=cfg.init_std, inner="adamw",
                                     moments=cfg.opt_state, **adamw)
        return Setup(model, opt, None, 0, dims)
    pm = _peft(model, cfg)
    if spec.family == "bernoulli_lora":
        sw = prepare_bernoulli_lora(pm, p=spec.p, every=cfg.every, optimizer_state=cfg.opt_state, seed=seed,
                                    draws="real_model", init_std=cfg.init_std)
        params, hook = sw.trainable_parameters(), sw.step
    else:
        drv = FixedSideRounds(pm, spec, seed=seed, every=cfg.every, init_std=cfg.init_std, opt_state=cfg.opt_state)
        drv.start(0)
        params, hook = drv.parameters(), drv.step
    # peft froze every base weight; the driver set which factor of the round is trained
    nbytes = sum(p.numel() * p.element_size() for p in params)
    return Setup(pm, torch.optim.AdamW(params, **adamw), hook, nbytes, dims)


def trainable_params(spec: mt.MethodSpec, run: Setup, rank: int) -> tuple[float, int]:
    """(expected trainable parameters per step, most at any step): the MNIST section's
    count (:func:`experiments.real_model.methods.trainable_params`) on the target
    projections; ``fpft`` counts every parameter, ``galore`` every target weight."""
    if spec.name == "fpft":
        n = sum(p.numel() for p in run.model.parameters())
        return float(n), n
    if spec.name == "galore":
        n = sum(m * k for m, k in run.dims)
        return float(n), n
    if spec.name == "bernoulli_lora_opt":
        spec = mt.MethodSpec("bernoulli_lora", spec.p)
    return mt.trainable_params(spec, run.dims, rank)
