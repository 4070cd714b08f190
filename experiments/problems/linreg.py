r"""The paper's linear regression with a non-convex regulariser (Bernoulli-LoRA, Sec. A;
docs/theory.md#exp-linreg), fine-tuned from a pretrained solution.

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
In the default variant (``'stated'``) :meth:`grad` and :meth:`minibatch_grad` are exact
gradients of f.

Variants (``variant=``, config ``problem.variant``; docs/linreg_authors.md).

* ``'stated'`` (config: null): the f above, everything as described.
* ``'authors'``: the authors' code, so that the paper's figures can be reproduced in its
  units. It stores :math:`y = 2A^\top b` for the FULL gradient only, so :meth:`grad` and
  :meth:`loss_and_grad` give :math:`Qx - 2c + \lambda r'(x) = \nabla f(x) - c` (what GD
  and PAGE's full draws use and what the engine records as ``grad_norm_sq``), while
  :meth:`loss` and :meth:`minibatch_grad` stay those of f. Its ``W0`` is the pretraining
  solution of the same doubled-gradient problem (:math:`Q_{pre}x - 2c_{pre} + \lambda_{pre}r'(x)`)
  from ``RandomState(42).randn(d)`` (its caller overrides the seed 45). Since
  :math:`r'(t) = 2t + O(t^3)`, that solution solves :math:`(Q_{pre} + 2\lambda_{pre} I)x
  = 2c_{pre} + O(\lambda_{pre}\|x\|^3)`: about twice the stated ``W0`` (exactly twice
  without the regulariser's cubic part), so :math:`\|\nabla f(W_0) - c\|^2` is about 4 times
  the stated :math:`\|\nabla f(W_0)\|^2`. SGD's minibatch gradients are those of f, so it
  converges on f and its recorded :math:`\|\nabla f(x) - c\|^2` tends to :math:`\|c\|^2`
  at a stationary point of f instead of 0. The smoothness constants below hold for both
  (:math:`\nabla f - c` has f's Jacobian); ``f_inf`` and ``delta_inf`` are f's, whereas the
  authors' full-gradient steps descend :math:`f(x) - c^\top x`, so bounds built on them
  do not cover that variant's records.

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
of the parameters (the variant included; the stated problem's parameters carry no
``variant``, so its key is the one it had before variants existed), written atomically
(:mod:`experiments.problems.linreg_build`). ``python -m experiments.problems.linreg --size
paper --device cuda [--variant authors]`` builds and caches it.

Batch invariance: products of per-run rows with Q and A go through
:func:`solvers.linalg.shared_matmul` / :func:`solvers.linalg.bmm` and the per-run
reductions through :func:`solvers.linalg.row_sum`, so on CPU a run's numbers are bitwise the
same alone or in a batch.
"""
from __future__ import annotations

import argparse
import time

from dataclasses import dataclass
from typing import Optional

import torch

from experiments.problems import datagen
from experiments.problems.base import Problem
from experiments.problems.linreg_build import (
    DTYPE, GRAD_LINEAR_FACTOR, SIZES, VARIANTS, build, cache_path, default_cache_dir, lambda_max, load_cached,
    reg, reg_grad, resolve_config, save_cached,
)
from solvers.linalg import bmm, row_sum, shared_matmul
from solvers.registry import param, register


# ----------------------------------------------------------------------------- problem

class LinReg(Problem):
    """The fine-tuning problem: oracle and constants (see the module docstring).

    ``variant``: ``'stated'`` (the paper's f) or ``'authors'`` (the full gradient of the
    authors' code, :math:`\\nabla f(x) - A^\\top b/N`, in :meth:`grad` and :meth:`loss_and_grad`;
    loss and minibatch gradient stay those of f).
    """

    name = "linreg"
    mu = None
    f_star = float("nan")
    f_inf = 0.0
    W_star = None
    L0 = None  # smooth problem: no subgradient bound
    n_clients = None
    sigma2 = None

    def __init__(self, *, Q, c, A, b, W0, lam=None, bb=None, info=None, config=None, variant="stated"):
        if variant not in VARIANTS:
            raise ValueError(f"problem.variant: must be one of {list(VARIANTS)}, got {variant!r}")
        self.Q, self.c, self.A, self.b = Q, c, A, b
        self.variant = variant
        # components describe themselves: the theorems bound the stated f, which the
        # authors' variant does not follow (its recorded gradient is off by A^T b/N)
        self.no_theorem = (None if variant == "stated" else
                           "the authors' variant records grad f - A^T b/N and descends a shifted "
                           "problem; the theorems bound the stated f (docs/linreg_authors.md)")
        # the linear term of the full gradient (1.0 * c is c bitwise)
        self.c_grad = GRAD_LINEAR_FACTOR[variant] * c
        self.W0 = W0
        self.shape = tuple(W0.shape)
        self.n_samples = int(A.shape[0])
        self.lam = lambda_max(Q) if lam is None else float(lam)
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
        return 0.5 * row_sum(X * QX) - row_sum(X * self.c) + self.bb + self.lam * reg(X)

    def loss_and_grad(self, W: torch.Tensor):
        """``(loss (R,), grad (R, m, n))`` with one :math:`Qx` product."""
        X = self._x(W)
        QX = self._quadratic(X)
        return self._loss_from(X, QX), (QX - self.c_grad + self.lam * reg_grad(X)).reshape(W.shape)

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        X = self._x(W)
        return self._loss_from(X, self._quadratic(X))

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        X = self._x(W)
        return (self._quadratic(X) - self.c_grad + self.lam * reg_grad(X)).reshape(W.shape)

    def loss_residual(self, W: torch.Tensor) -> torch.Tensor:
        """:math:`\\frac1{2N}\\|Ax - b\\|^2 + \\lambda\\sum_j r(x_j)` by the residuals
        (O(N d) per run; no cancellation)."""
        X = self._x(W)
        res = shared_matmul(X, self.A.T) - self.b
        return 0.5 * row_sum(res * res) / res.shape[-1] + self.lam * reg(X)

    def minibatch_grad(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """:math:`\\frac1b\\sum_{i \\in idx[r]} a_i(a_i^\\top x_r - b_i) + \\lambda r'(x_r)`,
        idx int64 (R, b); unbiased for the gradient of f when idx is uniform (for :meth:`grad`
        too in the stated variant; the authors' :meth:`grad` is off by :math:`-A^\\top b/N`)."""
        if idx.dim() != 2 or idx.shape[0] != W.shape[0]:
            raise ValueError(f"minibatch_grad: idx must have shape (R, b) with R = {W.shape[0]}, got {tuple(idx.shape)}")
        X = self._x(W)
        rows = self.A[idx]  # (R, b, d)
        res = bmm(rows, X[:, :, None])[:, :, 0] - self.b[idx]  # (R, b)
        G = bmm(res[:, None, :], rows)[:, 0, :] / idx.shape[1]
        return (G + self.lam * reg_grad(X)).reshape(W.shape)

    def __repr__(self):
        return (f"LinReg(variant={self.variant!r}, shape={self.shape}, n_samples={self.n_samples}, "
                f"lam={self.lam:.6g}, L={self.L:.6g}, L_avg={self.L_avg:.6g}, L_max={self.L_max:.6g})")


@dataclass
class LinregConf:
    name: str = "linreg"
    size: str = param("${size}", choices=("ci", "paper"))
    # null: the paper's stated f; authors: the authors' code (full gradient grad f - A^T b/N,
    # its own W0). "stated" is no value here: null alone names the stated f, so it has one
    # config hash (null is left out of the hash: the same hashes as before the option existed)
    variant: Optional[str] = param(None, choices=("authors",))


@register("problem", "linreg", conf=LinregConf, label="linreg fine-tuning")
def make_linreg(size="ci", device=None, cache_dir=None, variant="stated", **overrides):
    """The paper's linreg fine-tuning problem (see the module docstring).

    ``size``: ``'ci'`` or ``'paper'``; ``overrides``: any field of ``SIZES[size]``.
    ``variant``: ``'stated'`` (the paper's f) or ``'authors'`` (its code: full gradient
    :math:`\\nabla f - A^\\top b/N`, W0 from the doubled-gradient pretraining started at
    seed 42 unless ``init_seed`` is given; module docstring, "Variants").
    ``device``: where the problem lives (None: CPU). It is built there too, except that
    with ``device=None`` a paper-size build runs on CUDA when available.
    ``cache_dir``: where the build is cached (``None``: ``$BLORA_CACHE`` or
    ``~/.cache/bernoulli_lora`` for the paper size, no cache for smaller ones; ``False``:
    never cache). A cached build is loaded whatever device built it.
    """
    cfg = resolve_config(size, overrides, variant)
    target = torch.device("cpu" if device is None else device)
    if device is None and size == "paper" and torch.cuda.is_available():
        build_device = torch.device("cuda")
    else:
        build_device = target
    if cache_dir is None and size == "paper":
        cache_dir = default_cache_dir()
    path = cache_path(cfg, cache_dir) if cache_dir not in (None, False) else None
    data = load_cached(cfg, path, target) if path is not None and path.is_file() else None
    if data is None:
        numel = max(cfg["pre_n_samples"], cfg["ft_n_samples"]) * cfg["m"] * cfg["n"]
        with datagen.small_cpu_work(build_device, numel):
            data = build(cfg, build_device)
        if path is not None:
            save_cached(data, cfg, path)
    fields = {k: data[k] for k in ("Q", "c", "A", "b", "W0")}
    problem = LinReg(**fields, lam=data["lam"], bb=data["bb"], info=data["info"], config=cfg, variant=variant)
    if path is not None:
        problem.info["cache_path"] = str(path)
    return problem.to(target, DTYPE)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.problems.linreg",
                                     description="Build (and cache) the paper's linreg problem.")
    parser.add_argument("--size", default="paper", choices=sorted(SIZES))
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available for paper)")
    parser.add_argument("--cache-dir", default=None, help="default: $BLORA_CACHE or ~/.cache/bernoulli_lora")
    parser.add_argument("--no-cache", action="store_true", help="build without reading or writing the cache")
    parser.add_argument("--variant", default="stated", choices=VARIANTS,
                        help="stated: the paper's f; authors: the authors' code (default: stated)")
    args = parser.parse_args(argv)
    device = args.device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cache_dir = False if args.no_cache else (args.cache_dir or default_cache_dir())
    t = time.perf_counter()
    problem = make_linreg(args.size, device=device, cache_dir=cache_dir, variant=args.variant)
    wall = time.perf_counter() - t
    g = problem.grad(problem.W0[None])
    print(f"linreg size={args.size} variant={args.variant} device={device} wall={wall:.1f}s "
          f"(this call; build_s={problem.info.get('build_s', float('nan')):.1f}s when built)")
    print(f"  shape={problem.shape} n_samples={problem.n_samples} lam={problem.lam:.10g} L={problem.L:.10g} "
          f"L_avg={problem.L_avg:.10g} L_max={problem.L_max:.10g} f_inf={problem.f_inf}")
    grad_name = "grad f" if problem.variant == "stated" else "grad f - A^T b/N"
    print(f"  f(W0)={float(problem.loss(problem.W0[None])[0]):.10g} ||{grad_name} (W0)||^2={float((g * g).sum()):.6g} "
          f"||W0||={float(problem.W0.norm()):.6g} ||A^T b/N||^2={float(problem.c @ problem.c):.6g}")
    print("  info: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in problem.info.items()))


if __name__ == "__main__":
    main()
