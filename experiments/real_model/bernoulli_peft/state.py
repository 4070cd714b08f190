"""State of a Bernoulli-LoRA switcher: events, ``state_dict`` / ``load_state_dict``, the original model."""
from __future__ import annotations

import collections
import contextlib
import dataclasses

import torch

from .layers import factors

__all__ = ["LEFT", "RIGHT", "SwitchEvent", "SwitcherStateMixin"]

LEFT, RIGHT = "left", "right"


@dataclasses.dataclass(frozen=True)
class SwitchEvent:
    """What :meth:`BernoulliLoRASwitcher.step` did at one global step."""

    global_step: int
    merged: bool
    switched: bool
    round: int  # the round in progress after the call
    side: str  # 'left' (B frozen, A trained) or 'right' (A frozen, B trained)


class SwitcherStateMixin:
    """``state_dict`` / ``load_state_dict`` / ``original_model`` of :class:`BernoulliLoRASwitcher`."""

    @contextlib.contextmanager
    def original_model(self):
        """Context: the model computes the function it had at :meth:`init` (reference weights, adapters off).

        PEFT's ``disable_adapter()`` alone switches off only the current round's adapter
        (and ``modules_to_save``): the merged progress lives in the base weights and stays.
        """
        if self.reference is None:
            raise RuntimeError("call init() first")
        saved = [m.get_base_layer().weight.detach().clone() for _, m in self.layers]
        disable = getattr(self.model, "disable_adapter", None)
        cm = disable() if disable is not None else contextlib.nullcontext()
        try:
            with torch.no_grad():
                for (_, m), w in zip(self.layers, self.reference):
                    m.get_base_layer().weight.copy_(w)
            with cm:
                yield self.model
        finally:
            with torch.no_grad():
                for (_, m), w in zip(self.layers, saved):
                    m.get_base_layer().weight.copy_(w)

    # ------------------------------------------------------------------ state
    def state_dict(self, *, weights: bool = True) -> dict:
        """Everything needed to continue the run (round = RNG position; draws are pure functions of it).

        With ``weights=True`` also the driven layers' base weights (holding the merged
        progress, which PEFT's adapter save does not store), factors and the reference.
        """
        if self.round is None:
            raise RuntimeError("call init() before state_dict()")
        out = {"version": 1, "config": self.config(), "layers": [n for n, _ in self.layers],
               "round": self.round, "side": self.side, "last_step": self.last_step,
               "counts": dict(self.counts), "history_size": self.history.maxlen,
               "history": [dataclasses.asdict(e) for e in self.history]}
        if weights:
            out["base"] = [m.get_base_layer().weight.detach().clone() for _, m in self.layers]
            out["A"] = [factors(m, self.adapter_name)[0].detach().clone() for _, m in self.layers]
            out["B"] = [factors(m, self.adapter_name)[1].detach().clone() for _, m in self.layers]
            out["reference"] = [w.clone() for w in self.reference]
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; refuses a different configuration or layer set."""
        for k, v in state["config"].items():
            if self.config().get(k) != v:
                raise ValueError(f"error: {k}: checkpoint has {v!r}, this switcher {self.config().get(k)!r}")
        if state["layers"] != [n for n, _ in self.layers]:
            raise ValueError("error: layers: the checkpoint drives other LoRA layers than this model has")
        self.round, self.side, self.last_step = int(state["round"]), state["side"], int(state["last_step"])
        self.counts = dict(state["counts"])
        self.history = collections.deque((SwitchEvent(**e) for e in state["history"]), maxlen=state["history_size"])
        if "base" in state:
            for l, (_, m) in enumerate(self.layers):
                A, B = factors(m, self.adapter_name)
                m.get_base_layer().weight.copy_(state["base"][l])
                A.copy_(state["A"][l])
                B.copy_(state["B"][l])
            self.reference = [w.clone() for w in state["reference"]]
        for _, m in self.layers:  # roles (PEFT's load_adapter / set_adapter make both trainable)
            A, B = factors(m, self.adapter_name)
            A.requires_grad_(self.side == LEFT)
            B.requires_grad_(self.side == RIGHT)
