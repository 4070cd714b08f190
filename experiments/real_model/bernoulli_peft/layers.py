r"""PEFT LoRA layers as seen by Bernoulli-LoRA: discovery, factors, folding.

A PEFT LoRA ``Linear`` computes :math:`y = W_0 x + b + s\,BAx` with
``lora_A.weight`` :math:`=A\in\mathbb{R}^{r\times n}` and ``lora_B.weight``
:math:`=B\in\mathbb{R}^{m\times r}`, :math:`s` = ``scaling`` (:math:`\alpha/r`, or
:math:`\alpha/\sqrt r` with rsLoRA). With ``fan_in_fan_out`` (GPT-2's ``Conv1D``) the
base weight is stored transposed, ``n x m``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["lora_layers", "merge_all", "trainable_parameter_count", "count_trainable", "layer_delta"]


def _lora_types():
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError as err:  # pragma: no cover - peft is an optional dependency
        raise ImportError("bernoulli_peft needs `peft` (pip install 'bernoulli-lora[peft]')") from err
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


def factors(module, adapter_name):
    """(A (r x n), B (m x r)) weight tensors of one layer.

    Read from the registries (``_modules`` / ``_parameters``), the same objects as
    ``module.lora_A[adapter_name].weight``: the switcher calls this for every layer at
    every step, and ``nn.Module.__getattr__`` made it most of the step's overhead."""
    mods = module._modules
    return (mods["lora_A"]._modules[adapter_name]._parameters["weight"],
            mods["lora_B"]._modules[adapter_name]._parameters["weight"])


def layer_delta(module, adapter_name) -> torch.Tensor:
    r""":math:`s\,BA` in the base weight's storage layout (transposed for ``fan_in_fan_out``)."""
    A, B = factors(module, adapter_name)
    weight = module.get_base_layer().weight
    delta = (B @ A).to(weight.dtype) * float(module.scaling[adapter_name])
    return delta.T if getattr(module, "fan_in_fan_out", False) else delta


def fold(module, adapter_name) -> None:
    r"""In place: :math:`W_0 \leftarrow W_0 + s\,BA` (transposed for ``fan_in_fan_out``)."""
    module.get_base_layer().weight.add_(layer_delta(module, adapter_name))


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
        A, B = factors(module, adapter_name)
        fold(module, adapter_name)
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
