r"""The Bernoulli-LoRA switcher for PEFT LoRA models (math and usage: ``docs/peft.md``).

Rounds: at the start of round :math:`k` a coin :math:`c_k\sim\mathrm{Bernoulli}(p)`
picks, for all layers at once, the **left** sketch (:math:`B=B_S` drawn and frozen,
:math:`A` trained from 0) or the **right** sketch (:math:`A=A_S` drawn and frozen,
:math:`B` trained from 0). A merge folds :math:`W_0\leftarrow W_0+sBA` and re-zeroes the
trained factor, so merging and restarting never change the model's function.
``step(t)`` is called after the ``t``-th optimiser step: merge when
``t % merge_every == 0``, start round ``t // every`` when ``t % every == 0``.

Every draw is a pure function of ``(seed, round k, layer l)`` (:mod:`solvers.rng`): the
coin is ``rng.bernoulli([seed], Stream.COIN, k, p)``; ``draws='sketch'`` uses the
:mod:`solvers.sketches` distribution on sub-stream ``2l`` (left, :math:`B_S`, ``m x r``)
/ ``2l+1`` (right, :math:`A_S` drawn ``n x r`` and transposed); ``draws='real_model'``
the convention of :mod:`experiments.real_model.methods`. So the "RNG position" of a run
is its round: :meth:`state_dict` stores it and nothing else is needed to continue the draws.
"""
from __future__ import annotations

import collections
import warnings

import torch
from torch import nn

from solvers.sketches import make_sketch
from solvers.torch_optim import coin_side, frozen_factor

from .layers import factors, fold, lora_layers
from .state import LEFT, RIGHT, SwitchEvent, SwitcherStateMixin

__all__ = ["BernoulliLoRASwitcher", "SwitchEvent", "OPTIMIZER_STATES", "LEFT", "RIGHT"]

OPTIMIZER_STATES = ("reset", "keep", "reset_on_side_change")
_CONFIG = ("p", "sketch", "every", "merge_every", "optimizer_state", "seed", "adapter_name", "draws", "init_std")


class BernoulliLoRASwitcher(SwitcherStateMixin):
    r"""Drive a PEFT LoRA model through Bernoulli-LoRA rounds.

    Build it with :func:`experiments.real_model.bernoulli_peft.prepare_bernoulli_lora`
    (folds a non-zero initial adapter, then :meth:`init`), or construct it and call
    :meth:`init` yourself.

    Parameters
    ----------
    model : torch.nn.Module
        A ``peft`` model (``PeftModel`` / ``LoraModel`` / any module with LoRA layers).
        The driven adapter must be the active one.
    p : float
        Probability of the **left** sketch (``B`` sampled and frozen, ``A`` trained).
        ``p = 1`` / ``0`` is RAC-LoRA.
    sketch : str
        Sketch distribution of :mod:`solvers.sketches` for ``draws='sketch'``.
    every : int
        Switch (new coin, new frozen draw, zero trained factor) every ``every`` steps.
    merge_every : int or None
        Merge every ``merge_every`` steps; ``None`` means ``every``. ``every`` must be a
        multiple of it.
    optimizer_state : {'reset', 'keep', 'reset_on_side_change'}
        Optimiser state (Adam moments, momentum) of the factors: ``'reset'`` drops the
        state of every re-initialised tensor (trained factor at a merge, both at a
        switch); ``'keep'`` never touches it (each factor keeps its own moments across
        rounds, stale after a change of frozen partner); ``'reset_on_side_change'`` drops
        both factors' state at a switch whose side differs from the previous round's.
        With ``'reset'`` and ``merge_every = 1`` Adam is restarted every step and becomes
        sign descent (``docs/peft.md``, *Optimiser semantics*); a warning says so.
    seed : int
        The run's seed.
    adapter_name : str
        The PEFT adapter to drive.
    draws : {'sketch', 'real_model'}
        Sampling convention (module docstring).
    init_std : float
        Multiplier of every frozen draw.
    history_size : int
        Number of most recent :class:`SwitchEvent` kept in :attr:`history`.

    Attributes
    ----------
    layers : list of (str, peft.tuners.lora.Linear)
    round, side : int, str (None before :meth:`init`)
    history : collections.deque of SwitchEvent
        The last ``history_size`` events; :attr:`counts` has the totals.
    counts : dict
        ``{'left': rounds, 'right': rounds, 'merges': merges}`` since :meth:`init`.
    extra_parameters : list of torch.nn.Parameter
        Trainable parameters that are not LoRA factors of the adapter (PEFT's
        ``modules_to_save`` copies, LoRA biases), recorded at construction: the
        optimiser must train them too (:meth:`trainable_parameters`).
    """

    def __init__(self, model: nn.Module, *, p: float, sketch: str = "gaussian", every: int = 1,
                 merge_every: int | None = None, optimizer_state: str = "reset", seed: int = 0,
                 adapter_name: str = "default", draws: str = "sketch", init_std: float = 1.0,
                 history_size: int = 100):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p: must lie in [0, 1], got {p}")
        every = int(every)
        merge_every = every if merge_every is None else int(merge_every)
        if every < 1 or merge_every < 1:
            raise ValueError(f"every / merge_every: must be >= 1, got {every} / {merge_every}")
        if every % merge_every:
            raise ValueError(f"every ({every}) must be a multiple of merge_every ({merge_every}): a switch "
                             "without a merge would discard the round's progress")
        if optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(f"optimizer_state: expected one of {OPTIMIZER_STATES}, got {optimizer_state!r}")
        if draws not in ("sketch", "real_model"):
            raise ValueError(f"draws: expected 'sketch' or 'real_model', got {draws!r}")
        if int(history_size) < 1:
            raise ValueError(f"history_size: must be >= 1, got {history_size}")
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
        self._check_active()
        fac = {id(t) for _, m in self.layers for t in factors(m, adapter_name)}
        self.extra_parameters = [q for q in model.parameters() if q.requires_grad and id(q) not in fac]
        self.round: int | None = None
        self.side: str | None = None
        self.last_step = 0
        self.history: collections.deque = collections.deque(maxlen=int(history_size))
        self.counts = {LEFT: 0, RIGHT: 0, "merges": 0}
        self.reference: list[torch.Tensor] | None = None  # W0_original, see snapshot_reference()
        self._warned = set()

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """The constructor arguments that define the trajectory (stored by :meth:`state_dict`)."""
        out = {k: getattr(self, k) for k in _CONFIG}
        out["sketch"] = self.sketch.name
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"BernoulliLoRASwitcher({args}, layers={len(self.layers)}, round={self.round}, side={self.side!r})"

    # ------------------------------------------------------------------ randomness
    def coin(self, k: int) -> str:
        """Side of round ``k``: ``'left'`` with probability ``p`` (rng.Stream.COIN, step k);
        the same rule as the optimiser form (:func:`solvers.torch_optim.coin_side`)."""
        return coin_side(self.seed, k, self.p)

    def draw(self, layer: int, side: str, k: int) -> torch.Tensor:
        """The frozen factor of layer ``layer`` in round ``k`` (float64, CPU): ``B_S`` (m x r) or
        ``A_S`` (r x n); the same draw as the optimiser form (:func:`solvers.torch_optim.frozen_factor`)."""
        A, B = factors(self.layers[layer][1], self.adapter_name)
        return frozen_factor(self.seed, k, layer, side, (B.shape[0], A.shape[1]), A.shape[0], sketch=self.sketch,
                             draws=self.draws, init_std=self.init_std)

    # ------------------------------------------------------------------ parameters
    def factor_parameters(self) -> list[nn.Parameter]:
        """Every ``lora_A`` / ``lora_B`` weight of the adapter (both sides, all rounds)."""
        return [t for _, m in self.layers for t in factors(m, self.adapter_name)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser must hold: :meth:`factor_parameters` + :attr:`extra_parameters`."""
        return self.factor_parameters() + list(self.extra_parameters)

    def trained_factors(self) -> list[nn.Parameter]:
        """The factors trained in the current round (the ``A``'s if left, the ``B``'s if right)."""
        return [t for t in self.factor_parameters() if t.requires_grad]

    def num_trainable(self) -> int:
        """Scalars trained in the current round (trained factors + extra parameters)."""
        return sum(t.numel() for t in self.trained_factors() + self.extra_parameters)

    def create_optimizer(self, optimizer_cls=torch.optim.SGD, **kwargs) -> torch.optim.Optimizer:
        """``optimizer_cls(self.trainable_parameters(), **kwargs)`` (the recipe's optimiser)."""
        return optimizer_cls(self.trainable_parameters(), **kwargs)

    # ------------------------------------------------------------------ guards
    def _check_active(self) -> None:
        for name, module in self.layers:
            if self.adapter_name not in module.active_adapters:
                raise ValueError(f"adapter_name: {self.adapter_name!r} is not the active adapter of layer {name!r} "
                                 f"(active: {list(module.active_adapters)}); call model.set_adapter() before "
                                 "building the switcher, or it would train nothing")

    def check_model(self) -> None:
        """Refuse (RuntimeError) when PEFT calls changed the model under the switcher.

        Detects ``set_adapter`` (roles reset or another adapter active),
        ``merge_adapter`` (adapter merged by PEFT) and a step taken inside
        ``disable_adapter()``; each would silently train nothing or double-count.
        """
        for name, module in self.layers:
            if self.adapter_name not in module.active_adapters:
                raise RuntimeError(f"adapter {self.adapter_name!r} is no longer active in {name!r} (set_adapter to "
                                   f"{list(module.active_adapters)}?); the switcher would train nothing")
            if getattr(module, "merged_adapters", []):
                raise RuntimeError(f"layer {name!r} has adapters {module.merged_adapters} merged by PEFT "
                                   "(merge_adapter()); this double-counts the adapter: call unmerge_adapter() "
                                   "and use switcher.merge() instead")
            if getattr(module, "disable_adapters", False):
                raise RuntimeError(f"layer {name!r}: adapters are disabled (inside disable_adapter()?); "
                                   "the step would train nothing")
            A, B = factors(module, self.adapter_name)
            want_a = self.side == LEFT
            if A.requires_grad != want_a or B.requires_grad == want_a:
                raise RuntimeError(f"layer {name!r}: requires_grad of lora_A/lora_B is {A.requires_grad}/"
                                   f"{B.requires_grad}, round {self.round} trains only {'A' if want_a else 'B'} "
                                   "(set_adapter() or requires_grad_() called after init?)")

    def _check_optimizer(self, optimizer) -> None:
        held = {id(t) for g in optimizer.param_groups for t in g["params"]}
        missing = [t for t in self.trainable_parameters() if id(t) not in held]
        if missing:
            names = {id(q): n for n, q in self.model.named_parameters()}
            missing = [names.get(id(t), "?") for t in missing]
            raise ValueError("optimizer does not hold " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
                             + "; build it on switcher.trainable_parameters() (the trained side changes "
                             "between rounds; modules_to_save must be trained too)")
        adam = "betas" in optimizer.defaults
        if adam and self.optimizer_state == "reset" and self.merge_every == 1 and "sign" not in self._warned:
            self._warned.add("sign")
            warnings.warn("optimizer_state='reset' with a merge every step restarts Adam at every step: its first "
                          "step is lr*g/(|g|+eps), i.e. sign descent (every entry moves by ~lr). Use SGD for "
                          "per-step switching, or every>1 with AdamW (docs/peft.md, Optimiser semantics).",
                          stacklevel=3)

    def _reset_state(self, tensors, optimizer) -> None:
        if optimizer is None:
            if self.round is not None and self.optimizer_state != "keep" and "noopt" not in self._warned:
                self._warned.add("noopt")
                warnings.warn(f"optimizer_state={self.optimizer_state!r} but no optimizer was passed; "
                              "state not reset", stacklevel=4)
            return
        for t in tensors:
            optimizer.state.pop(t, None)

    # ------------------------------------------------------------------ actions
    @torch.no_grad()
    def _start_round(self, k: int, optimizer=None) -> None:
        side, previous = self.coin(k), self.side
        touched = []
        for l, (_, module) in enumerate(self.layers):
            A, B = factors(module, self.adapter_name)
            frozen, trained = (B, A) if side == LEFT else (A, B)
            frozen.copy_(self.draw(l, side, k).to(dtype=frozen.dtype, device=frozen.device))
            trained.zero_()
            frozen.requires_grad_(False)
            trained.requires_grad_(True)
            frozen.grad = trained.grad = None
            touched += [A, B]
        if self.optimizer_state == "reset" or (self.optimizer_state == "reset_on_side_change" and side != previous):
            self._reset_state(touched, optimizer)
        self.round, self.side = int(k), side
        self.counts[side] += 1

    def merge(self, optimizer=None) -> None:
        r"""Fold :math:`sBA` into every base weight and re-zero the trained factor now (same round)."""
        if self.round is None:
            raise RuntimeError("call init() before merge()")
        self._merge(optimizer)

    @torch.no_grad()
    def _merge(self, optimizer) -> None:
        touched = []
        for _, module in self.layers:
            A, B = factors(module, self.adapter_name)
            fold(module, self.adapter_name)
            trained = A if self.side == LEFT else B
            trained.zero_()
            trained.grad = None
            touched.append(trained)
        if self.optimizer_state == "reset":
            self._reset_state(touched, optimizer)
        self.counts["merges"] += 1

    @torch.no_grad()
    def snapshot_reference(self) -> None:
        """Record :math:`W_0^{orig}` (the base weights now) for :func:`export_adapter`."""
        self.reference = [m.get_base_layer().weight.detach().clone() for _, m in self.layers]

    @torch.no_grad()
    def init(self, optimizer=None) -> SwitchEvent:
        """Round 0: fold the current adapter into the base, then coin, frozen draws, zero trained factors.

        Folding first makes ``init()`` keep the model's function whatever the adapter
        held (PiSSA / OLoRA / LoftQ initialisations, an adapter loaded from disk; PEFT's
        default zero ``B`` folds to nothing). The folded base is the reference
        :math:`W_0^{orig}` of :func:`export_adapter`.
        """
        for name, module in self.layers:
            if getattr(module, "merged_adapters", []):
                raise RuntimeError(f"layer {name!r} is merged by PEFT (merge_adapter()); unmerge it before init()")
            fold(module, self.adapter_name)
        self.snapshot_reference()
        self.counts = {LEFT: 0, RIGHT: 0, "merges": 0}
        self.history.clear()
        self.round = self.side = None
        self._start_round(0, optimizer)
        self.last_step = 0
        ev = SwitchEvent(0, False, True, self.round, self.side)
        self.history.append(ev)
        return ev

    def step(self, global_step: int, optimizer=None) -> SwitchEvent | None:
        """Call after the ``global_step``-th ``optimizer.step()`` (``global_step >= 1``).

        Merges when ``global_step % merge_every == 0`` and starts round
        ``global_step // every`` when ``global_step % every == 0``. Refuses a model
        changed by PEFT calls (:meth:`check_model`) and an optimiser that does not hold
        :meth:`trainable_parameters`.

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
        if t <= self.last_step:
            raise ValueError(f"global_step: {t} was already stepped (last step {self.last_step})")
        self.check_model()
        if optimizer is not None:
            self._check_optimizer(optimizer)
        self.last_step = t
        if t % self.merge_every:
            return None
        self._merge(optimizer)
        switched = t % self.every == 0
        if switched:
            self._start_round(t // self.every, optimizer)
        ev = SwitchEvent(t, True, switched, self.round, self.side)
        self.history.append(ev)
        return ev
