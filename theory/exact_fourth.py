r"""Exact second moments :math:`\mathbb E[X_t^2]` of the metrics of GD-type steps on quadratics.

Used by the exact check of :mod:`theory.verify` (:func:`theory.confidence.bennett_lower_limit`):
a sample mean far *below* a known expectation can be told from bad luck only with more
than the mean (a nonnegative X with mean e can be 0 with probability close to 1); with
the variance known too, Bennett's inequality bounds that probability for every
distribution. The metrics are quadratic forms of the error :math:`e = \operatorname{vec}(W-W^*)`:

.. math:: X = e^\top A e,\qquad A = \tfrac12 Q\ (f - f^*),\quad Q^2\ (\|\nabla f\|^2),\quad
          I\ (\|W-W^*\|^2),\qquad \mathbb E X^2 = \langle A\otimes A,\ \mathbb E[e^{\otimes 4}]\rangle,

so :math:`\mathbb E X_t^2` needs the fourth moment of :math:`e_t`. For the steps with no
estimator state (FPFT, and Bernoulli-LoRA / RAC-LoRA, with the full gradient
:math:`\nabla f = Qe`) one iteration is the random *linear* map
:math:`e_{t+1} = M_t e_t`, :math:`M_t = I - \gamma P_t Q`, :math:`P_t = H_B\otimes I_n` with
probability p else :math:`I_m\otimes H_A` (row-major vec; :math:`P_t = I` for FPFT),
independent of :math:`e_t`, hence

.. math:: \mathbb E[e_{t+1}^{\otimes 4}] = \mathbb E[M_t^{\otimes 4}]\ \mathbb E[e_t^{\otimes 4}].

:math:`M_t^{\otimes4}` is a polynomial of degree 4 in the projection H, so its expectation is
an exact finite sum :math:`\sum_k w_k M_k^{\otimes 4}` over any rule that reproduces the
moments of H up to order 4 (:func:`projection_rule`): all :math:`\binom{dim}{r}` coordinate
sets for column sketches; for the Haar projections (Gaussian and orthonormal sketches) of
rank 1 (:math:`H = uu^\top`, u uniform on the sphere: degree 8 in u) or rank dim - 1
(:math:`I - uu^\top`) a product rule exact for polynomials of degree 8 on the sphere
(:func:`sphere_rule`); rank dim is :math:`H = I`. Other Haar ranks, Rademacher and weighted
column sketches, and the estimators with a state or noise (SGD, PAGE, MVR, QGD, MARINA,
EF21) are refused with one line (``ValueError``): the exact check then falls back to the
confidence bound of :func:`theory.confidence.mean_bounds` (docs/verify.md).

Cost: :math:`4Kd^5` multiplications per step, K outcomes; refused above ``max_dim`` = mn or
:data:`MAX_WORK` multiplications in all (the sphere rule has :math:`9\cdot5^{dim-2}` nodes).
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy import special

__all__ = ["sphere_rule", "projection_rule", "metric_second_moments", "MAX_DIM"]

MAX_DIM = 12  # largest mn (the state's fourth moment has mn^4 entries)
MAX_WORK = 5e8  # largest number of multiplications (steps * outcomes * 4 (mn)^5): under a second
_METRICS = ("f_gap", "grad_norm_sq", "dist_sq")


def sphere_rule(dim: int, degree: int):
    r"""Nodes (K, dim) and weights (K,) (summing to 1) whose weighted average of any
    polynomial of degree <= ``degree`` equals its mean over the uniform distribution on the
    unit sphere of :math:`\mathbb R^{dim}`.

    dim = 1: :math:`\pm1`. dim = 2: ``degree + 1`` equally spaced angles (exact for
    trigonometric polynomials of degree <= ``degree``). dim >= 3: :math:`u = (\sqrt{1-z^2}\,v, z)`
    with :math:`z = u_{dim}` of density :math:`\propto (1-z^2)^{(dim-3)/2}` (Gauss-Jacobi, exact
    to degree :math:`2\lfloor degree/2\rfloor + 1`) and v uniform on the sphere of
    :math:`\mathbb R^{dim-1}`, independent (the rule of dim - 1, recursively): a monomial
    :math:`v^a z^c (1-z^2)^{|a|/2}` averages to 0 over v for odd |a| (the v rule is exact),
    and is a polynomial of degree :math:`|a| + c` in z for even |a|."""
    if dim == 1:
        return np.array([[1.0], [-1.0]]), np.array([0.5, 0.5])
    if dim == 2:
        th = 2 * np.pi * np.arange(degree + 1) / (degree + 1)
        return np.stack([np.cos(th), np.sin(th)], axis=1), np.full(degree + 1, 1.0 / (degree + 1))
    a = (dim - 3) / 2
    z, wz = special.roots_jacobi(degree // 2 + 1, a, a)
    wz = wz / wz.sum()
    v, wv = sphere_rule(dim - 1, degree)
    r = np.sqrt(np.clip(1 - z ** 2, 0.0, None))
    nodes = np.concatenate([(r[:, None, None] * v[None]), np.broadcast_to(z[:, None, None], (len(z), len(v), 1))],
                           axis=2).reshape(-1, dim)
    return nodes, (wz[:, None] * wv[None]).reshape(-1)


def projection_rule(sketch: str, dim: int, r: int):
    r"""Projections (K, dim, dim) and weights (K,) with :math:`\sum_k w_k H_k^{\otimes j}
    = \mathbb E[H^{\otimes j}]` for j <= 4, H the rank-``r`` projection of ``sketch``
    (module docstring); ``ValueError`` (``sketch.name``) where no such rule is known here."""
    if r == dim:
        return np.eye(dim)[None], np.ones(1)
    if sketch == "column":
        sets = list(itertools.combinations(range(dim), r))
        H = np.zeros((len(sets), dim, dim))
        for k, s in enumerate(sets):
            H[k, s, s] = 1.0
        return H, np.full(len(sets), 1.0 / len(sets))
    if sketch in ("gaussian", "orthonormal") and min(r, dim - r) == 1:
        u, w = sphere_rule(dim, 8)
        H = u[:, :, None] * u[:, None, :]
        return (H if r == 1 else np.eye(dim) - H), w
    raise ValueError(f"sketch.name: exact second moments of the metrics know column sketches and Haar "
                     f"(gaussian, orthonormal) projections of rank 1, dim - 1 or dim, got {sketch!r} of rank "
                     f"{r} in dimension {dim}")


def _step_maps(Q, shape, *, method, gamma, p, rank, sketch):
    """The outcomes (K, d, d) of :math:`M = I - \\gamma P Q` and their probabilities (K,)."""
    m, n = shape
    d = m * n
    if method == "fpft":
        return (np.eye(d) - gamma * Q)[None], np.ones(1)
    if method != "bernoulli_lora":
        raise ValueError(f"method.name: exact second moments know fpft and bernoulli_lora, got {method!r}")
    maps, probs = [], []
    for side, prob, dim in (("left", p, m), ("right", 1 - p, n)):
        if prob == 0:
            continue
        H, w = projection_rule(sketch, dim, rank)
        P = np.stack([np.kron(h, np.eye(n)) if side == "left" else np.kron(np.eye(m), h) for h in H])
        maps.append(np.eye(d) - gamma * P @ Q)
        probs.append(prob * w)
    return np.concatenate(maps), np.concatenate(probs)


def metric_second_moments(model, *, method: str, estimator: dict, gamma: float, iterations, p: float = 1.0,
                          rank: int = 1, sketch="gaussian", max_dim: int = MAX_DIM):
    r"""Exact :math:`\mathbb E[X_t^2]` for X in ``f_gap``, ``grad_norm_sq``, ``dist_sq``.

    Parameters as :func:`theory.exact.exact_moments` (``sketch`` a name, or an object with
    a ``name``); only ``estimator = {'name': 'gd'}`` and the sketches of
    :func:`projection_rule` are accepted (``ValueError`` naming the field otherwise, before
    any work).

    Returns
    -------
    dict: ``iteration`` (k,) and one (k,) array per metric.
    """
    its = np.unique(np.asarray(list(iterations), dtype=np.int64))
    if its.size == 0 or its[0] < 0:
        raise ValueError("iterations: need at least one integer >= 0")
    if estimator.get("name") != "gd":
        raise ValueError(f"estimator.name: exact second moments need the full gradient (gd), got "
                         f"{estimator.get('name')!r}")
    d = model.d
    if d > max_dim:
        raise ValueError(f"problem.m: exact second moments propagate the fourth moment of the error "
                         f"(mn^4 entries); keep m*n <= {max_dim}, got {d}")
    name = sketch if isinstance(sketch, str) else getattr(sketch, "name", type(sketch).__name__)
    if hasattr(sketch, "joint_inclusion_matrix"):
        name = "weighted column"  # a random diagonal projection known only by its pair inclusions
    M, w = _step_maps(np.asarray(model.Q, float), tuple(model.shape), method=method, gamma=float(gamma),
                      p=float(p), rank=rank, sketch=name)
    work = float(its[-1]) * len(w) * 4 * d ** 5
    if work > MAX_WORK:
        raise ValueError(f"steps: exact second moments would take {work:.2g} multiplications ({len(w)} outcomes "
                         f"per step, mn = {d}); the limit is {MAX_WORK:.2g}")
    Q = np.asarray(model.Q, float)
    forms = {"f_gap": 0.5 * Q, "grad_norm_sq": Q @ Q, "dist_sq": np.eye(d)}
    e0 = np.asarray(model.e0, float)
    S = np.einsum("i,j,k,l->ijkl", e0, e0, e0, e0)
    out = {k: [] for k in _METRICS}
    t = 0
    for target in its:
        while t < target:
            U = np.einsum("kai,ijlm->kajlm", M, S, optimize=True)
            U = np.einsum("kbj,kajlm->kablm", M, U, optimize=True)
            U = np.einsum("kcl,kablm->kabcm", M, U, optimize=True)
            S = np.einsum("k,kdm,kabcm->abcd", w, M, U, optimize=True)
            t += 1
        for k in _METRICS:
            A = forms[k]
            out[k].append(float(np.einsum("ij,kl,ijkl->", A, A, S, optimize=True)))
    res = {k: np.asarray(v) for k, v in out.items()}
    res["iteration"] = its
    return res
