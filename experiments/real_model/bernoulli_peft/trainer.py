"""The ``transformers.Trainer`` callback of Bernoulli-LoRA (entry point: ``prepare_bernoulli_lora``)."""
from __future__ import annotations

import os

import torch

from resultstore.files import atomic_write

from .switcher import BernoulliLoRASwitcher

__all__ = ["BernoulliLoRACallback", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "bernoulli_lora_state.pt"


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class BernoulliLoRACallback(_callback_base()):
    """``transformers.TrainerCallback`` driving a :class:`BernoulliLoRASwitcher`.

    * ``on_train_begin``: checks the Trainer's optimiser holds
      ``switcher.trainable_parameters()`` (pass ``optimizers=(sw.create_optimizer(...),
      None)``: the Trainer's own optimiser would hold only round 0's trained side); when
      resuming (``state.global_step > 0``) restores the switcher and the driven layers'
      base weights and factors from ``<checkpoint>/bernoulli_lora_state.pt``.
    * ``on_step_end``: ``switcher.step(state.global_step, optimizer)``.
    * ``on_save``: writes ``switcher.state_dict()`` (incl. the base weights holding the
      merged progress, which the Trainer's PEFT adapter save does not store) into the
      checkpoint folder.
    * ``load_best_model_at_end=True`` is refused (the Trainer would reload only the
      best checkpoint's adapter, mixing it with the last run's base weights).

    Parameters
    ----------
    switcher : BernoulliLoRASwitcher
    resume_dir : str, optional
        Checkpoint folder to restore from; default
        ``<output_dir>/checkpoint-<global_step>`` (where the Trainer saved it).
    """

    def __init__(self, switcher: BernoulliLoRASwitcher, *, resume_dir: str | None = None):
        self.switcher = switcher
        self.resume_dir = resume_dir

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if getattr(args, "load_best_model_at_end", False):
            raise ValueError("error: load_best_model_at_end: the Trainer would reload only the PEFT adapter of the "
                             "best checkpoint, not its merged base weights; restore "
                             "<checkpoint>/bernoulli_lora_state.pt with switcher.load_state_dict() instead")
        if state.global_step > 0 and self.switcher.last_step != state.global_step:
            folder = self.resume_dir or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            path = os.path.join(folder, CHECKPOINT_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"resume: {path} not found; the Bernoulli-LoRA progress (base weights) "
                                        "cannot be restored; pass BernoulliLoRACallback(sw, resume_dir=...)")
            self.switcher.load_state_dict(torch.load(path, weights_only=False, map_location="cpu"))
        if optimizer is not None:
            self.switcher._check_optimizer(optimizer)
        self.switcher.check_model()

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.switcher.step(state.global_step, optimizer)

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        state_dict = self.switcher.state_dict()
        atomic_write(os.path.join(folder, CHECKPOINT_FILE), lambda tmp: torch.save(state_dict, tmp))
