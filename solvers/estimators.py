r"""Gradient estimators :math:`G_t` of the smooth Bernoulli-LoRA variants.

optax-like: ``state = est.init(W0, oracle, seeds)`` gives :math:`G_0`, and
``state = est.update(W_new, W_old, state, oracle, seeds, step)`` gives
:math:`G_{t+1}` from :math:`W_{t+1}` (``W_new``) and :math:`W_t` (``W_old``).
The estimate drawn at iterate ``t`` uses randomness of step index ``t`` only
(``init`` is step 0), from the streams MINIBATCH, NOISE and ESTIMATOR, so e.g.
SGD and MVR with momentum 1 see the very same minibatches.

``update`` is ``update_given(W_new, W_old, state, oracle, draw(seeds, step, W_new, oracle),
sync_free=W_new.is_cuda)``: :meth:`draw` takes the round's random numbers (for a range of
K steps at once, ``(R, K, ...)``, element ``[:, k]`` bitwise the draw of step ``step[k]``,
as :mod:`solvers.fused` uses them), and ``update_given`` computes the estimate from them.
With ``sync_free`` it never synchronises with the host (every branch computed, the
run's own selected by ``torch.where``; capturable in a CUDA graph); without it a branch
no run takes is skipped (e.g. PAGE's full gradient). Both give the same numbers.

``state.epochs`` counts gradient evaluations in units of full passes: a full
gradient costs 1, a minibatch of size b costs b/N (N samples). For problems that
are not finite sums a full gradient (or a noisy one) costs 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from solvers import rng
from solvers.registry import param, register
from theory.stepsizes import page_q


class EstimatorState(NamedTuple):
    G: torch.Tensor  # (R, m, n) current gradient estimate
    epochs: torch.Tensor  # (R,) gradient evaluations so far, in full passes
    bits: torch.Tensor  # (R,) bits sent by all clients so far (distributed variants)
    extra: Optional[torch.Tensor] = None  # variant-specific (EF21: per-client G_i)
    # f at the current iterate when the estimator got it with G for free (GD on an
    # oracle with loss_and_grad): the engine then records it without a second oracle call
    loss: Optional[torch.Tensor] = None


class _Drawn:
    """``update`` from :meth:`draw` and ``update_given`` (module docstring)."""

    def draw(self, seeds, step, W, oracle):
        """The round's random numbers (None: this estimator draws none)."""
        return None

    def update(self, W_new, W_old, state, oracle, seeds, step):
        drawn = self.draw(seeds, step, W_new, oracle)
        return self.update_given(W_new, W_old, state, oracle, drawn, sync_free=W_new.is_cuda)


def _zeros(W):
    return torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)


def _start(G, epochs, W):
    return EstimatorState(G=G, epochs=epochs, bits=_zeros(W))


def _value_and_grad(oracle, W):
    """``(loss or None, grad)``: the loss only where the oracle shares the work
    (``loss_and_grad``, e.g. one :math:`Qx` product for linreg)."""
    if hasattr(oracle, "loss_and_grad"):
        return oracle.loss_and_grad(W)
    return None, oracle.grad(W)


def _sample_size(oracle) -> int:
    n = getattr(oracle, "n_samples", None)
    if not n:
        raise ValueError("estimator: this estimator needs a finite-sum problem (n_samples), "
                         "use sgd with noise instead")
    return int(n)


def _check_batch(batch, oracle):
    n = _sample_size(oracle)
    if not 1 <= batch <= n:
        raise ValueError(f"batch: must lie in [1, {n}] (the number of samples), got {batch}")
    return n


def sample_variance_at(problem, W, batch):
    """Exact E||g_b(W) - grad f(W)||^2 for a minibatch of size b drawn without
    replacement from N samples: (N - b) / (b (N - 1)) * mean_i ||grad f_i - grad f||^2."""
    N = problem.n_samples
    G = problem.minibatch_grad(W.expand(N, *W.shape).contiguous(), torch.arange(N, device=W.device)[:, None])
    var = float(((G - G.mean(0, keepdim=True)) ** 2).sum((-2, -1)).mean())
    return (N - batch) / (batch * max(N - 1, 1)) * var


def _sample_error(batch, noise, problem):
    """(sigma^2, E||g(W0) - grad f(W0)||^2) of a minibatch (``batch``) or noisy (``noise``) oracle."""
    nan = float("nan")
    if noise is not None:
        return float(noise) ** 2, float(noise) ** 2
    N = getattr(problem, "n_samples", None)
    return nan, (sample_variance_at(problem, problem.W0, int(batch)) if N and batch else nan)


# configuration schemas (keys, types, defaults, valid values; experiments.conf.schema
# derives the Hydra groups and the results columns from them). q, momentum, noise
# and batch against N are checked by the estimators themselves.


@dataclass
class GDConf:
    name: str = "gd"


@dataclass
class SGDConf:
    name: str = "sgd"
    batch: Optional[int] = param(10, ge=1)
    noise: Optional[float] = param(None, ge=0)


@dataclass
class PAGEConf:
    name: str = "page"
    batch: int = param(10, ge=1)
    q: Optional[float] = None  # None: q = b / (b + N) as in the paper's code (theory.stepsizes.page_q)


@dataclass
class MVRConf:
    name: str = "mvr"
    momentum: float = 0.1
    batch: Optional[int] = param(10, ge=1)
    noise: Optional[float] = param(None, ge=0)
    init_with: str = param("sample", choices=("sample", "full"))


@dataclass
class SubgradientConf:
    name: str = "subgradient"


@register("estimator", conf=GDConf, theorem="gd", label="GD", style={"linestyle": "-", "marker": None})
@dataclass(frozen=True)
class GD(_Drawn):
    r"""Full gradient: :math:`G_t = \nabla f(W_t)`."""

    name = "gd"
    exact_gradient = True

    def theory_constants(self, problem) -> dict:
        """The constants of its theorem (:class:`theory.dispatch.Constants` fields)."""
        return {"G0_err": 0.0}

    def init(self, W, oracle, seeds):
        loss, G = _value_and_grad(oracle, W)
        return _start(G, _zeros(W) + 1.0, W)._replace(loss=loss)

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        loss, G = _value_and_grad(oracle, W_new)
        return state._replace(G=G, epochs=state.epochs + 1.0, loss=loss)


@register("estimator", conf=SGDConf, theorem="sgd", label="SGD",
          style={"linestyle": (0, (6, 2)), "marker": "o"})
@dataclass(frozen=True)
class SGD(_Drawn):
    r"""Unbiased stochastic gradient.

    * ``batch`` given (finite sums): :math:`G_t = \frac1b\sum_{i\in I_t}\nabla f_i(W_t)`,
      :math:`I_t` drawn uniformly without replacement.
    * ``noise`` given: additive-noise oracle :math:`G_t = \nabla f(W_t) + \frac{\sigma}{\sqrt{mn}} Z_t`,
      :math:`Z_t` standard Gaussian, so :math:`\mathbb{E}\|G_t - \nabla f(W_t)\|^2 = \sigma^2`.
    """

    batch: Optional[int] = None
    noise: Optional[float] = None
    name = "sgd"
    exact_gradient = False

    def __post_init__(self):
        if (self.batch is None) == (self.noise is None):
            raise ValueError("sgd: give exactly one of batch (minibatch SGD) or noise (additive-noise oracle)")
        if self.noise is not None and not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise: must be a finite number >= 0, got {self.noise}")

    def draw(self, seeds, step, W, oracle):
        """The minibatch indices (R, [K,] b), or the noise Z (R, [K,] m, n)."""
        if self.batch is not None:
            n = _check_batch(self.batch, oracle)
            return rng.subset(seeds, rng.Stream.MINIBATCH, step, n, self.batch, device=W.device)
        m, n = W.shape[-2:]
        return rng.normal(seeds, rng.Stream.NOISE, step, (m, n), device=W.device, dtype=W.dtype)

    def sample_grad(self, W, oracle, drawn):
        """``(g, cost)``: the stochastic gradient at W for the draw ``drawn`` and its epochs."""
        if self.batch is not None:
            return oracle.minibatch_grad(W, drawn), self.batch / _sample_size(oracle)
        m, n = W.shape[-2:]
        return oracle.grad(W) + (self.noise / math.sqrt(m * n)) * drawn, 1.0

    @property
    def needs(self):
        return ("finite_sum",) if self.batch is not None else ()

    def theory_constants(self, problem) -> dict:
        sigma2, g0_err = _sample_error(self.batch, self.noise, problem)
        return {"sigma2": sigma2, "G0_err": g0_err, "batch": self.batch}

    def init(self, W, oracle, seeds):
        G, cost = self.sample_grad(W, oracle, self.draw(seeds, 0, W, oracle))
        return _start(G, _zeros(W) + cost, W)

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        G, cost = self.sample_grad(W_new, oracle, drawn)
        return state._replace(G=G, epochs=state.epochs + cost)


@register("estimator", conf=PAGEConf, needs=("finite_sum",), theorem="page", label="PAGE",
          style={"linestyle": "-.", "marker": "s"})
@dataclass(frozen=True)
class PAGE(_Drawn):
    r"""PAGE (Li et al., 2021): with probability q a full gradient, otherwise a
    recursive minibatch correction on the same minibatch at both points,

    .. math::

        G_{t+1} = \begin{cases} \nabla f(W_{t+1}) & \text{w.p. } q\\
        G_t + \frac1b\sum_{i\in I}(\nabla f_i(W_{t+1}) - \nabla f_i(W_t)) & \text{otherwise.}\end{cases}

    :math:`G_0 = \nabla f(W_0)`. ``q=None`` uses the paper code's q = b/(b+N)
    (:func:`theory.stepsizes.page_q`).
    With q = 1 it is GD exactly.
    """

    batch: int = 1
    q: Optional[float] = None
    name = "page"
    exact_gradient = False

    def __post_init__(self):
        if self.q is not None and not 0.0 < self.q <= 1.0:
            raise ValueError(f"q: must lie in (0, 1], got {self.q}")

    def prob(self, n_samples):
        """q: the given one, else b / (b + N) (NaN without a finite sum)."""
        return self.q if self.q is not None else page_q(self.batch, n_samples)

    def theory_constants(self, problem) -> dict:
        return {"q": self.prob(getattr(problem, "n_samples", None)), "batch": self.batch, "G0_err": 0.0}

    def init(self, W, oracle, seeds):
        if self.q is None or self.q < 1:
            _check_batch(self.batch, oracle)
        return _start(oracle.grad(W), _zeros(W) + 1.0, W)

    def draw(self, seeds, step, W, oracle):
        """The coin (R, [K]) and the minibatch indices (R, [K,] b) (None when q = 1)."""
        n = getattr(oracle, "n_samples", None)
        q = self.prob(n) if n else self.q
        coin = rng.bernoulli(seeds, rng.Stream.ESTIMATOR, step, q, device=W.device)
        idx = rng.subset(seeds, rng.Stream.MINIBATCH, step, n, self.batch, device=W.device) if q < 1 else None
        return coin, idx

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        coin, idx = drawn
        G, cost = state.G, torch.zeros_like(state.epochs)
        if sync_free or bool(coin.any()):
            full = oracle.grad(W_new)
            G = torch.where(coin[:, None, None], full, G)
            cost = torch.where(coin, torch.ones_like(cost), cost)
        if idx is not None and (sync_free or not bool(coin.all())):
            n = _sample_size(oracle)
            diff = oracle.minibatch_grad(W_new, idx) - oracle.minibatch_grad(W_old, idx)
            G = torch.where(coin[:, None, None], G, state.G + diff)
            cost = torch.where(coin, cost, torch.full_like(cost, 2.0 * self.batch / n))
        return state._replace(G=G, epochs=state.epochs + cost)


@register("estimator", conf=MVRConf, theorem="mvr", label="MVR",
          style={"linestyle": (0, (3, 1, 1, 1, 1, 1)), "marker": "^"})
@dataclass(frozen=True)
class MVR(_Drawn):
    r"""MVR / STORM momentum variance reduction with momentum ``b`` in (0, 1]:

    .. math:: G_{t+1} = g(W_{t+1};\xi_{t+1}) + (1-b)\,(G_t - g(W_t;\xi_{t+1})),

    the same sample :math:`\xi_{t+1}` at both points. ``g`` is the minibatch
    gradient of size ``batch`` (or the noisy oracle if ``noise`` is given, whose
    noise then cancels exactly in the difference). ``init='sample'`` takes
    :math:`G_0 = g(W_0;\xi_0)` (then b = 1 is SGD exactly), ``init='full'`` takes
    :math:`\nabla f(W_0)`.
    """

    momentum: float = 0.1
    batch: Optional[int] = None
    noise: Optional[float] = None
    init_with: str = "sample"
    name = "mvr"
    exact_gradient = False

    def __post_init__(self):
        if not 0.0 < self.momentum <= 1.0:
            raise ValueError(f"momentum: must lie in (0, 1], got {self.momentum}")
        if self.init_with not in ("sample", "full"):
            raise ValueError(f"init_with: expected 'sample' or 'full', got {self.init_with!r}")
        SGD(batch=self.batch, noise=self.noise)  # validates batch/noise choice

    def _sgd(self):
        return SGD(batch=self.batch, noise=self.noise)

    @property
    def needs(self):
        return self._sgd().needs

    def theory_constants(self, problem) -> dict:
        out = dict(self._sgd().theory_constants(problem), momentum=self.momentum)
        if self.init_with == "full":
            out["G0_err"] = 0.0
        return out

    def init(self, W, oracle, seeds):
        if self.init_with == "full":
            return _start(oracle.grad(W), _zeros(W) + 1.0, W)
        return self._sgd().init(W, oracle, seeds)

    def draw(self, seeds, step, W, oracle):
        """The sample shared by both points (:meth:`SGD.draw`)."""
        return self._sgd().draw(seeds, step, W, oracle)

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        sgd = self._sgd()
        g_new, cost = sgd.sample_grad(W_new, oracle, drawn)
        if self.momentum == 1.0:
            return state._replace(G=g_new, epochs=state.epochs + cost)
        g_old, _ = sgd.sample_grad(W_old, oracle, drawn)
        G = g_new + (1.0 - self.momentum) * (state.G - g_old)
        return state._replace(G=G, epochs=state.epochs + 2.0 * cost)


@register("estimator", conf=SubgradientConf, theorem="subgradient", label="SubGD",
          style={"linestyle": "-", "marker": "x"})
@dataclass(frozen=True)
class Subgradient(_Drawn):
    r"""Subgradient oracle for non-smooth convex problems: :math:`G_t \in \partial f(W_t)`."""

    name = "subgradient"
    exact_gradient = False

    def _sub(self, oracle, W):
        return oracle.subgradient(W) if hasattr(oracle, "subgradient") else oracle.grad(W)

    def theory_constants(self, problem) -> dict:
        return {}

    def init(self, W, oracle, seeds):
        return _start(self._sub(oracle, W), _zeros(W) + 1.0, W)

    def update_given(self, W_new, W_old, state, oracle, drawn, *, sync_free):
        return state._replace(G=self._sub(oracle, W_new), epochs=state.epochs + 1.0)


ESTIMATORS = {"gd": GD, "sgd": SGD, "page": PAGE, "mvr": MVR, "subgradient": Subgradient}


def make_estimator(name: str, **params):
    """Estimator by name (gd, sgd, page, mvr, subgradient). The distributed
    estimators (qgd, marina, ef21) need a compressor and are built by
    :func:`solvers.distributed.make_distributed_estimator`."""
    if name not in ESTIMATORS:
        raise ValueError(f"estimator: unknown name {name!r}; choose one of {sorted(ESTIMATORS)}")
    try:
        return ESTIMATORS[name](**params)
    except TypeError as exc:
        raise ValueError(f"estimator {name}: {exc}") from None
