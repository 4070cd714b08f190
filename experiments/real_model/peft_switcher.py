"""Bernoulli-LoRA for ``peft`` LoRA models (compatibility module).

The implementation lives in :mod:`experiments.real_model.bernoulli_peft`; the guide,
the math and the recipes are in ``docs/peft.md``. Everything is re-exported here so
``from experiments.real_model.peft_switcher import BernoulliLoRASwitcher`` keeps working.
"""
from experiments.real_model.bernoulli_peft import (  # noqa: F401
    OPTIMIZER_STATES,
    BernoulliLoRASwitcher,
    SwitchEvent,
    count_trainable,
    export_adapter,
    layer_delta,
    lora_layers,
    merge_all,
    merged_state_dict,
    prepare_bernoulli_lora,
    save_merged,
    trainable_parameter_count,
)
from experiments.real_model.bernoulli_peft.state import LEFT, RIGHT  # noqa: F401

__all__ = ["BernoulliLoRASwitcher", "SwitchEvent", "OPTIMIZER_STATES", "LEFT", "RIGHT",
           "prepare_bernoulli_lora", "export_adapter", "save_merged", "merged_state_dict", "lora_layers", "merge_all",
           "layer_delta", "trainable_parameter_count", "count_trainable"]


def __getattr__(name):
    if name == "BernoulliLoRACallback":
        from experiments.real_model.bernoulli_peft.trainer import BernoulliLoRACallback

        return BernoulliLoRACallback
    raise AttributeError(name)
