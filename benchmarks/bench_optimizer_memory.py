"""Optimiser-state memory of full AdamW, LoRA, GaLore and Bernoulli-LoRA on a tiny Llama.

    python -m benchmarks.bench_optimizer_memory [--rank 8] [--hidden 256] [--layers 4] [--out FILE]

Bytes are counted, not timed: after one forward/backward and one optimiser step on a
Llama built from a config (float32, CPU), ``state`` is the sum of ``numel * element_size``
of every tensor in ``optimizer.state`` (:func:`solvers.torch_optim.state_bytes`: nested
dicts and objects such as GaLore's projector included), ``adapter`` the bytes of the LoRA
factors the method adds to the model, ``grad`` the bytes of the gradients after
``backward`` (LoRA differentiates only the adapters; GaLore and Bernoulli-LoRA as an
optimiser need the full ``m x n`` gradient of each trained weight, as full AdamW does).
``ratio`` is (state + adapter) relative to LoRA. Apart from the first row every method
trains the same weights: the seven projections of each decoder layer (q, k, v, o, gate,
up, down). Bernoulli-LoRA's state depends on the side of the round (left: ``r x n``
moments per weight, right: ``m x r``), so both are shown (p = 1 and p = 0).

galore-torch 1.0's ``__init__`` imports bitsandbytes (for its 8-bit variant); when that is
missing, only ``galore_torch/adamw.py`` (and the projector) is loaded.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from experiments.real_model.lm.methods import galore_adamw
from experiments.real_model.lm.model import TARGETS
from resultstore.files import atomic_write, text_writer
from solvers.torch_optim import BernoulliLoRAOptimizer, state_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(hidden: int, layers: int, seed: int = 0):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 8 * 8,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                   max_position_embeddings=128)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg)


def targets(model):
    return [m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS]


def only_train(model, params):
    ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)


def one_step(model, opt, ids):
    model(input_ids=ids, labels=ids).loss.backward()
    grad = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    opt.step()
    return grad


def measure(args):
    ids = torch.arange(2 * 32).reshape(2, 32) * 37 % 1000
    rows, notes = [], []
    r = args.rank

    def add(name, model, opt, adapter_bytes=0, trainable=None):
        grad = one_step(model, opt, ids)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if trainable is None else trainable
        rows.append(dict(method=name, trainable=trainable, state=state_bytes(opt), adapter=adapter_bytes, grad=grad))

    model = build(args.hidden, args.layers)
    add("full AdamW (all parameters)", model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    model = build(args.hidden, args.layers)
    only_train(model, targets(model))
    add("full AdamW (target weights)", model, torch.optim.AdamW(targets(model), lr=1e-4))

    import peft

    from experiments.real_model.peft_switcher import BernoulliLoRASwitcher
    lcfg = dict(r=r, lora_alpha=2 * r, target_modules=list(TARGETS), lora_dropout=0.0)
    pm = peft.get_peft_model(build(args.hidden, args.layers), peft.LoraConfig(**lcfg))
    lora = [p for n, p in pm.named_parameters() if "lora_" in n]
    add(f"LoRA r={r} (PEFT, AdamW on A and B)", pm, torch.optim.AdamW(lora, lr=1e-4),
        adapter_bytes=sum(p.numel() * p.element_size() for p in lora))
    for p_left, side in ((1.0, "left"), (0.0, "right")):
        pm = peft.get_peft_model(build(args.hidden, args.layers), peft.LoraConfig(**lcfg))
        sw = BernoulliLoRASwitcher(pm, p=p_left, seed=0)
        sw.init()
        fac = sw.factor_parameters()
        add(f"Bernoulli-LoRA r={r} PEFT path, {side} round", pm, torch.optim.AdamW(fac, lr=1e-4),
            adapter_bytes=sum(p.numel() * p.element_size() for p in fac))

    Galore, how = galore_adamw()
    notes.append(f"GaLore: {how}")
    if Galore is not None:
        model = build(args.hidden, args.layers)
        only_train(model, targets(model))
        opt = Galore([{"params": targets(model), "rank": r, "update_proj_gap": 200, "scale": 0.25,
                       "proj_type": "std"}], lr=1e-4, no_deprecation_warning=True)
        add(f"GaLore r={r} (AdamW, projector included)", model, opt)

    for p_left, side in ((1.0, "left"), (0.0, "right")):
        for cache in (True, False):
            model = build(args.hidden, args.layers)
            only_train(model, targets(model))
            opt = BernoulliLoRAOptimizer(targets(model), lr=1e-4, rank=r, scale=2.0, p=p_left, cache_sketch=cache)
            add(f"Bernoulli-LoRA optimiser r={r}, {side} round, cache_sketch={cache}", model, opt)
    return rows, notes


def table(rows) -> str:
    lora = next(row for row in rows if row["method"].startswith("LoRA"))
    base = lora["state"] + lora["adapter"]
    head = f"{'method':<58} {'trainable':>10} {'state_B':>10} {'adapter_B':>10} {'grad_B':>10} {'ratio_to_LoRA':>13}"
    lines = [head, "-" * len(head)]
    for row in rows:
        ratio = (row["state"] + row["adapter"]) / base
        lines.append(f"{row['method']:<58} {row['trainable']:>10} {row['state']:>10} {row['adapter']:>10} "
                     f"{row['grad']:>10} {ratio:>13.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=None, help="also write the output to this file")
    args = ap.parse_args(argv)
    import peft
    import transformers
    torch.set_num_threads(1)
    rows, notes = measure(args)
    text = "\n".join([
        f"# bench_optimizer_memory: LlamaForCausalLM(hidden={args.hidden}, layers={args.layers}, vocab=1000), "
        f"float32, rank {args.rank}, targets {','.join(TARGETS)}",
        f"# torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        *[f"# {n}" for n in notes],
        "# bytes after one step; ratio_to_LoRA = (state_B + adapter_B) / LoRA's (state_B + adapter_B)",
        table(rows), ""])
    print(text, end="")
    if args.out:
        atomic_write(args.out, text_writer(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
