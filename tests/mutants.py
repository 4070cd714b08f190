r"""Deliberately broken solvers (issue 11, item 6), applied in tests only, and the shipped
configurations they are applied to.

A *break* is a function ``job -> method``: given the honest job of a configuration
(:func:`experiments.build.build_job`) it returns the method object that actually runs.
:func:`run_with` runs that method on the job's problem and seeds and tabulates the
trajectory with the **honest** job (:func:`experiments.job.tabulate`): the bound, the
constants and the exact expectation are those of the configuration, as they would be if
the break were a bug in the solver. A break of the bound (:func:`wrong_lambda_bound`)
instead changes the job's constants and runs the honest method.

The repository's solvers are never edited: every break subclasses a solver class (or
wraps a compressor) and is built from the honest object's own fields.

Configurations: :func:`preset_config` composes one job of a shipped Hydra preset exactly as
``python -m experiments.run -m experiment=NAME`` composes it, and :func:`preset_jobs` lists
the preset's sweep (:data:`PRESETS`: ``exact_pairs``, every method/estimator pair of
issue 11 item 2 on an exactly solvable quadratic, and ``exact_isotropic``, where the PL
bound is within a constant factor of the exact mean).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools

import torch

from experiments.build import build_job
from experiments.job import tabulate
from experiments.results import config_hash
from solvers import rng
from solvers.compressors import RandK
from solvers.distributed import EF21, _compress, n_clients_of
from solvers.engine import run
from solvers.estimators import MVR, PAGE
from solvers.methods import BernoulliLoRA

#: the shipped presets the breaks are applied to (experiments/conf/experiment/)
PRESETS = ("exact_pairs", "exact_isotropic")


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
class MVRWithoutCorrection(MVR):
    r"""MVR whose STORM correction :math:`-(1-b)\,g(W_t;\xi_{t+1})` is dropped: plain momentum
    :math:`G_{t+1} = b\,g(W_{t+1};\xi_{t+1}) + (1-b)\,G_t` instead of
    :math:`g(W_{t+1};\xi_{t+1}) + (1-b)(G_t - g(W_t;\xi_{t+1}))`."""

    def update(self, W_new, W_old, state, oracle, seeds, step):
        sgd = self._sgd()
        g_new, cost = sgd.sample_grad(W_new, oracle, sgd.draw(seeds, step, W_new, oracle))
        G = self.momentum * g_new + (1.0 - self.momentum) * state.G
        return state._replace(G=G, epochs=state.epochs + cost)


@dataclasses.dataclass(frozen=True)
class BiasedRandK(RandK):
    r"""Rand-k that drops its d/k scaling but still declares itself unbiased (``omega`` =
    d/k - 1, so QGD and MARINA accept it): :math:`\mathbb E\,C(x) = \frac kd x`."""

    def apply(self, X, idx):
        Y, bits = super().apply(X, idx)
        return Y * (self.k / (X.shape[-1] * X.shape[-2])), bits


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


def mvr_without_correction(job):
    return _with_estimator(job, MVRWithoutCorrection(**_fields(job.method.estimator)))


def ef21_without_feedback(job):
    return _with_estimator(job, EF21WithoutFeedback(**_fields(job.method.estimator)))


def biased_compressor(job):
    r"""The unbiased Rand-k of QGD / MARINA replaced by :class:`BiasedRandK` (the exact
    expectation stays that of the configuration's unbiased Rand-k)."""
    est = job.method.estimator
    comp = BiasedRandK(**_fields(est.compressor))
    return _with_estimator(job, dataclasses.replace(est, compressor=comp))


def _fields(obj):
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


BREAKS = {"scaled_projection": scaled_projection, "swapped_coin": swapped_coin,
          "tripled_stepsize": tripled_stepsize, "page_without_correction": page_without_correction,
          "mvr_without_correction": mvr_without_correction, "ef21_without_feedback": ef21_without_feedback,
          "biased_compressor": biased_compressor}


def applies(name, cfg):
    """Whether break ``name`` changes the run of the job configuration ``cfg``: a projection,
    a coin and lambda only in Bernoulli-LoRA (FPFT has none), a correction, feedback or
    compressor only in its estimator."""
    method, est, comp = cfg["method"]["name"], cfg["estimator"]["name"], cfg["compressor"]["name"]
    if name in ("scaled_projection", "swapped_coin", "wrong_lambda_bound"):
        return method == "bernoulli_lora"
    return {"page_without_correction": est == "page", "mvr_without_correction": est == "mvr",
            "ef21_without_feedback": est == "ef21",
            "biased_compressor": est in ("qgd", "marina") and comp == "randk"}.get(name, True)


def wrong_lambda_bound(job):
    r"""The bound's :math:`\lambda_{\min}^p` doubled (the honest method runs)."""
    job.lmin_p = 2.0 * job.lmin_p
    return job


# --------------------------------------------------------------------------- shipped configurations

@functools.lru_cache(maxsize=None)
def _composed(overrides):
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    import experiments.run  # registers the schema and the ci_or_paper resolver

    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    sweep = {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    with open_dict(cfg):
        del cfg["hydra"]  # its run-time fields (hydra.job.num) exist only inside the app
    return experiments.run.job_config(cfg), sweep


def preset_jobs(preset):
    """The jobs of the shipped preset's sweep, as its yaml lists them: one tuple of Hydra
    overrides (``key=value``) per job, in the order of the sweep."""
    _, sweep = _composed((f"experiment={preset}",))
    return [tuple(f"{k}={v}" for k, v in zip(sweep, values)) for values in itertools.product(*sweep.values())]


def preset_config(preset, job=(), **overrides):
    """One job of the shipped preset (``job``: its sweep overrides, from :func:`preset_jobs`),
    composed by Hydra as the app composes it (``size=ci``), on the CPU; ``overrides``
    (top-level keys) replace its values."""
    cfg, _ = _composed((f"experiment={preset}", *job, "size=ci"))
    return {**copy.deepcopy(cfg), "device": "cpu", "progress": False, **overrides}


def label(cfg):
    """A short name of a job: method (RAC-LoRA for p in {0, 1}), p, estimator, compressor."""
    m = cfg["method"]
    name = m["name"] if m["name"] != "bernoulli_lora" else \
        (f"rac_lora(p={m['p']:g})" if m["p"] in (0, 1) else f"bernoulli_lora(p={m['p']:g})")
    est = cfg["estimator"]
    extra = "+noise" if est.get("noise") is not None else (f"+batch{est['batch']}" if est.get("batch") else "")
    comp = "" if cfg["compressor"]["name"] == "identity" else f"/{cfg['compressor']['name']}"
    return f"{name}/{est['name']}{extra}{comp}"


# --------------------------------------------------------------------------- running

def run_with(cfg, brk=honest, *, adjust=None):
    """The results table of ``cfg`` when the solver is broken by ``brk`` (a job -> method
    function) and the job first changed by ``adjust`` (job -> job; e.g. a wrong bound,
    :func:`wrong_lambda_bound`). Bound and exact expectation are those of the (adjusted)
    honest job."""
    job = build_job(cfg)
    if adjust is not None:
        job = adjust(job)
    method = brk(job)
    traj = run(method, job.problem, job.problem.W0, job.seeds, steps=cfg["steps"], eval_every=cfg["eval_every"],
               track_every_step=cfg.get("track_every_step", True))
    return tabulate(traj, job, cfg, config_hash(cfg))
