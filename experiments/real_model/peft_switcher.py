r"""Bernoulli-LoRA for any ``peft`` LoRA model: a trainer-side switcher.

The method
----------
PEFT's LoRA layer computes, for a linear base layer :math:`W_0\in\mathbb{R}^{m\times n}`
(``out x in``),

.. math::

    y = W_0 x + b + s\,B A x,\qquad s = \text{scaling} = \alpha / r
    \ (\alpha/\sqrt r \text{ with rsLoRA}),

with ``lora_A.weight`` :math:`= A\in\mathbb{R}^{r\times n}` the RIGHT factor (input side)
and ``lora_B.weight`` :math:`= B\in\mathbb{R}^{m\times r}` the LEFT factor (output side).

Bernoulli-LoRA (arXiv 2508.03820) trains in *rounds*. At the start of round :math:`k`
a coin :math:`c_k\sim\mathrm{Bernoulli}(p)` picks, for all layers at once,

* :math:`c_k = 1`, **left** sketch: :math:`B = B_S` is sampled from the sketch
  distribution and frozen, :math:`A` starts at 0 and is trained;
* :math:`c_k = 0`, **right** sketch: :math:`A = A_S` is sampled and frozen,
  :math:`B` starts at 0 and is trained.

At the end of a round the adapter is *merged*, :math:`W_0 \leftarrow W_0 + s\,B A`,
and the next round starts. Since the trained factor starts at zero, :math:`BA=0` right
after a restart, so merging and restarting never change the function the model
computes. One gradient step of size :math:`\gamma` on the trained factor followed by a
merge is, in weight space (left case, :math:`G=\nabla_W f`),

.. math::

    A^+ = -\gamma s\,B_S^\top G, \qquad
    W^+ = W + s\,B_S A^+ = W - \gamma s^2\, B_S B_S^\top G,

and in the right case :math:`W^+ = W - \gamma s^2\, G A_S^\top A_S`; the theory's
:math:`W - \gamma H_B G` (:math:`H_B = B_S(B_S^\top B_S)^\dagger B_S^\top`) is the same
step with the stepsize rescaled per draw. With ``p = 1`` (resp. ``p = 0``) this is
RAC-LoRA with ``B`` (resp. ``A``) sampled.

Usage
-----
::

    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=[...]))
    sw = BernoulliLoRASwitcher(model, p=0.9, every=1, seed=0)
    sw.init()                                        # round 0: coin, sketches, zeros
    opt = torch.optim.AdamW(sw.factor_parameters(), lr=2e-4)   # ALL factors, see below
    for global_step, batch in enumerate(loader, start=1):
        loss = ...; loss.backward()
        opt.step(); opt.zero_grad()
        sw.step(global_step, opt)                   # merge / switch when due

The optimiser must hold *every* ``lora_A`` / ``lora_B`` tensor of the adapter
(:meth:`BernoulliLoRASwitcher.factor_parameters`), not only those trainable in round
0: the trained side changes between rounds. Frozen factors have ``requires_grad=False``
and ``grad=None``, so ``torch.optim`` optimisers skip them (no weight decay, no moment
update): a frozen tensor is bitwise unchanged by ``optimizer.step()``.

Schedule
--------
``step(t)`` is called after the ``t``-th optimiser step (``t = 1, 2, ...``).

* if ``t % merge_every == 0``: merge :math:`W_0 \leftarrow W_0 + sBA` into the base
  layer (the adapter modules stay), then re-zero the trained factor;
* if ``t % every == 0``: start round :math:`k = t / \text{every}` (new coin, new frozen
  draw, zero trained factor). ``every`` must be a multiple of ``merge_every``, so every
  switch happens right after a merge (switching without merging would throw the
  round's progress away). A merge that is not a switch keeps the frozen factor and the
  side ("restart within the round").

Randomness
----------
Every draw is a pure function of ``(seed, round k, layer index l)`` through
:mod:`solvers.rng`: the coin is ``rng.bernoulli([seed], Stream.COIN, k, p)`` and the
frozen factor comes from ``Stream.SKETCH`` at step ``k``; layers are numbered in the
order of ``model.named_modules()``. Two conventions (option ``draws``):

``'sketch'`` (default)
    the suite's sketch distributions (:mod:`solvers.sketches`, e.g. Gaussian entries
    :math:`N(0, 1/\dim)`), sub-stream ``2 l`` for the left sketch :math:`B_S` and
    ``2 l + 1`` for the right sketch :math:`A_S` (drawn tall, ``n x r``, and
    transposed). For layer 0 these are exactly ``make_sketch(name).sample_left`` /
    ``sample_right``. The draw is multiplied by ``init_std`` (default 1).
``'real_model'``
    the convention of :mod:`experiments.real_model.methods` (``random_factors``):
    :math:`A_S =` ``init_std * rng.normal(seeds, SKETCH, k, (r, n), sub=2l)`` and
    :math:`B_S =` ``init_std * rng.normal(seeds, SKETCH, k, (m, r), sub=2l+1)``
    (Gaussian only), so that a PEFT model driven by this switcher follows the suite's
    batched implementation draw for draw (checked to float64 round-off in
    ``tests/test_peft_switcher.py``).

Draws are made in float64 and cast to the factor's dtype and device.

Optimiser state
---------------
``optimizer_state='reset'`` removes ``optimizer.state[t]`` (Adam's ``exp_avg``,
``exp_avg_sq``, ``step``; SGD's ``momentum_buffer``; ...) of every tensor that is
re-initialised (both factors at a switch, the trained factor at a merge), so the
optimiser restarts them lazily as new tensors. ``'keep'`` leaves the state alone
(the authors' code: the optimiser lives through the merges). ``torch.optim`` state
of a frozen tensor is never touched by ``optimizer.step()`` since its grad is None.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from solvers import rng
from solvers.sketches import make_sketch

__all__ = [
    "BernoulliLoRASwitcher",
    "SwitchEvent",
    "lora_layers",
    "merge_all",
    "trainable_parameter_count",
    "count_trainable",
]

LEFT, RIGHT = "left", "right"


def _lora_types():
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError as err:  # pragma: no cover - peft is an optional dependency
        raise ImportError("peft_switcher needs `peft` (pip install 'bernoulli-lora[peft]')") from err
    return LoraLayer, LoraLinear


def lora_layers(model: nn.Module, adapter_name: str = "default") -> list[tuple[str, nn.Module]]:
    """The LoRA layers of ``model`` that carry ``adapter_name``, in ``named_modules`` order.

    Parameters
    ----------
    model : torch.nn.Module
        A ``peft.PeftModel``, a ``peft.LoraModel`` or any module containing PEFT LoRA layers.
    adapter_name : str
        The adapter to act on (PEFT's default is ``'default'``).

    Returns
    -------
    list of (str, peft.tuners.lora.Linear)
        Layer index ``l`` of the switcher is the position in this list.

    Raises
    ------
    TypeError
        A LoRA layer of another kind than ``peft.tuners.lora.Linear`` (Embedding, Conv,
        MultiheadAttention, ...) or a variant (DoRA, ...) carries the adapter.
    ValueError
        No LoRA layer carries the adapter, or a layer is currently merged by PEFT.
    """
    LoraLayer, LoraLinear = _lora_types()
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        has = adapter_name in getattr(module, "lora_A", {}) or adapter_name in getattr(module, "lora_embedding_A", {})
        if not has:
            continue
        if type(module) is not LoraLinear:
            raise TypeError(f"peft_switcher: layer {name!r} is {type(module).__module__}.{type(module).__name__}; "
                            "only peft.tuners.lora.Linear (a LoRA adapter on nn.Linear / Conv1D) is supported")
        if adapter_name in getattr(module, "lora_variant", {}):
            raise TypeError(f"peft_switcher: layer {name!r} uses the LoRA variant "
                            f"{type(module.lora_variant[adapter_name]).__name__} (e.g. DoRA); only plain LoRA is supported")
        if adapter_name in getattr(module, "merged_adapters", []):
            raise ValueError(f"peft_switcher: layer {name!r} has adapter {adapter_name!r} merged by PEFT; unmerge it first")
        out.append((name, module))
    if not out:
        raise ValueError(f"peft_switcher: no LoRA layer carries adapter {adapter_name!r}")
    return out


def _factors(module, adapter_name):
    """(A (r x n), B (m x r)) weight tensors of one layer."""
    return module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight


def _fold(module, adapter_name) -> None:
    r"""In place: :math:`W_0 \leftarrow W_0 + s\,BA` (transposed for ``fan_in_fan_out``)."""
    A, B = _factors(module, adapter_name)
    weight = module.get_base_layer().weight
    delta = (B @ A).to(weight.dtype)
    if getattr(module, "fan_in_fan_out", False):
        delta = delta.T
    weight.add_(delta, alpha=float(module.scaling[adapter_name]))


@torch.no_grad()
def merge_all(model: nn.Module, adapter_name: str = "default", *, zero: str = "auto") -> int:
    r"""Fold every LoRA adapter into its base weight and zero one factor; keep the modules.

    For each layer, :math:`W_0 \leftarrow W_0 + s\,B A` (``s = scaling``), then one factor
    is set to 0 so that :math:`BA = 0` and the model computes the same function as before
    (up to float round-off). Unlike PEFT's ``merge_adapter`` / ``merge_and_unload`` the
    adapter stays active and trainable.

    Parameters
    ----------
    model : torch.nn.Module
        Model containing PEFT LoRA ``Linear`` layers.
    adapter_name : str
        Adapter to merge.
    zero : {'auto', 'A', 'B'}
        Factor to zero after the fold. ``'auto'``: the factor that requires grad when
        exactly one does (the trained side of Bernoulli-LoRA / RAC-LoRA), else ``B``
        (PEFT's own zero initialisation).

    Returns
    -------
    int
        The number of layers merged.
    """
    if zero not in ("auto", "A", "B"):
        raise ValueError(f"zero: expected 'auto', 'A' or 'B', got {zero!r}")
    layers = lora_layers(model, adapter_name)
    for _, module in layers:
        A, B = _factors(module, adapter_name)
        _fold(module, adapter_name)
        which = zero
        if which == "auto":
            which = "A" if (A.requires_grad and not B.requires_grad) else "B"
        (A if which == "A" else B).zero_()
    return len(layers)


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of scalars with ``requires_grad=True`` in ``model`` right now."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class count_trainable:
    """Context manager recording the trainable-parameter count on entry and exit.

    Examples
    --------
    >>> with count_trainable(model) as c:        # doctest: +SKIP
    ...     switcher.step(t, opt)
    >>> c.before, c.after                         # doctest: +SKIP
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.before = self.after = None

    def __enter__(self):
        self.before = trainable_parameter_count(self.model)
        return self

    def __exit__(self, *exc):
        self.after = trainable_parameter_count(self.model)
        return False


@dataclasses.dataclass(frozen=True)
class SwitchEvent:
    """What :meth:`BernoulliLoRASwitcher.step` did at one global step."""

    global_step: int
    merged: bool
    switched: bool
    round: int  # the round in progress after the call
    side: str  # 'left' (B frozen, A trained) or 'right' (A frozen, B trained)


class BernoulliLoRASwitcher:
    r"""Drive a PEFT LoRA model through Bernoulli-LoRA rounds (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        A ``peft`` model (``PeftModel`` / ``LoraModel`` / any module with LoRA layers).
    p : float
        Probability of the **left** sketch (``B`` sampled and frozen, ``A`` trained
        from 0). ``1 - p``: ``A`` sampled and frozen, ``B`` trained. ``p = 1`` / ``0``
        is RAC-LoRA.
    sketch : str
        Sketch distribution of :mod:`solvers.sketches` (``gaussian``, ``orthonormal``,
        ``rademacher``, ``column``) for ``draws='sketch'``; must be ``gaussian`` for
        ``draws='real_model'``.
    every : int
        Switch (new coin, new frozen draw, zero trained factor) every ``every`` steps.
    merge_every : int or None
        Merge every ``merge_every`` steps; ``None`` means ``every``. ``every`` must be
        a multiple of it.
    optimizer_state : {'reset', 'keep'}
        Whether to drop the optimiser state of re-initialised tensors.
    seed : int
        The run's seed; all draws are pure functions of (seed, round, layer).
    adapter_name : str
        The PEFT adapter to drive.
    draws : {'sketch', 'real_model'}
        Sampling convention (module docstring, *Randomness*).
    init_std : float
        Multiplier of every frozen draw (the authors' Gaussian std; 1 by default).

    Attributes
    ----------
    layers : list of (str, peft.tuners.lora.Linear)
        The driven layers; index ``l`` is the layer's sub-stream index.
    round : int or None
        Current round ``k`` (None before :meth:`init`).
    side : str or None
        ``'left'`` or ``'right'`` in the current round.
    history : list of SwitchEvent
        One entry per call that merged or switched (and one for :meth:`init`).
    """

    def __init__(self, model: nn.Module, *, p: float, sketch: str = "gaussian", every: int = 1,
                 merge_every: int | None = None, optimizer_state: str = "reset", seed: int = 0,
                 adapter_name: str = "default", draws: str = "sketch", init_std: float = 1.0):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p: must lie in [0, 1], got {p}")
        every = int(every)
        merge_every = every if merge_every is None else int(merge_every)
        if every < 1 or merge_every < 1:
            raise ValueError(f"every / merge_every: must be >= 1, got {every} / {merge_every}")
        if every % merge_every:
            raise ValueError(f"every ({every}) must be a multiple of merge_every ({merge_every}): a switch "
                             "without a merge would discard the round's progress")
        if optimizer_state not in ("reset", "keep"):
            raise ValueError(f"optimizer_state: expected 'reset' or 'keep', got {optimizer_state!r}")
        if draws not in ("sketch", "real_model"):
            raise ValueError(f"draws: expected 'sketch' or 'real_model', got {draws!r}")
        self.sketch = make_sketch(sketch)
        if draws == "real_model" and self.sketch.name != "gaussian":
            raise ValueError(f"draws='real_model' samples Gaussian factors only; got sketch {self.sketch.name!r}")
        self.model = model
        self.p = float(p)
        self.every, self.merge_every = every, merge_every
        self.optimizer_state = optimizer_state
        self.seed = int(seed)
        self.adapter_name = adapter_name
        self.draws = draws
        self.init_std = float(init_std)
        self.layers = lora_layers(model, adapter_name)
        self.round: int | None = None
        self.side: str | None = None
        self.history: list[SwitchEvent] = []
        self._warned_no_opt = False

    # ------------------------------------------------------------------ randomness
    def _seeds(self, device=None) -> torch.Tensor:
        return torch.tensor([self.seed], dtype=torch.int64, device=device)

    def coin(self, k: int) -> str:
        """Side of round ``k``: ``'left'`` with probability ``p`` (rng.Stream.COIN, step k)."""
        left = bool(rng.bernoulli(self._seeds(), rng.Stream.COIN, int(k), self.p)[0])
        return LEFT if left else RIGHT

    def draw(self, layer: int, side: str, k: int) -> torch.Tensor:
        r"""The frozen factor of layer ``layer`` in round ``k``, float64 on the CPU.

        ``side='left'``: :math:`B_S` of shape ``(m, r)``; ``'right'``: :math:`A_S`,
        ``(r, n)``. See the module docstring for the two conventions.
        """
        _, module = self.layers[layer]
        A, B = _factors(module, self.adapter_name)
        r, n = A.shape
        m = B.shape[0]
        seeds = self._seeds()
        if self.draws == "real_model":
            if side == LEFT:
                x = rng.normal(seeds, rng.Stream.SKETCH, int(k), (m, r), sub=2 * layer + 1)[0]
            else:
                x = rng.normal(seeds, rng.Stream.SKETCH, int(k), (r, n), sub=2 * layer)[0]
        else:
            # the sketch's tall (dim x r) draw on this layer's sub-stream; 2l / 2l+1
            # reduce to sketches.LEFT / RIGHT for layer 0 (sample_left / sample_right).
            if side == LEFT:
                x = self.sketch._draw(seeds, int(k), m, r, 2 * layer, None, torch.float64)[0]
            else:
                x = self.sketch._draw(seeds, int(k), n, r, 2 * layer + 1, None, torch.float64)[0].T
        return self.init_std * x

    # ------------------------------------------------------------------ parameters
    def factor_parameters(self) -> list[nn.Parameter]:
        """Every ``lora_A`` / ``lora_B`` weight of the adapter: give these to the optimiser."""
        out = []
        for _, module in self.layers:
            A, B = _factors(module, self.adapter_name)
            out += [A, B]
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The factors trained in the current round (A's if left, B's if right)."""
        return [t for t in self.factor_parameters() if t.requires_grad]

    def num_trainable(self) -> int:
        """Scalars trained in the current round (adapter factors only)."""
        return sum(t.numel() for t in self.trainable_parameters())

    # ------------------------------------------------------------------ optimiser
    def _check_optimizer(self, optimizer) -> None:
        held = {id(t) for g in optimizer.param_groups for t in g["params"]}
        missing = []
        for name, module in self.layers:
            for t, f in zip(_factors(module, self.adapter_name), "AB"):
                if id(t) not in held:
                    missing.append(f"{name}.lora_{f}")
        if missing:
            raise ValueError("optimizer does not hold the LoRA factors " + ", ".join(missing[:4])
                             + (" ..." if len(missing) > 4 else "")
                             + "; build it on switcher.factor_parameters() (the trained side changes between rounds)")

    def _reset_state(self, tensors, optimizer, *, warn: bool = False) -> None:
        if self.optimizer_state != "reset":
            return
        if optimizer is None:
            if warn and not self._warned_no_opt:
                warnings.warn("optimizer_state='reset' but no optimizer was passed to step(); state not reset",
                              stacklevel=3)
                self._warned_no_opt = True
            return
        for t in tensors:
            optimizer.state.pop(t, None)

    # ------------------------------------------------------------------ actions
    @torch.no_grad()
    def _start_round(self, k: int, optimizer=None, *, warn: bool = False) -> None:
        side = self.coin(k)
        touched = []
        for l, (_, module) in enumerate(self.layers):
            A, B = _factors(module, self.adapter_name)
            frozen, trained = (B, A) if side == LEFT else (A, B)
            frozen.copy_(self.draw(l, side, k).to(dtype=frozen.dtype, device=frozen.device))
            trained.zero_()
            frozen.requires_grad_(False)
            trained.requires_grad_(True)
            frozen.grad = None
            trained.grad = None
            touched += [A, B]
        self._reset_state(touched, optimizer, warn=warn)
        self.round, self.side = int(k), side

    def merge(self, optimizer=None) -> None:
        r"""Fold :math:`sBA` into every base weight and re-zero the trained factor now.

        The frozen factor and the side are kept (a restart within the round). With
        ``optimizer_state='reset'``, pass ``optimizer`` to drop the trained factor's state.
        """
        self._merge(optimizer, warn=False)

    @torch.no_grad()
    def _merge(self, optimizer, *, warn: bool) -> None:
        if self.round is None:
            raise RuntimeError("call init() before merge()")
        touched = []
        for _, module in self.layers:
            A, B = _factors(module, self.adapter_name)
            _fold(module, self.adapter_name)
            trained = A if self.side == LEFT else B
            trained.zero_()
            trained.grad = None
            touched.append(trained)
        self._reset_state(touched, optimizer, warn=warn)

    def init(self, optimizer=None) -> SwitchEvent:
        """Round 0 before training: coin, frozen draws, zero trained factors, requires_grad.

        Overwrites PEFT's initial factors; since one of them becomes 0 the model's
        function is that of the base model (as with PEFT's own init).
        """
        self._start_round(0, optimizer)
        ev = SwitchEvent(0, False, True, self.round, self.side)
        self.history.append(ev)
        return ev

    def step(self, global_step: int, optimizer=None) -> SwitchEvent | None:
        """Call after the ``global_step``-th ``optimizer.step()`` (``global_step >= 1``).

        Merges when ``global_step % merge_every == 0`` and starts round
        ``global_step // every`` when ``global_step % every == 0``.

        Parameters
        ----------
        global_step : int
            Number of optimiser steps taken so far.
        optimizer : torch.optim.Optimizer, optional
            Needed for ``optimizer_state='reset'``; also checked to hold every factor.

        Returns
        -------
        SwitchEvent or None
            None when nothing was due.
        """
        if self.round is None:
            raise RuntimeError("call init() before the first step()")
        t = int(global_step)
        if t < 1:
            raise ValueError(f"global_step: expected >= 1 (steps taken so far), got {global_step}")
        if optimizer is not None:
            self._check_optimizer(optimizer)
        do_merge, do_switch = t % self.merge_every == 0, t % self.every == 0
        if not do_merge:
            return None
        self._merge(optimizer, warn=True)
        if do_switch:
            self._start_round(t // self.every, optimizer, warn=True)
        ev = SwitchEvent(t, True, do_switch, self.round, self.side)
        self.history.append(ev)
        return ev

    def __repr__(self) -> str:
        return (f"BernoulliLoRASwitcher(p={self.p}, sketch={self.sketch.name!r}, every={self.every}, "
                f"merge_every={self.merge_every}, optimizer_state={self.optimizer_state!r}, seed={self.seed}, "
                f"draws={self.draws!r}, layers={len(self.layers)}, round={self.round}, side={self.side!r})")
