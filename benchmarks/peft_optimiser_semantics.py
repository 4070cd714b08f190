"""Optimiser semantics of Bernoulli-LoRA on a peft model: a small measured comparison (CPU).

Task: a peft LoRA MLP (16 -> 32 -> 32 -> 4, r = 2, all three layers) fits a fixed
random linear-plus-tanh teacher on 256 points (full-batch MSE, 200 steps, float64).
Settings: per-step switching (every = 1) and per-round switching (every = 20) with SGD,
AdamW 'reset', 'keep', 'reset_on_side_change'; for each, the best lr of a small grid
(by mean final loss over 3 seeds; nan = diverged). Also measured: for every = 1 with AdamW 'reset',
the fraction of trained entries whose step has |delta| within 1% of lr (sign descent).

    python -m benchmarks.peft_optimiser_semantics > paper_results/cpu/peft_optim_semantics.txt
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from experiments.real_model.bernoulli_peft import prepare_bernoulli_lora

STEPS, SEEDS = 200, (0, 1, 2)
GRIDS = {"sgd": (0.3, 1.0, 3.0, 10.0), "adamw": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}
SETTINGS = [(1, "sgd", "reset"), (1, "adamw", "reset"), (1, "adamw", "keep"), (1, "adamw", "reset_on_side_change"),
            (20, "sgd", "reset"), (20, "adamw", "reset"), (20, "adamw", "keep"), (20, "adamw", "reset_on_side_change")]


def task():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(256, 16, generator=g, dtype=torch.float64)
    w = torch.randn(16, 4, generator=g, dtype=torch.float64) / 4
    return x, torch.tanh(x @ w) + 0.1 * x[:, :4]


def model(seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1000 + seed)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    return get_peft_model(net, LoraConfig(r=2, lora_alpha=2, lora_dropout=0.0, target_modules=["0", "2", "4"]))


def run(every, opt_name, state, lr, seed, x, y, sign_probe=False):
    m = model(seed)
    sw = prepare_bernoulli_lora(m, p=0.5, every=every, seed=seed, optimizer_state=state)
    cls = torch.optim.SGD if opt_name == "sgd" else torch.optim.AdamW
    kw = {"weight_decay": 0.0} if opt_name == "adamw" else {}
    opt = sw.create_optimizer(cls, lr=lr, **kw)
    frac = []
    for t in range(1, STEPS + 1):
        loss = ((m(x) - y) ** 2).mean()
        loss.backward()
        before = [q.detach().clone() for q in sw.trained_factors()]
        opt.step()
        if sign_probe:
            d = torch.cat([(q.detach() - b).flatten() for q, b in zip(sw.trained_factors(), before)])
            frac.append(float(((d.abs() - lr).abs() <= 0.01 * lr).double().mean()))
        opt.zero_grad()
        sw.step(t, opt)
    with torch.no_grad():
        final = float(((m(x) - y) ** 2).mean())
    return final, (sum(frac) / len(frac) if frac else None)


def main():
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    x, y = task()
    with torch.no_grad():
        init = sum(float(((model(s)(x) - y) ** 2).mean()) for s in SEEDS) / len(SEEDS)
    print(f"# peft Bernoulli-LoRA optimiser semantics: MLP 16-32-32-4, r=2, p=0.5, {STEPS} full-batch steps, "
          f"seeds {SEEDS}, float64, CPU")
    print(f"# initial loss (mean over seeds): {init:.6f}")
    print("every\toptimizer\toptimizer_state\tbest_lr\tfinal_loss_mean\tfinal_loss_per_seed\tlosses_per_lr")
    for every, opt_name, state in SETTINGS:
        per_lr = {}
        for lr in GRIDS[opt_name]:
            per_lr[lr] = [run(every, opt_name, state, lr, s, x, y)[0] for s in SEEDS]
        best = min(per_lr, key=lambda k: math.inf if math.isnan(sum(per_lr[k])) else sum(per_lr[k]))  # nan: diverged
        mean = sum(per_lr[best]) / len(SEEDS)
        lrs = ";".join(f"{k:g}:{sum(v) / len(v):.6f}" for k, v in per_lr.items())
        print(f"{every}\t{opt_name}\t{state}\t{best:g}\t{mean:.6f}\t{','.join(f'{v:.6f}' for v in per_lr[best])}\t{lrs}")
    _, frac = run(1, "adamw", "reset", 1e-2, 0, x, y, sign_probe=True)
    _, frac20 = run(20, "adamw", "reset", 1e-2, 0, x, y, sign_probe=True)
    print(f"# sign descent probe (lr=0.01, seed 0): fraction of trained entries with |step| within 1% of lr: "
          f"every=1 reset {frac:.4f}; every=20 reset {frac20:.4f}")


if __name__ == "__main__":
    main()
