r"""Deliberately broken solvers (issue 11, item 6), applied in tests only.

A *break* is a function ``job -> method``: given the honest job of a configuration
(:func:`experiments.build.build_job`) it returns the method object that actually runs.
:func:`run_with` runs that method on the job's problem and seeds and tabulates the
trajectory with the **honest** job (:func:`experiments.job.tabulate`): the bound, the
constants and the exact expectation are those of the configuration, as they would be if
the break were a bug in the solver. A break of the bound (:func:`wrong_lambda_bound`)
instead changes the job's constants and runs the honest method.

The repository's solvers are never edited: every break subclasses a solver class (or
wraps a compressor) and is built from the honest object's own fields.
"""
from __future__ import annotations

import dataclasses

import torch

from experiments.build import build_job
from experiments.job import tabulate
from experiments.results import config_hash
from solvers import rng
from solvers.distributed import EF21, _compress, n_clients_of
from solvers.engine import run
from solvers.estimators import PAGE
from solvers.methods import BernoulliLoRA
from tests.test_exact import UnscaledRandK


# --------------------------------------------------------------------------- broken pieces

@dataclasses.dataclass(frozen=True)
class ScaledProjection(BernoulliLoRA):
    """The projected direction :math:`\\hat H_t(G)` scaled by 2 (e.g. a sketch normalised wrongly)."""

    def direction(self, G, seeds, step):
        D, left = super().direction(G, seeds, step)
        return 2.0 * D, left


@dataclasses.dataclass(frozen=True)
class SwappedCoin(BernoulliLoRA):
    """The coin's probabilities swapped: the left sketch with probability 1 - p."""

    def direction(self, G, seeds, step):
        honest = self.p
        object.__setattr__(self, "p", 1.0 - honest)
        try:
            return super().direction(G, seeds, step)
        finally:
            object.__setattr__(self, "p", honest)


def _tripled(cls):
    @dataclasses.dataclass(frozen=True)
    class TripledStepsize(cls):
        """The stepsize applied is 3 gamma (the table, bound and exact use gamma)."""

        def gamma(self, W, D, state, oracle):
            return 3.0 * super().gamma(W, D, state, oracle)

    return TripledStepsize


@dataclasses.dataclass(frozen=True)
class PAGEWithoutCorrection(PAGE):
    r"""PAGE that keeps :math:`G_t` when the q-coin fails (the minibatch correction
    :math:`\frac1b\sum_{i\in I}(\nabla f_i(W_{t+1}) - \nabla f_i(W_t))` dropped)."""

    def update(self, W_new, W_old, state, oracle, seeds, step):
        n = getattr(oracle, "n_samples", None)
        q = self.prob(n) if n else self.q
        coin = rng.bernoulli(seeds, rng.Stream.ESTIMATOR, step, q, device=W_new.device)
        G = torch.where(coin[:, None, None], oracle.grad(W_new), state.G)
        return state._replace(G=G, epochs=state.epochs + 1.0)


@dataclasses.dataclass(frozen=True)
class EF21WithoutFeedback(EF21):
    r"""EF21 without error feedback: :math:`G^i_{t+1} = C_i(\nabla f_i(W_{t+1}))` (plain
    compressed gradients) instead of :math:`G^i_t + C_i(\nabla f_i(W_{t+1}) - G^i_t)`."""

    def update(self, W_new, W_old, state, oracle, seeds, step):
        n_clients_of(oracle)
        C, bits = _compress(self.compressor, oracle.client_grads(W_new), seeds, step)
        return state._replace(G=C.mean(1), extra=C, epochs=state.epochs + 1.0, bits=state.bits + bits)


# --------------------------------------------------------------------------- breaks: job -> method

def _with_estimator(job, est):
    return dataclasses.replace(job.method, estimator=est)


def honest(job):
    return job.method


def scaled_projection(job):
    return ScaledProjection(**_fields(job.method))


def swapped_coin(job):
    return SwappedCoin(**_fields(job.method))


def tripled_stepsize(job):
    return _tripled(type(job.method))(**_fields(job.method))


def page_without_correction(job):
    return _with_estimator(job, PAGEWithoutCorrection(**_fields(job.method.estimator)))


def ef21_without_feedback(job):
    return _with_estimator(job, EF21WithoutFeedback(**_fields(job.method.estimator)))


def biased_compressor(job):
    r"""The unbiased Rand-k of QGD / MARINA replaced by Rand-k without its d/k scaling
    (:math:`\mathbb E\,C(x) = \frac kd x`; the exact expectation stays that of the
    configuration's unbiased Rand-k)."""
    est = job.method.estimator
    comp = UnscaledRandK(**_fields(est.compressor))
    return _with_estimator(job, dataclasses.replace(est, compressor=comp))


def _fields(obj):
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


BREAKS = {"scaled_projection": scaled_projection, "swapped_coin": swapped_coin,
          "tripled_stepsize": tripled_stepsize, "page_without_correction": page_without_correction,
          "ef21_without_feedback": ef21_without_feedback, "biased_compressor": biased_compressor}


# --------------------------------------------------------------------------- running

def ef21_unscaled_randk(job, k):
    """The job with EF21's compressor replaced by the contractive unscaled Rand-k (k of
    d = m n coordinates), whose exact expectations :mod:`theory.exact` knows. The
    configuration's own EF21 compressors (identity, top-k) have none: identity makes
    EF21 plain GD (no feedback to remove) and top-k is not affine."""
    m, n = job.problem.shape
    est = dataclasses.replace(job.method.estimator, compressor=UnscaledRandK(k=k, d=m * n))
    job.method = dataclasses.replace(job.method, estimator=est)
    job.estimator = est
    return job


def wrong_lambda_bound(job):
    r"""The bound's :math:`\lambda_{\min}^p` doubled (the honest method runs)."""
    job.lmin_p = 2.0 * job.lmin_p
    return job


def run_with(cfg, brk=honest, *, adjust=None):
    """The results table of ``cfg`` when the solver is broken by ``brk`` (a job -> method
    function) and the job first changed by ``adjust`` (job -> job; e.g. the EF21 compressor
    or a wrong bound). Bound and exact expectation are those of the (adjusted) honest job."""
    job = build_job(cfg)
    if adjust is not None:
        job = adjust(job)
    method = brk(job)
    traj = run(method, job.problem, job.problem.W0, job.seeds, steps=cfg["steps"], eval_every=cfg["eval_every"],
               track_every_step=cfg.get("track_every_step", True))
    return tabulate(traj, job, cfg, config_hash(cfg))
