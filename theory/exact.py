r"""Exact expectations of the weight-space methods on quadratic problems (numpy only).

On :math:`f(W) = \tfrac12 e^\top Q e + f^*`, :math:`e = \operatorname{vec}(W - W^*)`
(row-major), with samples or clients :math:`\nabla f_i(W) = Q_i e + b_i`
(:math:`b_i = \nabla f_i(W^*)`), one iteration of FPFT, RAC-LoRA or Bernoulli-LoRA with
a constant stepsize and any of the estimators GD, SGD (additive Gaussian noise or
minibatches without replacement), PAGE, MVR, QGD, MARINA (unbiased compressors linear
given their draw: identity, scaled Rand-k) and EF21 (identity, unscaled Rand-k) is
**affine in the state given its random draws**. The state is
:math:`x = (e, G)` (plus EF21's client states :math:`G^i`), and an iteration is two
independent random affine maps (the solver's order, :mod:`solvers.methods`):

1. the step :math:`e_{t+1} = e_t - \gamma\hat H_t(G_t)` (coin and sketch of step t),
   keeping :math:`e_t` for the estimator;
2. the estimator :math:`G_{t+1}` from :math:`e_{t+1}, e_t, G_t` (its draws of step t+1).

:mod:`theory.exact_moments` propagates :math:`\mathbb E[\tilde x\tilde x^\top]` through both
with the exact expectation over every draw (closed forms: Haar fourth moments for
Gaussian and orthonormal sketches, inclusion probabilities for column sketches,
minibatches and Rand-k, the sketch's own inclusion and pair inclusion probabilities
for weighted column sketches; enumeration for Rademacher sketches). The metrics are then

.. math:: \mathbb E[f - f^*] = \tfrac12\langle Q, \mathbb E ee^\top\rangle,\quad
          \mathbb E\|\nabla f\|^2 = \langle Q^2, \mathbb E ee^\top\rangle,\quad
          \mathbb E\|W - W^*\|^2 = \operatorname{tr}\mathbb E ee^\top,

exact up to rounding: sharper than any bound, with no Monte Carlo error. Not covered:
Top-k, dithering and natural compression (not linear given their draw), the Polyak
stepsize (not affine), factor transmission and the factor-space methods. See docs/exact.md.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from theory.exact_moments import (Component, Layout, Noise, Projection, RandomAffine, Subset, column_moments,
                                  diagonal_moments, embed, enumerated_moments, haar_moments, selector)

METRICS = ("f_gap", "grad_norm_sq", "dist_sq")
ESTIMATORS = ("gd", "sgd", "page", "mvr", "qgd", "marina", "ef21")
SKETCHES = ("gaussian", "orthonormal", "column", "rademacher")
MAX_DIM = 96  # largest mn by default (docs/exact.md: runtime); rate_vs_rank's 10 x 8 fits
_MAX_RADEMACHER = 16  # enumerate 2^((dim - 1) r) sign patterns up to this exponent


@dataclass(frozen=True)
class QuadraticModel:
    r"""The numbers of a quadratic problem: ``shape`` (m, n), Hessian ``Q`` (d, d),
    ``e0`` = vec(W0 - W*) (d,); optionally samples (``sample_hessians`` (N, d, d),
    ``sample_offsets`` (N, d), :math:`\nabla f_i = Q_i e + b_i`) and clients
    (``client_hessians`` (K, d, d), ``client_offsets`` (K, d))."""

    shape: tuple
    Q: np.ndarray
    e0: np.ndarray
    sample_hessians: Optional[np.ndarray] = None
    sample_offsets: Optional[np.ndarray] = None
    client_hessians: Optional[np.ndarray] = None
    client_offsets: Optional[np.ndarray] = None

    @property
    def d(self):
        return self.shape[0] * self.shape[1]


def _rows(inp: Layout, d: int, terms, offset=None):
    """(d, inp.size) matrix of :math:`\\sum_b A_b x_b + \\text{offset}`, terms [(block, A_b)]."""
    A = np.zeros((d, inp.size))
    for block, mat in terms:
        A[:, inp[block]] += mat
    if offset is not None:
        A[:, inp.h] += offset
    return A


def _need(model, what, field):
    if getattr(model, what) is None:
        kind = "n_samples" if what.startswith("sample") else "n_clients"
        raise ValueError(f"{field}: needs a problem with {kind}")
    return getattr(model, what), getattr(model, what.replace("hessians", "offsets"))


def _batch(est, model):
    Qs, bs = _need(model, "sample_hessians", "estimator.batch")
    b = est.get("batch")
    if not (isinstance(b, int) and 1 <= b <= Qs.shape[0]):
        raise ValueError(f"estimator.batch: must be an integer in [1, {Qs.shape[0]}], got {b!r}")
    return Qs, bs, b


def _compressor(est, d):
    """(k, scale) of the compressor: identity = all d coordinates unscaled."""
    comp = est.get("compressor")
    if comp is None or comp.get("name", "identity") == "identity":
        return d, 1.0
    if comp.get("name") != "randk":
        raise ValueError(f"compressor.name: exact expectations need a compressor linear given its draw "
                         f"(identity, randk), got {comp.get('name')!r}")
    k = comp.get("k")
    if not (isinstance(k, int) and 1 <= k <= d):
        raise ValueError(f"compressor.k: must be an integer in [1, {d}], got {k!r}")
    return k, float(comp.get("scale", d / k))


def _client_pieces(model, est, out, inp, src, old=None, ef21=False):
    """One Subset piece per client: the compressed :math:`\\nabla f_i(src) - \\nabla f_i(old)`
    (``old`` None: the offset b_i instead), or EF21's :math:`C_i(\\nabla f_i - G^i)`."""
    Qc, bc = _need(model, "client_hessians", "estimator.name")
    K, d = Qc.shape[0], model.d
    k, scale = _compressor(est, d)
    LG = selector(out, "G", d)
    pieces = []
    for i in range(K):
        if old is not None:
            row = _rows(inp, d, [(src, Qc[i]), (old, -Qc[i])])
        elif ef21:
            row = _rows(inp, d, [(src, Qc[i]), ("C", _client_block(K, d, i, -1.0))], bc[i])
        else:
            row = _rows(inp, d, [(src, Qc[i])], bc[i])
        terms = np.zeros((d, out.size, inp.size))
        for j in range(d):
            target = LG / K
            if ef21:
                target = target + selector(out, "C", K * d)[:, i * d:(i + 1) * d]
            terms[j] = target[:, j:j + 1] @ row[j:j + 1, :]  # coordinate j of the message
        pieces.append(Subset(terms=terms, k=k, scale=scale))
    return pieces


def _client_block(K, d, i, value):
    B = np.zeros((d, K * d))
    B[:, i * d:(i + 1) * d] = value * np.eye(d)
    return B


def _param(est, key, check, what):
    """A required estimator parameter, checked (no defaults here: the caller resolves them)."""
    value = est.get(key)
    if value is None or not check(value):
        raise ValueError(f"estimator.{key}: {est['name']} needs {what}, got {value!r}")
    return float(value)


def _minibatch(model, est, out, inp, rows_of):
    """The piece :math:`\\frac1b\\sum_{i\\in I}` rows_of(i) into G, I a uniform b-subset."""
    Qs, bs, b = _batch(est, model)
    LG = selector(out, "G", model.d)
    return Subset(np.stack([LG @ rows_of(Qs[i], bs[i]) for i in range(Qs.shape[0])]), b, 1.0 / b)


def _gradient_estimate(model, est, out, inp, src, init):
    """Mixture components of the estimator: G from the iterate block ``src`` at step 0
    (``init``), or :math:`G_{t+1}` from e1 = :math:`e_{t+1}`, e0 = :math:`e_t` and G."""
    name, d, Q = est["name"], model.d, model.Q
    if name not in ESTIMATORS:
        raise ValueError(f"estimator.name: exact expectations know {ESTIMATORS}, got {name!r}")
    base = [("e", src, np.eye(d)), ("h", "h", 1.0)]
    full = embed(out, inp, base + [("G", src, Q)])  # G = grad f(src)
    LG = selector(out, "G", d)
    vector = (lambda A, b: _rows(inp, d, [(src, A)], b))  # noqa: E731  grad f_i(src)
    exact_start = name in ("page", "marina") or (name == "mvr" and est.get("init_with") == "full")
    if name == "gd" or (init and exact_start):
        return [(1.0, Component(full))]
    if name == "mvr" and not init:
        beta = _param(est, "momentum", lambda v: 0 < v <= 1, "a momentum in (0, 1]")
        if beta < 1:  # g(e1; xi) + (1 - beta)(G - g(e0; xi)), the same draw xi at both points
            T0 = embed(out, inp, base + [("G", "G", (1 - beta) * np.eye(d))])
            if est.get("noise") is not None:  # the noise cancels but for a fraction beta
                T0 = T0 + embed(out, inp, [("G", "e1", Q), ("G", "e0", -(1 - beta) * Q)])
                noise = LG * (beta * _param(est, "noise", lambda v: v >= 0, "noise >= 0") / math.sqrt(d))
                return [(1.0, Component(T0, [Noise(noise, T0.shape, inp.h)]))]
            rows = (lambda A, b: _rows(inp, d, [("e1", A), ("e0", -(1 - beta) * A)], beta * b))  # noqa: E731
            return [(1.0, Component(T0, [_minibatch(model, est, out, inp, rows)]))]
    if name in ("sgd", "mvr"):  # a fresh stochastic gradient at src
        if est.get("noise") is not None:
            noise = LG * (_param(est, "noise", lambda v: v >= 0, "noise >= 0") / math.sqrt(d))
            return [(1.0, Component(full, [Noise(noise, full.shape, inp.h)]))]
        return [(1.0, Component(embed(out, inp, base), [_minibatch(model, est, out, inp, vector)]))]
    if name == "page":
        q = _param(est, "q", lambda v: 0 < v <= 1, "a probability q in (0, 1]")
        if q == 1:
            return [(1.0, Component(full))]
        diff = (lambda A, b: _rows(inp, d, [("e1", A), ("e0", -A)]))  # noqa: E731
        keep = embed(out, inp, base + [("G", "G", np.eye(d))])
        return [(q, Component(full)), (1 - q, Component(keep, [_minibatch(model, est, out, inp, diff)]))]
    if name == "qgd":
        return [(1.0, Component(embed(out, inp, base), _client_pieces(model, est, out, inp, src)))]
    if name == "marina":
        q = _param(est, "q", lambda v: 0 < v <= 1, "a probability q in (0, 1]")
        keep = embed(out, inp, base + [("G", "G", np.eye(d))])
        return [(q, Component(full)), (1 - q, Component(keep, _client_pieces(model, est, out, inp, "e1", old="e0")))]
    Qc, bc = _need(model, "client_hessians", "estimator.name")  # ef21
    K = Qc.shape[0]
    if init:  # G^i_0 = grad f_i(W0) uncompressed, G_0 their mean
        T0 = embed(out, inp, base + [("C", src, np.concatenate(list(Qc))), ("C", "h", bc.reshape(-1)),
                                     ("G", src, Qc.mean(0)), ("G", "h", bc.mean(0))])
        return [(1.0, Component(T0))]
    T0 = embed(out, inp, base + [("C", "C", np.eye(K * d)), ("G", "C", np.concatenate([np.eye(d)] * K, axis=1) / K)])
    return [(1.0, Component(T0, _client_pieces(model, est, out, inp, src, ef21=True)))]


@functools.lru_cache(maxsize=16)
def _rademacher_moments(dim, r):
    """Exact moments of the projection onto the range of a dim x r matrix of random signs,
    by enumeration. Flipping a column's sign leaves the projection unchanged, so the
    patterns with a first row of +1 (one per orbit of 2^r) are uniform representatives."""
    free = (dim - 1) * r
    if free > _MAX_RADEMACHER:
        raise ValueError(f"sketch.name: rademacher is enumerated exactly only for (dim - 1) * rank <= "
                         f"{_MAX_RADEMACHER}, got ({dim} - 1) * {r}")
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=free))).reshape(-1, dim - 1, r)
    B = np.concatenate([np.ones((signs.shape[0], 1, r)), signs], axis=1)
    H = B @ np.linalg.pinv(B, rcond=1e-10)  # rank-deficient draws: the projection onto the range
    return enumerated_moments(H, np.full(H.shape[0], 1.0 / H.shape[0]))


def _sketch_moments(sketch, side, dim, r):
    """``(E H, E[H_ik H_jl])`` of one side's projection. A sketch that describes itself as a
    random diagonal projection (methods ``expected_projection_matrix`` and
    ``joint_inclusion_matrix``, e.g. ``weighted_column``) is taken at its word
    (:func:`theory.exact_moments.diagonal_moments`); the others by name."""
    if hasattr(sketch, "joint_inclusion_matrix") and hasattr(sketch, "expected_projection_matrix"):
        return diagonal_moments(sketch.expected_projection_matrix(dim, r, side=side),
                                sketch.joint_inclusion_matrix(dim, r, side=side))
    name = sketch if isinstance(sketch, str) else getattr(sketch, "name", type(sketch).__name__)
    if name in ("gaussian", "orthonormal"):
        return haar_moments(dim, r)
    if name == "column":
        return column_moments(dim, r)
    if name == "rademacher":
        return _rademacher_moments(dim, r)
    raise ValueError(f"sketch.name: exact expectations know {SKETCHES} and random diagonal projections "
                     f"(a sketch with expected_projection_matrix and joint_inclusion_matrix), got {name!r}")


def _sketch_piece(sketch, side, L, R, m, n, r):
    """The random :math:`L\\,\\hat H\\,R` of one side."""
    return Projection(L, R, m, n, side, *_sketch_moments(sketch, side, m if side == "left" else n, r))


def _method_step(model, method, X, Y, gamma, p, rank, sketch):
    d, (m, n) = model.d, model.shape
    ident = [("e1", "e", np.eye(d)), ("e0", "e", np.eye(d)), ("G", "G", np.eye(d)), ("h", "h", 1.0)]
    if "C" in X:
        ident.append(("C", "C", np.eye(X["C"].stop - X["C"].start)))
    T0 = embed(Y, X, ident)
    if method == "fpft":
        return RandomAffine([(1.0, Component(T0 + embed(Y, X, [("e1", "G", -gamma * np.eye(d))])))])
    if method != "bernoulli_lora":
        raise ValueError(f"method.name: exact expectations know fpft and bernoulli_lora, got {method!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"method.p: must lie in [0, 1], got {p!r}")
    if not (isinstance(rank, int) and 1 <= rank <= min(m, n)):
        raise ValueError(f"method.rank: must be an integer in [1, {min(m, n)}], got {rank!r}")
    L, R = -gamma * selector(Y, "e1", d), selector(X, "G", d).T
    return RandomAffine([(p, Component(T0, [_sketch_piece(sketch, "left", L, R, m, n, rank)])),
                         (1 - p, Component(T0, [_sketch_piece(sketch, "right", L, R, m, n, rank)]))])


def check_size(shape, max_dim: int = MAX_DIM):
    """Refuse (one line) a W shape whose mn exceeds ``max_dim`` before any work."""
    d = shape[0] * shape[1]
    if d > max_dim:
        raise ValueError(f"problem.m: exact expectations propagate a dense second moment of the state (size >= 2mn); "
                         f"keep m*n <= {max_dim}, got {d}")


def exact_moments(model: QuadraticModel, *, method: str, estimator: dict, gamma: float, iterations,
                  p: float = 1.0, rank: int = 1, sketch: str = "gaussian", max_dim: int = MAX_DIM):
    r"""Exact :math:`\mathbb E[f(W_t) - f^*]`, :math:`\mathbb E\|\nabla f(W_t)\|^2`,
    :math:`\mathbb E\|W_t - W^*\|^2` and :math:`\mathbb E W_t - W^*` at ``iterations``.

    Parameters
    ----------
    model : QuadraticModel
    method : {'fpft', 'bernoulli_lora'} (p = 1 or 0: RAC-LoRA)
    estimator : dict with ``name`` in :data:`ESTIMATORS` and its parameters, all explicit
        (no defaults here): ``batch`` or ``noise`` (sgd, mvr), ``q`` (page, marina),
        ``momentum`` and ``init_with`` (mvr), ``compressor`` (qgd, marina, ef21): None for
        the identity or ``{'name': 'randk', 'k': k, 'scale': s}``, s = d/k (unbiased) or 1
        (unscaled, EF21's contractive Rand-k).
    gamma : float > 0, constant stepsize.
    iterations : iterable of ints >= 0.
    p, rank : Bernoulli-LoRA's coin and rank.
    sketch : a name in :data:`SKETCHES`, or a sketch object: one with the methods
        ``expected_projection_matrix(dim, r, side=...)`` (:math:`\mathbb E H`, diagonal) and
        ``joint_inclusion_matrix(dim, r, side=...)`` (:math:`\Pr[i, j \in S]`) is a random
        diagonal projection with these moments (e.g. ``weighted_column``, each side its own);
        any other is known by its ``name``.
    max_dim : int, the largest mn accepted (the cost grows like a power 3 to 4 of mn).

    Returns
    -------
    dict: ``iteration`` (k,), each of :data:`METRICS` (k,), ``mean_error`` (k, m, n).
    """
    its = np.unique(np.asarray(list(iterations), dtype=np.int64))
    if its.size == 0 or its[0] < 0:
        raise ValueError("iterations: need at least one integer >= 0")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"stepsize: gamma must be a finite number > 0, got {gamma!r}")
    d = model.d
    check_size(model.shape, max_dim)
    extra = []
    if estimator.get("name") == "ef21":
        extra = [("C", _need(model, "client_hessians", "estimator.name")[0].shape[0] * d)]
    X = Layout([("e", d), ("G", d)] + extra)
    Y = Layout([("e1", d), ("e0", d), ("G", d)] + extra)
    E = Layout([("e", d)])
    step = _method_step(model, method, X, Y, float(gamma), float(p), rank, sketch)
    init = RandomAffine(_gradient_estimate(model, estimator, X, E, "e", True))
    update = RandomAffine(_gradient_estimate(model, estimator, X, Y, "e1", False))
    x0 = np.append(np.asarray(model.e0, dtype=float), 1.0)
    S = init.push(np.outer(x0, x0))
    Q, Q2 = model.Q, model.Q @ model.Q
    out = {k: [] for k in METRICS + ("mean_error",)}
    t = 0
    for target in its:
        while t < target:
            S = update.push(step.push(S))
            t += 1
        See = S[X["e"], X["e"]]
        out["f_gap"].append(0.5 * float(np.sum(Q * See)))
        out["grad_norm_sq"].append(float(np.sum(Q2 * See)))
        out["dist_sq"].append(float(np.trace(See)))
        out["mean_error"].append(S[X["e"], X.h].reshape(model.shape))
    res = {k: np.asarray(v) for k, v in out.items()}
    res["iteration"] = its
    return res
