r"""Bernoulli-LoRA and its baselines, optax-like and batched over runs.

``state = method.init(W0, oracle, seeds)``; ``W, state = method.step(W, state, oracle)``.
``W`` has shape (R, m, n); ``seeds`` (R,) int64, one per run. The random numbers of
run ``k`` depend only on ``seeds[k]`` (see :mod:`solvers.rng`).

Weight-space methods (:class:`BernoulliLoRA`, :class:`FPFT`) update

.. math:: W_{t+1} = W_t - \gamma_t\,\hat H_t(G_t),\qquad
    \hat H_t(G) = \begin{cases} H_{B} G & c_t = 1 \ (\text{prob. } p)\\ G H_{A} & c_t = 0\end{cases}

with fresh sketches each step (:mod:`solvers.sketches`), :math:`G_t` from the
estimator. p = 1 and p = 0 are the two RAC-LoRA methods; FPFT uses
:math:`\hat H = \mathrm{Id}`. Factor-space baselines (:class:`LoRA`,
:class:`AsymmLoRA`, :class:`COLA`) run gradient steps on the factors of
:math:`f(W_\mathrm{base} + \tfrac{\alpha}{r} B A)`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch

from solvers import rng
from solvers.linalg import bmm, run_sum
from solvers.projections import project_left, project_right
from solvers.registry import param, register
from solvers.sketches import GaussianSketch, Sketch, lambda_p, make_sketch

# ----------------------------------------------------------------------------- configuration schemas


@dataclass
class BernoulliLoRAConf:
    # no alpha: the step is taken in weight space, W - gamma H_B G (or G H_A), where
    # the LoRA scaling alpha / r of the trained factor cancels (it multiplies the
    # factor's gradient and divides its contribution to W)
    name: str = "bernoulli_lora"
    p: float = param(0.5, ge=0, le=1)
    rank: int = param(2, ge=1)  # <= min(m, n): checked against the problem


@dataclass
class FPFTConf:
    name: str = "fpft"


@dataclass
class LoRAConf:
    name: str = "lora"
    rank: int = param(2, ge=1)
    alpha: float = param(1.0, gt=0)
    random_A: bool = True
    init_scale: float = 1.0


@dataclass
class AsymmLoRAConf(LoRAConf):
    name: str = "asymm_lora"


@dataclass
class COLAConf(LoRAConf):
    name: str = "cola"
    merge_every: int = param(10, ge=1)


def bernoulli_lora_lambdas(params, sketch, m, n):
    r""":math:`(\lambda_{\min}^p, \lambda_{\max}^p)` of Bernoulli-LoRA from the sketch's exact E[H]."""
    return lambda_p(sketch, float(params["p"]), m, n, params["rank"])


class MethodState(NamedTuple):
    step: int
    seeds: torch.Tensor  # (R,)
    est: Any  # estimator state (has .G, .epochs, .bits)
    active: torch.Tensor  # (R,) bool; False once a run has diverged
    left: torch.Tensor  # (R,) bool, the last coin (True: B sampled, A trained)
    factors: Optional[tuple] = None  # (base, B, A) for factor-space methods


def _values(value):
    """A scalar or a per-run sequence, as a tuple of floats."""
    if isinstance(value, (int, float)):
        return (float(value),)
    try:
        return tuple(float(v) for v in value)
    except TypeError:
        return (value,)


def _per_run(value, W):
    """Scalar or per-run sequence -> tensor broadcastable to (R,)."""
    if isinstance(value, (int, float)):
        return float(value)
    t = _per_run_tensor(tuple(float(v) for v in value), str(W.device))
    if t.shape[0] != W.shape[0]:
        raise ValueError(f"per-run parameter: got {t.shape[0]} values for {W.shape[0]} runs")
    return t


@functools.lru_cache(maxsize=64)
def _per_run_tensor(values: tuple, device: str) -> torch.Tensor:
    # cached: one host-to-device copy per run set, not one per step (never written to)
    return torch.tensor(values, dtype=torch.float64, device=device)


def _check_positive(name, value):
    for v in _values(value):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: must be a finite number > 0, got {value}")


def _check_rank(rank, m, n):
    if not (isinstance(rank, int) and 1 <= rank <= min(m, n)):
        raise ValueError(f"rank: must be an integer in [1, min(m, n) = {min(m, n)}], got {rank}")


def _seeds_tensor(seeds, device):
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device)
    if seeds.ndim != 1:
        raise ValueError("seeds: expected a 1-D sequence of integers, one per run")
    return seeds


def _check_W0(W0):
    if W0.ndim != 3:
        raise ValueError(f"W0: expected shape (runs, m, n), got {tuple(W0.shape)}")
    if not bool(torch.isfinite(W0).all()):
        raise ValueError("W0: contains non-finite values")


@dataclass(frozen=True)
class _WeightSpace:
    """Shared init/step of the weight-space methods; subclasses define ``direction``."""

    estimator: Any = None
    stepsize: float = 1.0  # gamma (absolute), or the Polyak factor for stepsize_rule='polyak'
    stepsize_rule: str = "constant"
    f_star: Optional[float] = None  # needed by the Polyak rule

    def _validate(self, m, n):
        _check_positive("stepsize", self.stepsize)
        if self.stepsize_rule not in ("constant", "polyak"):
            raise ValueError(f"stepsize.rule: expected 'constant' or 'polyak', got {self.stepsize_rule!r}")
        if self.stepsize_rule == "polyak" and (self.f_star is None or not math.isfinite(self.f_star)):
            raise ValueError("stepsize.rule: 'polyak' needs the optimal value f_star of the problem")

    def validate(self, m, n):
        """Refuse parameters that do not fit an (m, n) problem (one line naming the field);
        :meth:`init` calls it, and :mod:`experiments.build` before any work."""
        self._validate(m, n)

    def init(self, W0, oracle, seeds):
        _check_W0(W0)
        m, n = W0.shape[-2:]
        self._validate(m, n)
        seeds = _seeds_tensor(seeds, W0.device)
        if seeds.shape[0] != W0.shape[0]:
            raise ValueError(f"seeds: need one per run ({W0.shape[0]}), got {seeds.shape[0]}")
        ones = torch.ones(W0.shape[0], dtype=torch.bool, device=W0.device)
        return MethodState(step=0, seeds=seeds, est=self.estimator.init(W0, oracle, seeds), active=ones, left=ones)

    def direction(self, G, seeds, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def gamma(self, W, D, state, oracle):
        """Stepsize per run, shape (R, 1, 1)."""
        if self.stepsize_rule == "constant":
            g = _per_run(self.stepsize, W)
            if isinstance(g, float):
                return torch.full((W.shape[0], 1, 1), g, dtype=W.dtype, device=W.device)
            return g.to(W.dtype)[:, None, None]
        # Polyak: gamma_t = factor * (f(W_t) - f*) / ||G_t||^2 (factor = lmin_p / lmax_p in theory)
        gap = (oracle.loss(W) - self.f_star).clamp_min(0)
        norm_sq = run_sum(state.est.G ** 2)
        g = torch.where(norm_sq > 0, _per_run(self.stepsize, W) * gap / norm_sq.clamp_min(1e-300), torch.zeros_like(gap))
        return g[:, None, None].to(W.dtype)

    def step(self, W, state, oracle):
        D, left = self.direction(state.est.G, state.seeds, state.step)
        return self._move(W, state, oracle, D, left,
                          lambda W_new: self.estimator.update(W_new, W, state.est, oracle, state.seeds, state.step + 1))

    def _move(self, W, state, oracle, D, left, update):
        W_new = W - self.gamma(W, D, state, oracle) * D
        W_new = torch.where(state.active[:, None, None], W_new, W)
        return W_new, state._replace(step=state.step + 1, est=update(W_new), left=left)

    # ---- block draws (solvers.fused): the same step from random numbers drawn beforehand
    def draw(self, seeds, step, W, oracle):
        """The random numbers of step ``step`` (an int, or a range of K steps: every
        tensor then has an axis K after the run axis, element ``[:, k]`` bitwise the draw
        of step ``step[k]``): the direction's and the estimator's (round ``step + 1``)."""
        after = step + 1 if isinstance(step, int) else range(step.start + 1, step.stop + 1)
        return self.direction_draws(seeds, step, W), self.estimator.draw(seeds, after, W, oracle)

    def step_given(self, W, state, oracle, drawn):
        """:meth:`step` with the random numbers ``drawn`` of this step (:meth:`draw` of
        one step), without any host synchronisation (capturable in a CUDA graph)."""
        D, left = self.direction_given(state.est.G, drawn[0])
        return self._move(W, state, oracle, D, left,
                          lambda W_new: self.estimator.update_given(W_new, W, state.est, oracle, drawn[1],
                                                                    sync_free=True))

    def direction_draws(self, seeds, step, W):
        return None

    def direction_given(self, G, drawn):
        return self.direction(G, None, None)


@register("method", conf=FPFTConf, label="FPFT", label_format="{label}-{estimator}", color="black")
@dataclass(frozen=True)
class FPFT(_WeightSpace):
    """Full-parameter fine-tuning: :math:`W_{t+1} = W_t - \\gamma G_t`."""

    name = "fpft"

    def direction(self, G, seeds, step):
        return G, torch.ones(G.shape[0], dtype=torch.bool, device=G.device)


@dataclass(frozen=True)
class BernoulliLoRA(_WeightSpace):
    r"""Bernoulli-LoRA: each step a Bernoulli(p) coin per run picks the left
    sketch (B sampled and frozen, A trained: :math:`H_B G`) or the right sketch
    (A sampled and frozen, B trained: :math:`G H_A`). p = 1: RAC-LoRA (B sampled, A trained);
    p = 0: RAC-LoRA (A sampled, B trained) (names: docs/design.md#factors).

    Parameters (keyword-only)
    ----------
    p : float in [0, 1] (or one per run); rank : int in [1, min(m, n)]; sketch : name or Sketch;
    estimator : gradient estimator; stepsize : gamma > 0 (or one per run);
    stepsize_rule : 'constant' or 'polyak' (then ``stepsize`` is the Polyak factor).
    """

    p: float = 0.5
    rank: int = 1
    sketch: Any = "gaussian"
    name = "bernoulli_lora"

    def _validate(self, m, n):
        super()._validate(m, n)
        if not all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in _values(self.p)):
            raise ValueError(f"p: must lie in [0, 1], got {self.p}")
        _check_rank(self.rank, m, n)
        make_sketch(self.sketch)

    def direction(self, G, seeds, step):
        left = rng.bernoulli(seeds, rng.Stream.COIN, step, _per_run(self.p, G), device=G.device)
        if G.is_cuda:
            return self.direction_sync_free(G, seeds, step, left), left
        sketch = make_sketch(self.sketch)
        m, n = G.shape[-2:]
        n_left = int(left.sum())
        if n_left == G.shape[0]:
            B = sketch.sample_left(seeds, step, m, self.rank, device=G.device, dtype=G.dtype)
            return project_left(B, G), left
        if n_left == 0:
            A = sketch.sample_right(seeds, step, self.rank, n, device=G.device, dtype=G.dtype)
            return project_right(A, G), left
        # mixed batch: project each run on its own side (sketches of the other
        # side are never used, and are drawn from a separate sub-stream)
        D = torch.empty_like(G)
        if rng.block_drawing(seeds):  # every run's draws are at hand: select (the same numbers)
            B = sketch.sample_left(seeds, step, m, self.rank, device=G.device, dtype=G.dtype)[left]
            A = sketch.sample_right(seeds, step, self.rank, n, device=G.device, dtype=G.dtype)[~left]
        else:
            B = sketch.sample_left(seeds[left], step, m, self.rank, device=G.device, dtype=G.dtype)
            A = sketch.sample_right(seeds[~left], step, self.rank, n, device=G.device, dtype=G.dtype)
        D[left] = project_left(B, G[left])
        D[~left] = project_right(A, G[~left])
        return D, left

    def direction_sync_free(self, G, seeds, step, left):
        """The projected direction without a host synchronisation (used on CUDA):
        :meth:`direction_given` with both sides drawn for every run."""
        _, B, A = self.direction_draws(seeds, step, G)
        return self.direction_given(G, (left, B, A))[0]

    def direction_draws(self, seeds, step, W):
        """The coin (R, [K]) and both sketches, (R, [K,] m, r) and (R, [K,] r, n), of every
        run (contiguous: the fused path's slices of a block have the same layout)."""
        return self.coins(seeds, step, W), self.sketches(seeds, step, W, "left"), self.sketches(seeds, step, W, "right")

    def coins(self, seeds, step, W):
        """The coins of step ``step`` (an int, or a block of steps: (R, K)), True: left."""
        return rng.bernoulli(seeds, rng.Stream.COIN, step, _per_run(self.p, W), device=W.device)

    def sketches(self, seeds, step, W, side):
        """The ``side`` ('left': B, (R, [K,] m, r); 'right': A, (R, [K,] r, n)) sketches of
        step ``step`` (an int, a range or a list of steps, or for a sketch with
        ``block_draws`` an (R, K) array of per-run steps), contiguous."""
        sketch = make_sketch(self.sketch)
        m, n = W.shape[-2:]
        kw = dict(device=W.device, dtype=W.dtype)
        draw = (lambda t: sketch.sample_left(seeds, t, m, self.rank, **kw)) if side == "left" else \
            (lambda t: sketch.sample_right(seeds, t, self.rank, n, **kw))
        if isinstance(step, int) or sketch.block_draws:
            return draw(step).contiguous()
        return torch.stack([draw(t) for t in step], 1).contiguous()

    def direction_given(self, G, drawn):
        """The direction for the coin and sketches ``drawn`` (:meth:`direction_draws` of
        one step), with no host synchronisation: both sides computed for every run and
        selected by the coin (a run's sketch depends only on its seed, so the selected
        values are those of :meth:`direction`). On CUDA, sketches of full rank almost
        surely solve the Gram system by Cholesky instead of an eigendecomposition; on CPU
        the pseudo-inverse, per run, is bitwise what :meth:`direction` computes."""
        left, B, A = drawn
        full_rank = G.is_cuda and make_sketch(self.sketch).full_rank_almost_surely
        return projected_direction(G, left, B, A, full_rank=full_rank), left


def projected_direction(G, left, B, A, *, full_rank=False):
    r""":math:`H_B G` for the runs with ``left`` and :math:`G H_A` for the others, both sides
    computed for every run (no host synchronisation); ``full_rank`` as in
    :func:`solvers.projections.project_left`."""
    return torch.where(left[:, None, None], project_left(B, G, full_rank=full_rank),
                       project_right(A, G, full_rank=full_rank))


# --------------------------------------------------------------------------- factor space


@dataclass(frozen=True)
class _FactorSpace:
    r"""Gradient steps on the factors of :math:`F(B, A) = f(W_\mathrm{base} + s BA)`,
    :math:`s = \alpha/r`: :math:`\nabla_B F = s\,G A^\top`, :math:`\nabla_A F = s\,B^\top G`
    with :math:`G` the estimator's gradient at the current W."""

    estimator: Any = None
    stepsize: float = 1.0
    rank: int = 1
    alpha: float = 1.0
    init_scale: float = 1.0  # std of the Gaussian factor's entries is init_scale / sqrt(dim)
    train_A: bool = True
    train_B: bool = True
    random_A: bool = True  # which factor starts random (the other starts at zero)
    merge_every: int = 0  # COLA: merge and re-initialise every k steps (0: never)
    stepsize_rule: str = "constant"  # the only rule of the factor-space methods
    f_star: Optional[float] = None  # unused (the Polyak rule is not implemented here)

    def _random(self, seeds, step, shape, device, dtype):
        dim = shape[0] if shape[1] == self.rank else shape[1]
        z = rng.normal(seeds, rng.Stream.INIT, step, shape, device=device, dtype=dtype)
        return z * (self.init_scale / math.sqrt(dim))

    def _fresh_factors(self, seeds, step, m, n, device, dtype):
        R = seeds.shape[0]
        if self.random_A:
            A = self._random(seeds, step, (self.rank, n), device, dtype)
            B = torch.zeros(R, m, self.rank, device=device, dtype=dtype)
        else:
            B = self._random(seeds, step, (m, self.rank), device, dtype)
            A = torch.zeros(R, self.rank, n, device=device, dtype=dtype)
        return B, A

    def validate(self, m, n):
        """Refuse parameters that do not fit an (m, n) problem (one line naming the field)."""
        if self.stepsize_rule != "constant":
            raise ValueError(f"stepsize.rule: {self.stepsize_rule} is not implemented for {self.name} "
                             "(the factor-space methods take the constant rule only)")
        _check_positive("stepsize", self.stepsize)
        _check_rank(self.rank, m, n)
        _check_positive("alpha", self.alpha)

    def init(self, W0, oracle, seeds):
        _check_W0(W0)
        m, n = W0.shape[-2:]
        self.validate(m, n)
        seeds = _seeds_tensor(seeds, W0.device)
        B, A = self._fresh_factors(seeds, 0, m, n, W0.device, W0.dtype)
        ones = torch.ones(W0.shape[0], dtype=torch.bool, device=W0.device)
        return MethodState(step=0, seeds=seeds, est=self.estimator.init(W0, oracle, seeds),
                           active=ones, left=ones, factors=(W0.clone(), B, A))

    def step(self, W, state, oracle):
        base, B, A = state.factors
        s = self.alpha / self.rank
        G = state.est.G
        act = state.active[:, None, None]
        gB = s * bmm(G, A.transpose(-1, -2)) if self.train_B else None
        gA = s * bmm(B.transpose(-1, -2), G) if self.train_A else None
        if gB is not None:
            B = torch.where(act, B - self.stepsize * gB, B)
        if gA is not None:
            A = torch.where(act, A - self.stepsize * gA, A)
        W_new = base + s * bmm(B, A)
        t = state.step + 1
        if self.merge_every and t % self.merge_every == 0:
            base = W_new
            B, A = self._fresh_factors(state.seeds, t, *W.shape[-2:], W.device, W.dtype)
        est = self.estimator.update(W_new, W, state.est, oracle, state.seeds, t)
        return W_new, state._replace(step=t, est=est, factors=(base, B, A))


@register("method", conf=LoRAConf, label="LoRA", color="tab:brown")
@dataclass(frozen=True)
class LoRA(_FactorSpace):
    """LoRA: A and B trained jointly, no merging. ``random_A=True``: A Gaussian and
    B zero (the PEFT default); ``random_A=False``: B Gaussian and A zero."""

    name = "lora"


@register("method", conf=AsymmLoRAConf, label="AsymmLoRA", color="tab:purple")
@dataclass(frozen=True)
class AsymmLoRA(_FactorSpace):
    """AsymmLoRA: one factor random and fixed, the other trained from zero."""

    name = "asymm_lora"

    def __post_init__(self):
        object.__setattr__(self, "train_A", not self.random_A)
        object.__setattr__(self, "train_B", self.random_A)


@register("method", conf=COLAConf, label="COLA", color="tab:pink")
@dataclass(frozen=True)
class COLA(_FactorSpace):
    """COLA (chain of LoRA): both factors trained, merged into the base and
    re-initialised every ``merge_every`` steps."""

    merge_every: int = 10
    name = "cola"

    def __post_init__(self):
        if not (isinstance(self.merge_every, int) and self.merge_every >= 1):
            raise ValueError(f"merge_every: must be an integer >= 1, got {self.merge_every}")


METHODS = {"bernoulli_lora": BernoulliLoRA, "fpft": FPFT, "lora": LoRA, "asymm_lora": AsymmLoRA, "cola": COLA}


def make_method(name: str, **params):
    """Method by name: bernoulli_lora, fpft, lora, asymm_lora, cola."""
    if name not in METHODS:
        raise ValueError(f"method: unknown name {name!r}; choose one of {sorted(METHODS)}")
    try:
        return METHODS[name](**params)
    except TypeError as exc:
        raise ValueError(f"method {name}: {exc}") from None
