r"""Save what Bernoulli-LoRA trained: the merged model, or the change as a PEFT LoRA adapter.

Bernoulli-LoRA keeps its progress in the base weights (every round is folded in), so
PEFT's ``save_pretrained`` of the adapter stores only the current round's factors and
loses the training. The two save paths here do not:

* :func:`save_merged` writes the base model with :math:`W = W_0 + sBA` in every driven
  layer and the trained ``modules_to_save`` copies, loadable with the base class's
  ``from_pretrained``;
* :func:`export_adapter` writes :math:`\Delta = W - W_0^{orig}` (``W_0^{orig}``: the
  folded base at ``init()``) as a plain LoRA adapter,
  :math:`\Delta = B'A'` with :math:`B' = U_q\Sigma_q^{1/2}`, :math:`A' = \Sigma_q^{1/2}V_q^\top`
  from the SVD, ``lora_alpha = r' `` (scaling 1), loadable with
  ``PeftModel.from_pretrained(original_base, path)``. Each round adds rank at most
  ``r`` (its frozen factor fixes the column space (left) or row space (right)), so
  :math:`\mathrm{rank}\,\Delta\le\min(m, n, r\cdot\text{rounds})`; with the default
  ``rank`` the export is exact to round-off, a smaller one truncates and the relative
  Frobenius error :math:`\|\Delta-\Delta_q\|_F/\|\Delta\|_F` of each layer is reported.
"""
from __future__ import annotations

import copy
import json
import os

import torch

from .layers import factors, layer_delta

__all__ = ["merged_state_dict", "save_merged", "export_adapter"]


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def merged_state_dict(switcher) -> dict[str, torch.Tensor]:
    """State dict of the base model with the adapter folded in and PEFT's wrappers removed.

    ``<layer>.base_layer.*`` becomes ``<layer>.*`` (weights plus :math:`sBA`), LoRA
    factors and ``original_module`` copies are dropped, ``modules_to_save.<adapter>.*``
    becomes the module's own keys.
    """
    base = _base_model(switcher.model)
    prefix = {}
    for name, m in switcher.layers:
        key = name.split("base_model.model.", 1)[-1] if name.startswith("base_model.model.") else name
        prefix[key] = m
    out = {}
    adapter_tag = f".modules_to_save.{switcher.adapter_name}."
    for key, value in base.state_dict().items():
        if ".lora_" in key or ".original_module." in key or (".modules_to_save." in key and adapter_tag not in key):
            continue
        key = key.replace(adapter_tag, ".").replace(".base_layer.", ".")
        out[key] = value.detach().clone()
    for key, m in prefix.items():
        out[key + ".weight"] = m.get_base_layer().weight.detach() + layer_delta(m, switcher.adapter_name)
    return out


def save_merged(switcher, path: str, **save_kwargs) -> None:
    """Save the trained model (all merged progress + current round + ``modules_to_save``).

    Uses the base model's ``save_pretrained(path, state_dict=...)`` (transformers
    models; load with ``type(base).from_pretrained(path)``), else ``torch.save`` of the
    state dict to ``path/merged_model.pt``. The live model is not changed.
    """
    sd = merged_state_dict(switcher)
    base = _base_model(switcher.model)
    if hasattr(base, "save_pretrained"):
        base.save_pretrained(path, state_dict=sd, **save_kwargs)
    else:
        os.makedirs(path, exist_ok=True)
        torch.save(sd, os.path.join(path, "merged_model.pt"))


@torch.no_grad()
def export_adapter(switcher, path: str, *, rank: int | None = None) -> dict:
    r"""Write :math:`W - W_0^{orig}` as a PEFT LoRA adapter to ``path``.

    Parameters
    ----------
    switcher : BernoulliLoRASwitcher
        After :meth:`~BernoulliLoRASwitcher.init` (which records :math:`W_0^{orig}`).
    path : str
        Output folder (``adapter_config.json``, ``adapter_model.safetensors``,
        ``bernoulli_lora_export.json`` with the errors).
    rank : int, optional
        Rank :math:`r'` of the exported adapter. Default: ``r * rounds`` (capped at the
        largest ``min(m, n)``), which is exact. A smaller rank is a truncated SVD.

    Returns
    -------
    dict
        ``{'rank': r', 'exact': bool, 'rel_error': {layer: float}, 'max_rel_error': float}``.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if switcher.reference is None:
        raise RuntimeError("call init() before export_adapter()")
    name = switcher.adapter_name
    rounds = switcher.counts["left"] + switcher.counts["right"]
    r = max(factors(m, name)[0].shape[0] for _, m in switcher.layers)
    cap = max(min(factors(m, name)[1].shape[0], factors(m, name)[0].shape[1]) for _, m in switcher.layers)
    q = min(r * rounds, cap) if rank is None else int(rank)
    if q < 1:
        raise ValueError(f"rank: must be >= 1, got {rank}")
    sd = get_peft_model_state_dict(switcher.model, adapter_name=name)
    errors, exact = {}, True
    for (lname, m), w0 in zip(switcher.layers, switcher.reference):
        A, B = factors(m, name)
        w = m.get_base_layer().weight.detach() + layer_delta(m, name)
        delta = (w - w0).to(torch.float64)
        if getattr(m, "fan_in_fan_out", False):
            delta = delta.T  # (out x in) like B @ A
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(q, S.numel())
        root = S[:k].sqrt()
        new_b = torch.zeros(delta.shape[0], q, dtype=torch.float64, device=delta.device)
        new_a = torch.zeros(q, delta.shape[1], dtype=torch.float64, device=delta.device)
        new_b[:, :k] = U[:, :k] * root
        new_a[:k] = root[:, None] * Vh[:k]
        norm = float(S.norm())
        tail = float(S[k:].norm())
        errors[lname] = tail / norm if norm > 0 else 0.0
        exact = exact and (k == S.numel() or q >= r * rounds)
        key = "base_model.model." + lname.split("base_model.model.", 1)[-1]
        sd[key + ".lora_A.weight"] = new_a.to(A.dtype).contiguous()
        sd[key + ".lora_B.weight"] = new_b.to(B.dtype).contiguous()
    cfg = copy.deepcopy(switcher.model.peft_config[name])
    cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.init_lora_weights = q, q, False, True
    cfg.rank_pattern, cfg.alpha_pattern = {}, {}
    os.makedirs(path, exist_ok=True)
    cfg.save_pretrained(path)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, os.path.join(path, "adapter_model.safetensors"))
    report = {"rank": q, "exact": bool(exact), "rel_error": errors, "max_rel_error": max(errors.values())}
    with open(os.path.join(path, "bernoulli_lora_export.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report
