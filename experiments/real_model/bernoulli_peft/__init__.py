"""Bernoulli-LoRA for ``peft`` LoRA models: switcher, Trainer callback, save / export.

Entry point: :func:`prepare_bernoulli_lora`; guide: ``docs/peft.md``.
"""
from .export import export_adapter, merged_state_dict, save_merged
from .layers import count_trainable, layer_delta, lora_layers, merge_all, trainable_parameter_count
from .switcher import OPTIMIZER_STATES, BernoulliLoRASwitcher, SwitchEvent

__all__ = ["prepare_bernoulli_lora", "BernoulliLoRASwitcher", "BernoulliLoRACallback", "SwitchEvent",
           "OPTIMIZER_STATES", "export_adapter", "save_merged", "merged_state_dict", "lora_layers", "merge_all",
           "layer_delta", "trainable_parameter_count", "count_trainable"]


def prepare_bernoulli_lora(model, *, p: float, **kwargs) -> BernoulliLoRASwitcher:
    """Make a PEFT LoRA model a Bernoulli-LoRA model; return its started switcher.

    Builds :class:`BernoulliLoRASwitcher` (``p`` and ``kwargs`` are its arguments) and
    calls :meth:`~BernoulliLoRASwitcher.init`: the current adapter (zero, PiSSA, OLoRA,
    LoftQ, loaded from disk) is folded into the base so the model's function is
    unchanged, the folded base is recorded as :math:`W_0^{orig}`, round 0 starts.

    Then train with ``sw.create_optimizer(...)`` and ``sw.step(t, opt)`` after each
    optimiser step (plain loop), or ``Trainer(..., optimizers=(sw.create_optimizer(...),
    None), callbacks=[BernoulliLoRACallback(sw)])``. See ``docs/peft.md``.
    """
    sw = BernoulliLoRASwitcher(model, p=p, **kwargs)
    sw.init()
    return sw


def __getattr__(name):  # transformers is imported only when the Trainer parts are used
    if name in ("BernoulliLoRACallback", "CHECKPOINT_FILE"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
