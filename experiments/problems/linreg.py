r"""The paper's linear regression with a non-convex regulariser (Bernoulli-LoRA, Sec. A
of ../shared/research/theory.md), fine-tuned from a pretrained solution.

.. math::

    f(x) = \frac1{2N}\|A x - b\|^2 + \lambda \sum_{j=1}^d \frac{x_j^2}{1 + x_j^2},
    \qquad x = \mathrm{vec}(W)\ (\text{row-major}),\ W \in \mathbb R^{m\times n},\ d = mn,

with :math:`\lambda = \lambda_{\max}(A^\top A/N)` (paper: m = n = 64, d = 4096).

Data (the authors' ``LinReg/data_preprocessing.py``, reproduced draw for draw by
:mod:`experiments.problems.datagen`, no scikit-learn needed):

* pretraining: ``make_regression(N=90000, F=4096, n_informative=4096, noise=20, bias=0,
  tail_strength=0.8, effective_rank=64, random_state=42)``, then as in the authors'
  ``scale_arrays``: the features standardised per column AND the target standardised
  (``StandardScaler``: mean 0, population std 1; a zero-variance column is left unscaled);
* fine-tuning, the problem itself: ``make_regression(N=10000, F=4096, n_informative=2048,
  noise=50, bias=10, tail_strength=0.9, effective_rank=32, random_state=84)``, then as in
  the authors' ``scale_arrays_custom(A, b, target_mean=1, target_std=2)``: A and b each
  affinely rescaled by ONE global mean and std (over all entries, population std) to mean
  1 and std 2 (not per column);
* ``W0`` = the pretraining solution: gradient descent with step :math:`1/L_{pre}` on the
  pretraining f (its own :math:`\lambda_{pre}, L_{pre} = 3\lambda_{pre}`) from
  ``numpy.random.RandomState(45).randn(d)`` until :math:`\|\nabla f\|^2 \le 10^{-8}` or
  10000 steps (``info['pre_steps']``, ``info['pre_grad_norm_sq']`` say which).

The pretraining set is never formed: its Gram matrix and :math:`A^\top b` come from the
factored design (:func:`datagen.make_regression_factored`, :math:`X^\top X = V_P S^2
V_P^\top`), equal to the explicit ones up to rounding (tested at small size).

Oracle (float64, batched over runs, ``W`` of shape (R, m, n)). With :math:`Q = A^\top A/N`,
:math:`c = A^\top b/N`, ``bb`` :math:`= \|b\|^2/(2N)`, precomputed once,

.. math:: f(x) = \tfrac12 x^\top Q x - c^\top x + \tfrac{\|b\|^2}{2N} + \lambda \textstyle\sum_j r(x_j),
          \qquad \nabla f(x) = Q x - c + \lambda r'(x),

:math:`r(t) = t^2/(1+t^2)`, :math:`r'(t) = 2t/(1+t^2)^2`, so a loss or gradient costs
:math:`O(d^2)` per run (one :math:`Qx`; :meth:`loss_and_grad` shares it). The quadratic
form cancels large terms: ``loss`` is accurate to about :math:`10^{-12}\,(x^\top Q x + \|b\|^2/N)`
absolute; :meth:`loss_residual` evaluates the :math:`O(Nd)` residual form.
:meth:`minibatch_grad` uses rows of A: :math:`\frac1b\sum_{i\in I} a_i(a_i^\top x - b_i)
+ \lambda r'(x)`, the mean of :math:`\nabla f_i` for the finite sum
:math:`f = \frac1N\sum_i f_i`, :math:`f_i(x) = \tfrac12(a_i^\top x - b_i)^2 + \lambda\sum_j r(x_j)`.
(The authors' code stores :math:`y = 2A^\top b` for the full gradient but uses
:math:`A^\top b` scale in the minibatch one, a factor-2 inconsistency on the linear term;
here both are the exact gradients of the stated f.)

Constants.

* :math:`r''(t) = 2(1 - 3t^2)/(1+t^2)^3`; with :math:`s = t^2`,
  :math:`\frac{d}{ds}\,2(1-3s)/(1+s)^3 = -12(1-s)/(1+s)^4`, so :math:`r''` decreases to its
  minimum :math:`-1/2` at :math:`t^2 = 1` and then increases to 0: :math:`r'' \in [-\tfrac12, 2]`
  (max 2 at t = 0). Hence :math:`\nabla^2 f = Q + \lambda\,\mathrm{diag}(r''(x_j))` with
  :math:`0 \preceq Q \preceq \lambda I` gives :math:`-\tfrac\lambda2 I \preceq \nabla^2 f
  \preceq 3\lambda I`: ``L = 3 lambda_max(Q)``, as in the paper. Not convex, no PL
  constant known: ``mu = None``.
* :math:`\nabla^2 f_i = a_ia_i^\top + \lambda\,\mathrm{diag}(r'')`, spectral norm at most
  :math:`L_i = \|a_i\|^2 + 2\lambda` (eigenvalues in :math:`[-\lambda/2, \|a_i\|^2 + 2\lambda]`):
  ``L_max = max_i L_i`` and ``L_avg = sqrt(mean_i L_i^2)``, since
  :math:`\frac1N\sum_i\|\nabla f_i(x) - \nabla f_i(y)\|^2 \le \frac1N\sum_i L_i^2\|x-y\|^2`
  (mean-squared smoothness, the :math:`\tilde L` of PAGE/MVR).
* ``f_inf = 0`` (both terms are non-negative); ``f_star = nan``, ``W_star = None``.
* ``delta_inf`` :math:`= f(W_0)`, an upper bound on :math:`f^{\inf} - \frac1N\sum_i f_i^{\inf}`
  (the quantity of the ABC constant C of SGD/QGD): :math:`f^{\inf} \le f(W_0)` and every
  :math:`f_i \ge 0`. The bounds grow with it, so a bound computed with it stays valid.

Sizes: ``paper`` (above) and ``ci`` (W 8 x 8, d = 64; pretraining N = 900, effective rank 8,
n_informative 64; fine-tuning N = 200, effective rank 4, n_informative 32). Any field of
:data:`SIZES` can be overridden by keyword. The build runs in torch on a device
(paper size: about 5 minutes on 2 CPU cores, seconds on a GPU) and is cached on disk
(paper size by default, or whenever ``cache_dir`` is given): ``torch.save`` of Q, c, A, b,
W0 and the constants under ``$BLORA_CACHE`` or ``~/.cache/bernoulli_lora``, keyed by a hash
of the parameters, written atomically. ``python -m experiments.problems.linreg --size paper
--device cuda`` builds and caches it.

Batch invariance: products of per-run rows with Q and A go through
:func:`solvers.linalg.shared_matmul` / :func:`solvers.linalg.bmm` and the per-run
reductions through :func:`solvers.linalg.row_sum`, so on CPU a run's numbers are bitwise the
same alone or in a batch.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import numbers
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiments.problems import datagen
from solvers.linalg import bmm, row_sum, shared_matmul

_DTYPE = torch.float64
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
_INT_FIELDS = {"m": 1, "n": 1, "pre_n_samples": 1, "pre_n_informative": 0, "pre_effective_rank": 1,
               "pre_seed": 0, "ft_n_samples": 1, "ft_n_informative": 0, "ft_effective_rank": 1,
               "ft_seed": 0, "init_seed": 0, "pre_max_steps": 0}
_REAL_FIELDS = {"pre_noise": (0.0, None), "pre_bias": (None, None), "pre_tail_strength": (0.0, 1.0),
                "ft_noise": (0.0, None), "ft_bias": (None, None), "ft_tail_strength": (0.0, 1.0),
                "ft_mean": (None, None), "ft_std": (0.0, None), "pre_tol": (0.0, None)}


def _resolve_config(size, overrides):
    if size not in SIZES:
        raise ValueError(f"problem.size: unknown linreg size {size!r}; choose one of {sorted(SIZES)}")
    cfg = dict(SIZES[size])
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"problem.{key}: not a parameter of linreg (it takes size, device, cache_dir, "
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
    return cfg


def _reg(X):
    return row_sum(X * X / (1.0 + X * X))


def _reg_grad(X):
    return 2.0 * X / (1.0 + X * X) ** 2


def _lambda_max(Q):
    return float(torch.linalg.eigvalsh(Q)[-1])


def _symmetric(G):
    return 0.5 * (G + G.T)


# ----------------------------------------------------------------------------- build

def _pretrain_moments(cfg, dev, d):
    """Q_pre, c_pre of the standardised pretraining set, from the factored design."""
    design, y, _ = datagen.make_regression_factored(
        cfg["pre_n_samples"], d, n_informative=cfg["pre_n_informative"], bias=cfg["pre_bias"],
        effective_rank=cfg["pre_effective_rank"], tail_strength=cfg["pre_tail_strength"],
        noise=cfg["pre_noise"], random_state=cfg["pre_seed"], device=dev)
    N = cfg["pre_n_samples"]
    mean = design.rmatvec(torch.ones(N, dtype=_DTYPE, device=dev)) / N
    cov = _symmetric(design.gram() / N - torch.outer(mean, mean))  # (1/N) sum (x_i - mean)(x_i - mean)^T
    var = torch.diagonal(cov).clamp_min(0.0)
    scale = torch.sqrt(var)
    # StandardScaler leaves (near-)constant columns unscaled
    scale = torch.where(scale < 10 * torch.finfo(_DTYPE).eps * mean.abs().clamp_min(1.0), torch.ones_like(scale), scale)
    y_std = float(y.std(correction=0))
    b = (y - y.mean()) / (y_std if y_std > 0 else 1.0)
    Q = cov / torch.outer(scale, scale)
    # A^T b = D^-1 (X - 1 mean^T)^T b = D^-1 (X^T b - mean * sum(b))
    c = (design.rmatvec(b) - mean * b.sum()) / scale / N
    bb = float(b @ b) / (2 * N)
    return _symmetric(Q), c, bb


def _pretrain(Q, c, lam, L, cfg, dev):
    """GD with step 1/L on the pretraining f from RandomState(init_seed).randn(d)."""
    d = Q.shape[0]
    x = torch.from_numpy(np.random.RandomState(cfg["init_seed"]).randn(d)).to(dev)
    gamma = 1.0 / L

    def grad(x):
        return torch.mv(Q, x) - c + lam * _reg_grad(x)

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

    Q_pre, c_pre, _ = _pretrain_moments(cfg, dev, d)
    lap("pre_data_s")
    lam_pre = _lambda_max(Q_pre)
    lap("pre_eig_s")
    x0, steps, sq = _pretrain(Q_pre, c_pre, lam_pre, 3 * lam_pre, cfg, dev)
    lap("pre_gd_s")
    del Q_pre, c_pre
    A, b = _finetune_data(cfg, dev, d)
    lap("ft_data_s")
    N = cfg["ft_n_samples"]
    Q = _symmetric(A.T @ A / N)
    c = A.T @ b / N
    bb = float(b @ b) / (2 * N)
    lap("ft_gram_s")
    lam = _lambda_max(Q)
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


def _cache_path(cfg, cache_dir):
    return Path(cache_dir) / f"linreg-{cfg['m']}x{cfg['n']}-{cache_key(cfg)}.pt"


def _save(data, cfg, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: (v.detach().to("cpu") if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
    payload["config"] = dict(cfg)
    payload["format"] = _FORMAT
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the cache is shared
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(cfg, path, device):
    """The cached build, or None when it is missing, unreadable or for other parameters."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # truncated or foreign file: rebuild and overwrite
        return None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or payload.get("config") != cfg:
        return None
    return payload


# ----------------------------------------------------------------------------- problem

class LinReg:
    """The fine-tuning problem: oracle and constants (see the module docstring)."""

    name = "linreg"
    mu = None
    f_star = float("nan")
    f_inf = 0.0
    W_star = None
    L0 = None  # smooth problem: no subgradient bound
    n_clients = None
    sigma2 = None

    def __init__(self, *, Q, c, A, b, W0, lam=None, bb=None, info=None, config=None):
        self.Q, self.c, self.A, self.b = Q, c, A, b
        self.W0 = W0
        self.shape = tuple(W0.shape)
        self.n_samples = int(A.shape[0])
        self.lam = _lambda_max(Q) if lam is None else float(lam)
        self.bb = float(b @ b) / (2 * self.n_samples) if bb is None else float(bb)
        self.L = 3.0 * self.lam
        L_i = (A * A).sum(-1) + 2.0 * self.lam
        self.L_max = float(L_i.max())
        self.L_avg = float(torch.sqrt((L_i * L_i).mean()))
        self.delta_inf = float(self.loss_residual(W0.reshape(1, *W0.shape))[0])
        self.info = dict(info or {})
        self.config = dict(config or {})

    def _x(self, W):
        return W.reshape(W.shape[0], -1)

    def _quadratic(self, X):
        # Q is exactly symmetric; passing Q.T (a view of a contiguous tensor) spares the
        # copy shared_matmul would make to transpose it.
        return shared_matmul(X, self.Q.T)

    def _loss_from(self, X, QX):
        return 0.5 * row_sum(X * QX) - row_sum(X * self.c) + self.bb + self.lam * _reg(X)

    def loss_and_grad(self, W: torch.Tensor):
        """``(loss (R,), grad (R, m, n))`` with one :math:`Qx` product."""
        X = self._x(W)
        QX = self._quadratic(X)
        return self._loss_from(X, QX), (QX - self.c + self.lam * _reg_grad(X)).reshape(W.shape)

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        X = self._x(W)
        return self._loss_from(X, self._quadratic(X))

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        X = self._x(W)
        return (self._quadratic(X) - self.c + self.lam * _reg_grad(X)).reshape(W.shape)

    def loss_residual(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\frac1{2N}\\|Ax - b\\|^2 + \\lambda\\sum_j r(x_j)` by the residuals
        (O(N d) per run; no cancellation)."""
        X = self._x(W)
        res = shared_matmul(X, self.A.T) - self.b
        return 0.5 * row_sum(res * res) / res.shape[-1] + self.lam * _reg(X)

    def minibatch_grad(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """:math:`\\frac1b\\sum_{i \\in idx[r]} a_i(a_i^\\top x_r - b_i) + \\lambda r'(x_r)`,
        idx int64 (R, b); unbiased for :meth:`grad` when idx is uniform."""
        if idx.dim() != 2 or idx.shape[0] != W.shape[0]:
            raise ValueError(f"minibatch_grad: idx must have shape (R, b) with R = {W.shape[0]}, got {tuple(idx.shape)}")
        X = self._x(W)
        rows = self.A[idx]  # (R, b, d)
        res = bmm(rows, X[:, :, None])[:, :, 0] - self.b[idx]  # (R, b)
        G = bmm(res[:, None, :], rows)[:, 0, :] / idx.shape[1]
        return (G + self.lam * _reg_grad(X)).reshape(W.shape)

    def to(self, device, dtype=_DTYPE):
        """A copy with every tensor on ``device`` in ``dtype`` (constants stay floats)."""
        new = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(new, key, value.to(device=device, dtype=dtype))
        return new

    def __repr__(self):
        return (f"LinReg(shape={self.shape}, n_samples={self.n_samples}, lam={self.lam:.6g}, L={self.L:.6g}, "
                f"L_avg={self.L_avg:.6g}, L_max={self.L_max:.6g})")


def make_linreg(size="ci", device=None, cache_dir=None, **overrides):
    """The paper's linreg fine-tuning problem (see the module docstring).

    ``size``: ``'ci'`` or ``'paper'``; ``overrides``: any field of ``SIZES[size]``.
    ``device``: where the problem lives (None: CPU). It is built there too, except that
    with ``device=None`` a paper-size build runs on CUDA when available.
    ``cache_dir``: where the build is cached (``None``: ``$BLORA_CACHE`` or
    ``~/.cache/bernoulli_lora`` for the paper size, no cache for smaller ones; ``False``:
    never cache). A cached build is loaded whatever device built it.
    """
    cfg = _resolve_config(size, overrides)
    target = torch.device("cpu" if device is None else device)
    if device is None and size == "paper" and torch.cuda.is_available():
        build_device = torch.device("cuda")
    else:
        build_device = target
    if cache_dir is None and size == "paper":
        cache_dir = default_cache_dir()
    path = _cache_path(cfg, cache_dir) if cache_dir not in (None, False) else None
    data = _load(cfg, path, target) if path is not None and path.is_file() else None
    if data is None:
        numel = max(cfg["pre_n_samples"], cfg["ft_n_samples"]) * cfg["m"] * cfg["n"]
        with datagen.small_cpu_work(build_device, numel):
            data = build(cfg, build_device)
        if path is not None:
            _save(data, cfg, path)
    fields = {k: data[k] for k in ("Q", "c", "A", "b", "W0")}
    problem = LinReg(**fields, lam=data["lam"], bb=data["bb"], info=data["info"], config=cfg)
    if path is not None:
        problem.info["cache_path"] = str(path)
    return problem.to(target, _DTYPE)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.problems.linreg",
                                     description="Build (and cache) the paper's linreg problem.")
    parser.add_argument("--size", default="paper", choices=sorted(SIZES))
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available for paper)")
    parser.add_argument("--cache-dir", default=None, help="default: $BLORA_CACHE or ~/.cache/bernoulli_lora")
    parser.add_argument("--no-cache", action="store_true", help="build without reading or writing the cache")
    args = parser.parse_args(argv)
    device = args.device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cache_dir = False if args.no_cache else (args.cache_dir or default_cache_dir())
    t = time.perf_counter()
    problem = make_linreg(args.size, device=device, cache_dir=cache_dir)
    wall = time.perf_counter() - t
    g = problem.grad(problem.W0[None])
    print(f"linreg size={args.size} device={device} wall={wall:.1f}s (this call; build_s={problem.info.get('build_s', float('nan')):.1f}s when built)")
    print(f"  shape={problem.shape} n_samples={problem.n_samples} lam={problem.lam:.10g} L={problem.L:.10g} "
          f"L_avg={problem.L_avg:.10g} L_max={problem.L_max:.10g} f_inf={problem.f_inf}")
    print(f"  f(W0)={float(problem.loss(problem.W0[None])[0]):.10g} ||grad f(W0)||^2={float((g * g).sum()):.6g}")
    print("  info: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in problem.info.items()))


if __name__ == "__main__":
    main()
