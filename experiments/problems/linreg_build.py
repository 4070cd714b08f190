"""Build and cache of the paper's linreg problem (:mod:`experiments.problems.linreg`):
the sizes and their parameters, the variants' constants, the data (pretraining moments,
pretraining GD for W0, fine-tuning data) and the on-disk cache. The mathematics is in
the module docstring of :mod:`experiments.problems.linreg`."""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
from pathlib import Path

import numpy as np
import torch

from experiments.problems import datagen
from resultstore.files import atomic_write
from solvers.linalg import row_sum

DTYPE = torch.float64
_FORMAT = 1  # bump when the cached content or the build changes

_PAPER = dict(
    m=64, n=64,
    pre_n_samples=90000, pre_n_informative=4096, pre_noise=20.0, pre_bias=0.0,
    pre_tail_strength=0.8, pre_effective_rank=64, pre_seed=42,
    ft_n_samples=10000, ft_n_informative=2048, ft_noise=50.0, ft_bias=10.0,
    ft_tail_strength=0.9, ft_effective_rank=32, ft_seed=84,
    ft_mean=1.0, ft_std=2.0,
    init_seed=45, pre_tol=1e-8, pre_max_steps=10000,
)
SIZES = {
    "paper": _PAPER,
    "ci": dict(_PAPER, m=8, n=8, pre_n_samples=900, pre_n_informative=64, pre_effective_rank=8,
               ft_n_samples=200, ft_n_informative=32, ft_effective_rank=4),
}
#: ``stated``: the paper's f; ``authors``: its code (see the module docstring, "Variants")
VARIANTS = ("stated", "authors")
#: the factor on :math:`A^\top b/N` in each variant's FULL gradient (pretraining and fine-tuning)
GRAD_LINEAR_FACTOR = {"stated": 1.0, "authors": 2.0}
#: the pretraining start of the authors' code (its caller overrides the default seed 45)
AUTHORS_INIT_SEED = 42
_INT_FIELDS = {"m": 1, "n": 1, "pre_n_samples": 1, "pre_n_informative": 0, "pre_effective_rank": 1,
               "pre_seed": 0, "ft_n_samples": 1, "ft_n_informative": 0, "ft_effective_rank": 1,
               "ft_seed": 0, "init_seed": 0, "pre_max_steps": 0}
_REAL_FIELDS = {"pre_noise": (0.0, None), "pre_bias": (None, None), "pre_tail_strength": (0.0, 1.0),
                "ft_noise": (0.0, None), "ft_bias": (None, None), "ft_tail_strength": (0.0, 1.0),
                "ft_mean": (None, None), "ft_std": (0.0, None), "pre_tol": (0.0, None)}


def resolve_config(size, overrides, variant="stated"):
    """The build parameters. The authors' variant starts its pretraining from seed
    :data:`AUTHORS_INIT_SEED` unless ``init_seed`` is given, and records ``variant`` (the
    stated problem's parameters, hence its cache key, carry no ``variant``)."""
    if size not in SIZES:
        raise ValueError(f"problem.size: unknown linreg size {size!r}; choose one of {sorted(SIZES)}")
    if variant not in VARIANTS:
        raise ValueError(f"problem.variant: must be one of {list(VARIANTS)}, got {variant!r}")
    cfg = dict(SIZES[size])
    if variant != "stated":
        cfg["init_seed"] = AUTHORS_INIT_SEED
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"problem.{key}: not a parameter of linreg (it takes size, variant, device, cache_dir, "
                             f"{', '.join(sorted(cfg))})")
        if key in _INT_FIELDS:
            low = _INT_FIELDS[key]
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"problem.{key}: must be an integer >= {low}, got {value!r}")
            value = int(value)
        else:
            low, high = _REAL_FIELDS[key]
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (low is not None and value < low) or (high is not None and value > high):
                lim = f" in [{low}, {high}]" if high is not None else (f" >= {low}" if low is not None else "")
                raise ValueError(f"problem.{key}: must be a finite number{lim}, got {value!r}")
            if key == "ft_std" and value == 0:
                raise ValueError(f"problem.{key}: must be > 0, got {value!r}")
            value = float(value)
        cfg[key] = value
    if variant != "stated":
        cfg["variant"] = variant
    return cfg


def reg(X):
    return row_sum(X * X / (1.0 + X * X))


def reg_grad(X):
    return 2.0 * X / (1.0 + X * X) ** 2


def lambda_max(Q):
    return float(torch.linalg.eigvalsh(Q)[-1])


def _symmetric(G):
    return 0.5 * (G + G.T)


# ----------------------------------------------------------------------------- build

def pretrain_moments(cfg, dev, d):
    """Q_pre, c_pre of the standardised pretraining set, from the factored design."""
    design, y, _ = datagen.make_regression_factored(
        cfg["pre_n_samples"], d, n_informative=cfg["pre_n_informative"], bias=cfg["pre_bias"],
        effective_rank=cfg["pre_effective_rank"], tail_strength=cfg["pre_tail_strength"],
        noise=cfg["pre_noise"], random_state=cfg["pre_seed"], device=dev)
    N = cfg["pre_n_samples"]
    mean = design.rmatvec(torch.ones(N, dtype=DTYPE, device=dev)) / N
    cov = _symmetric(design.gram() / N - torch.outer(mean, mean))  # (1/N) sum (x_i - mean)(x_i - mean)^T
    var = torch.diagonal(cov).clamp_min(0.0)
    scale = torch.sqrt(var)
    # StandardScaler leaves (near-)constant columns unscaled
    scale = torch.where(scale < 10 * torch.finfo(DTYPE).eps * mean.abs().clamp_min(1.0), torch.ones_like(scale), scale)
    y_std = float(y.std(correction=0))
    b = (y - y.mean()) / (y_std if y_std > 0 else 1.0)
    Q = cov / torch.outer(scale, scale)
    # A^T b = D^-1 (X - 1 mean^T)^T b = D^-1 (X^T b - mean * sum(b))
    c = (design.rmatvec(b) - mean * b.sum()) / scale / N
    bb = float(b @ b) / (2 * N)
    return _symmetric(Q), c, bb


def pretrain(Q, c, lam, L, cfg, dev):
    """GD with step 1/L on the pretraining f from RandomState(init_seed).randn(d), with
    the variant's full gradient :math:`Qx - k c + \\lambda r'(x)` (k: :data:`GRAD_LINEAR_FACTOR`)."""
    d = Q.shape[0]
    x = torch.from_numpy(np.random.RandomState(cfg["init_seed"]).randn(d)).to(dev)
    gamma = 1.0 / L
    kc = GRAD_LINEAR_FACTOR[cfg.get("variant", "stated")] * c

    def grad(x):
        return torch.mv(Q, x) - kc + lam * reg_grad(x)

    g = grad(x)
    sq = float(g @ g)
    steps = 0
    while steps < cfg["pre_max_steps"] and sq > cfg["pre_tol"]:
        x = x - gamma * g
        g = grad(x)
        sq = float(g @ g)
        steps += 1
    return x, steps, sq


def _finetune_data(cfg, dev, d):
    A, y = datagen.make_regression(
        cfg["ft_n_samples"], d, n_informative=cfg["ft_n_informative"], bias=cfg["ft_bias"],
        effective_rank=cfg["ft_effective_rank"], tail_strength=cfg["ft_tail_strength"],
        noise=cfg["ft_noise"], random_state=cfg["ft_seed"], device=dev)

    def rescale(t):  # the authors' scale_arrays_custom: one global mean and std
        std = float(t.std(correction=0))
        if std == 0:
            raise ValueError("problem.ft_seed: fine-tuning data with zero standard deviation; cannot rescale")
        return (t - t.mean()) / std * cfg["ft_std"] + cfg["ft_mean"]

    return rescale(A), rescale(y)


def build(cfg, device="cpu"):
    """Build the problem data on ``device``: a dict of tensors (Q, c, A, b, W0) and floats."""
    dev = torch.device(device)
    d = cfg["m"] * cfg["n"]
    timings = {}
    t0 = time.perf_counter()

    def lap(name):
        nonlocal t0
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        timings[name] = t1 - t0
        t0 = t1

    Q_pre, c_pre, _ = pretrain_moments(cfg, dev, d)
    lap("pre_data_s")
    lam_pre = lambda_max(Q_pre)
    lap("pre_eig_s")
    x0, steps, sq = pretrain(Q_pre, c_pre, lam_pre, 3 * lam_pre, cfg, dev)
    lap("pre_gd_s")
    del Q_pre, c_pre
    A, b = _finetune_data(cfg, dev, d)
    lap("ft_data_s")
    N = cfg["ft_n_samples"]
    Q = _symmetric(A.T @ A / N)
    c = A.T @ b / N
    bb = float(b @ b) / (2 * N)
    lap("ft_gram_s")
    lam = lambda_max(Q)
    lap("ft_eig_s")
    info = dict(pre_lam=lam_pre, pre_L=3 * lam_pre, pre_steps=steps, pre_grad_norm_sq=sq, **timings)
    info["build_s"] = sum(timings.values())
    return dict(Q=Q, c=c, A=A, b=b, W0=x0.reshape(cfg["m"], cfg["n"]), bb=bb, lam=lam, info=info)


# ----------------------------------------------------------------------------- cache

def default_cache_dir():
    return Path(os.environ.get("BLORA_CACHE") or Path.home() / ".cache" / "bernoulli_lora")


def cache_key(cfg):
    blob = json.dumps({"format": _FORMAT, **cfg}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cache_path(cfg, cache_dir):
    return Path(cache_dir) / f"linreg-{cfg['m']}x{cfg['n']}-{cache_key(cfg)}.pt"


def save_cached(data, cfg, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: (v.detach().to("cpu") if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
    payload["config"] = dict(cfg)
    payload["format"] = _FORMAT
    atomic_write(path, lambda tmp: torch.save(payload, tmp), mode=0o666)  # the cache is shared (umask applies)


def load_cached(cfg, path, device):
    """The cached build, or None when it is missing, unreadable or for other parameters."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # truncated or foreign file: rebuild and overwrite
        return None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or payload.get("config") != cfg:
        return None
    return payload
