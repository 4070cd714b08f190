"""The fused path (solvers.fused: block draws, sync-free step) is BITWISE the engine's own
loop on CPU for every estimator (GD, SGD with minibatch and noise, PAGE, MVR, QGD,
MARINA, EF21, subgradient), every compressor, every sketch, FPFT, both stepsize rules
(constant, Polyak), with and without tracking, with diverging runs, and for block lengths
1, 7 (a partial last block) and 64 (one block). The body run here eagerly is the one
captured as a CUDA graph on a GPU (tests/test_cuda.py compares the two there)."""
import dataclasses

import numpy as np
import pytest
import torch

from experiments.problems import make_problem
from solvers import fused, rng
from solvers.compressors import make_compressor
from solvers.distributed import EF21, MARINA, QGD
from solvers.engine import FIELDS, run
from solvers.estimators import GD, MVR, PAGE, SGD, Subgradient
from solvers.methods import FPFT, BernoulliLoRA, LoRA

COMPARED = [f for f in FIELDS if f != "time_s"]
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def probs():
    return {"linreg": make_problem("linreg", size="ci"),  # finite sum, N = 200, 8 x 8
            "fed": make_problem("logistic", m=3, n=4, n_samples=24, n_clients=3, heterogeneity=0.5),
            "quad": make_problem("quadratic", m=6, n=5, mu=0.5, L=4.0, seed=2),  # f* known (Polyak)
            "l1": make_problem("l1", m=3, n=4)}


def _both(method, prob, *, steps=30, eval_every=7, block=7, track=True, monkeypatch):
    monkeypatch.setattr(rng, "BLOCK", block)
    kw = dict(steps=steps, eval_every=eval_every, track_every_step=track)
    loop = run(method, prob, prob.W0, SEEDS, graph="off", **kw)
    fusd = run(method, prob, prob.W0, SEEDS, graph="eager", **kw)
    return loop, fusd


def _assert_bitwise(loop, fusd):
    for f in COMPARED:
        np.testing.assert_array_equal(fusd[f], loop[f], err_msg=f)
    assert torch.equal(fusd.W, loop.W)


def _steps(prob, *factors):
    """Per-run stepsizes factor / L, one per seed (factor itself where L is unknown: l1)."""
    L = getattr(prob, "L", float("nan"))
    return tuple(float(f) / (L if np.isfinite(L) else 1.0) for f in factors)


COMP = {"identity": {}, "randk": {"k": 3}, "dither": {"s": 2}, "natural": {}, "topk": {"k": 3}}
CASES = {  # name: (problem, estimator)
    "gd": ("linreg", lambda: GD()),
    "sgd_b1": ("linreg", lambda: SGD(batch=1)),
    "sgd_b10": ("linreg", lambda: SGD(batch=10)),
    "sgd_full_batch": ("linreg", lambda: SGD(batch=200)),
    "sgd_noise": ("quad", lambda: SGD(noise=0.7)),
    "page_default_q": ("linreg", lambda: PAGE(batch=10)),
    "page_q03_b3": ("linreg", lambda: PAGE(batch=3, q=0.3)),
    "page_q1": ("linreg", lambda: PAGE(batch=5, q=1.0)),
    "mvr": ("linreg", lambda: MVR(momentum=0.3, batch=4)),
    "mvr_momentum1": ("linreg", lambda: MVR(momentum=1.0, batch=4)),
    "mvr_noise_full": ("quad", lambda: MVR(momentum=0.5, noise=0.4, init_with="full")),
    "subgradient": ("l1", lambda: Subgradient()),
    **{f"qgd_{c}": ("fed", (lambda c=c: QGD(compressor=make_compressor(c, **COMP[c]))))
       for c in ("identity", "randk", "dither", "natural")},
    "marina_randk": ("fed", lambda: MARINA(compressor=make_compressor("randk", k=3), q=0.3)),
    "marina_natural": ("fed", lambda: MARINA(compressor=make_compressor("natural"), q=0.5)),
    "marina_dither_q1": ("fed", lambda: MARINA(compressor=make_compressor("dither", s=1), q=1.0)),
    "ef21_topk": ("fed", lambda: EF21(compressor=make_compressor("topk", k=3))),
    "ef21_identity": ("fed", lambda: EF21()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_estimator_bitwise(monkeypatch, probs, case):
    """Mixed coins (p per run), rank 2, a partial last block (30 steps, blocks of 7)."""
    name, make = CASES[case]
    prob = probs[name]
    factor = 0.05 if name == "l1" else 0.5
    method = BernoulliLoRA(p=(0.0, 0.3, 0.7, 1.0), rank=2, estimator=make(), stepsize=_steps(prob, *[factor] * 4))
    loop, fusd = _both(method, prob, monkeypatch=monkeypatch)
    _assert_bitwise(loop, fusd)
    assert loop["iteration"][0, -1] == 30


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal", "rademacher", "column", "weighted_column"])
@pytest.mark.parametrize("est", ["sgd_b10", "page_default_q"])
def test_every_sketch_bitwise(monkeypatch, probs, sketch, est):
    from solvers.sketches import WeightedColumnSketch

    sk = WeightedColumnSketch(left_decay=0.7, right_decay=0.9) if sketch == "weighted_column" else sketch
    prob = probs["linreg"]
    method = BernoulliLoRA(p=(0.2, 0.5, 0.5, 0.8), rank=3, sketch=sk, estimator=CASES[est][1](),
                           stepsize=_steps(prob, 0.5, 0.5, 0.5, 0.5))
    _assert_bitwise(*_both(method, prob, monkeypatch=monkeypatch))


@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("track", [True, False])
def test_block_lengths_tracking_and_fpft(monkeypatch, probs, block, track):
    prob = probs["linreg"]
    for est in (SGD(batch=7), PAGE(batch=7, q=0.2)):
        for method in (FPFT(estimator=est, stepsize=_steps(prob, 0.3, 0.3, 0.5, 0.5)),
                       BernoulliLoRA(p=0.5, rank=1, estimator=est, stepsize=0.5 / prob.L)):
            _assert_bitwise(*_both(method, prob, block=block, track=track, eval_every=5, monkeypatch=monkeypatch))


@pytest.mark.parametrize("case", ["gd", "sgd_noise", "mvr_noise_full", "page_q03_b3"])
def test_polyak_bitwise(monkeypatch, probs, case):
    prob = probs["quad"]
    if case == "page_q03_b3":
        prob = make_problem("quadratic", m=6, n=5, mu=0.5, L=4.0, seed=2, n_samples=40, heterogeneity=0.5)
    est = CASES[case][1]()
    for method in (BernoulliLoRA(p=(0.0, 0.4, 0.6, 1.0), rank=2, estimator=est, stepsize=(0.5, 0.8, 1.0, 1.2),
                                 stepsize_rule="polyak", f_star=prob.f_star),
                   FPFT(estimator=est, stepsize=0.9, stepsize_rule="polyak", f_star=prob.f_star)):
        _assert_bitwise(*_both(method, prob, monkeypatch=monkeypatch))


@pytest.mark.parametrize("track", [True, False])
def test_diverging_runs_frozen_alike(monkeypatch, probs, track):
    """Two of four runs blow up (30/L, 80/L); masks, frozen epochs and bits, and the
    later points of the frozen runs are bitwise the loop's (with and without tracking:
    untracked, the masks change only at evaluation points)."""
    prob = make_problem("quadratic", m=4, n=3, mu=0.5, L=4.0, n_samples=36, n_clients=3, heterogeneity=0.5)
    est = MARINA(compressor=make_compressor("randk", k=3), q=0.3)
    method = BernoulliLoRA(p=0.5, rank=2, estimator=est, stepsize=_steps(prob, 0.5, 30.0, 1.0, 80.0))
    loop, fusd = _both(method, prob, steps=40, eval_every=4, track=track, monkeypatch=monkeypatch)
    assert loop["diverged"][[1, 3], -1].all() and not loop["diverged"][[0, 2], -1].any()
    _assert_bitwise(loop, fusd)


def test_all_runs_diverging_stops_alike(monkeypatch, probs):
    prob = probs["linreg"]
    method = BernoulliLoRA(p=0.5, rank=2, estimator=SGD(batch=10), stepsize=1e4 / prob.L)
    loop, fusd = _both(method, prob, steps=40, eval_every=3, monkeypatch=monkeypatch)
    assert loop["diverged"][:, -1].all()
    _assert_bitwise(loop, fusd)


@pytest.mark.parametrize("case", sorted(CASES))
def test_block_draws_are_the_per_step_draws(probs, case):
    """``method.draw`` of a range of steps, element [:, k], is bitwise the draw of one step."""
    name, make = CASES[case]
    prob = probs[name]
    method = BernoulliLoRA(p=(0.1, 0.5, 0.9, 0.5), rank=2, estimator=make(), stepsize=1.0)
    W = prob.W0.expand(4, *prob.W0.shape).contiguous()
    seeds = torch.tensor(SEEDS)
    block = fused._leaves(method.draw(seeds, range(5, 12), W, prob))
    for k, t in enumerate(range(5, 12)):
        one = fused._leaves(method.draw(seeds, t, W, prob))
        assert len(one) == len(block)
        for b, o in zip(block, one):
            assert torch.equal(b[:, k], o)


def test_the_comparison_catches_a_shifted_draw(monkeypatch, probs):
    """The check is not vacuous: a fused path that reads the estimator's draws one step
    late (round t instead of t + 1) is caught."""
    prob = probs["linreg"]
    method = BernoulliLoRA(p=0.5, rank=1, estimator=SGD(batch=10), stepsize=0.5 / prob.L)

    @dataclasses.dataclass(frozen=True)
    class Late(BernoulliLoRA):
        def draw(self, seeds, step, W, oracle):
            return self.direction_draws(seeds, step, W), self.estimator.draw(seeds, step, W, oracle)

    late = Late(**{f.name: getattr(method, f.name) for f in dataclasses.fields(method)})
    monkeypatch.setattr(fused, "eligible", lambda m: True)
    loop = run(method, prob, prob.W0, SEEDS, steps=10, graph="off")
    bad = run(late, prob, prob.W0, SEEDS, steps=10, graph="eager")
    assert not np.array_equal(bad["loss"], loop["loss"])
    assert np.array_equal(bad["loss"][:, 0], loop["loss"][:, 0])


def test_a_compressor_overriding_only_compress_is_refused():
    """The estimators call draw and apply; an override of compress alone would be skipped
    silently, so it is refused (one line); overriding apply is the way."""
    from solvers.compressors import RandK

    @dataclasses.dataclass(frozen=True)
    class OwnCompress(RandK):
        def compress(self, X, seeds, step, *, sub=0):
            Y, bits = super().compress(X, seeds, step, sub=sub)
            return 0.5 * Y, bits

    @dataclasses.dataclass(frozen=True)
    class OwnApply(RandK):
        def apply(self, X, idx):
            Y, bits = super().apply(X, idx)
            return 0.5 * Y, bits

    with pytest.raises(ValueError, match=r"^compressor: OwnCompress overrides compress but not apply") as info:
        QGD(compressor=OwnCompress(k=2))
    assert "\n" not in str(info.value)
    QGD(compressor=OwnApply(k=2))
    MARINA(compressor=RandK(k=2))


def test_paths_and_modes(probs):
    prob = probs["linreg"]
    W = prob.W0.expand(2, *prob.W0.shape).clone()
    lora = LoRA(estimator=SGD(batch=4), rank=1, stepsize=0.1)
    assert not fused.eligible(lora)

    @dataclasses.dataclass(frozen=True)
    class OwnUpdate(SGD):  # overrides update: the fused path would not run it
        def update(self, W_new, W_old, state, oracle, seeds, step):
            return super().update(W_new, W_old, state, oracle, seeds, step)

    assert not fused.eligible(BernoulliLoRA(p=0.5, rank=1, estimator=OwnUpdate(batch=4), stepsize=1.0))
    assert fused.eligible(BernoulliLoRA(p=0.5, rank=1, estimator=SGD(batch=4), stepsize=1.0))
    assert fused.eligible(BernoulliLoRA(p=0.5, rank=1, estimator=MARINA(q=0.5), stepsize=1.0))
    assert fused.mode("auto", torch.device("cpu")) == "off" and fused.mode("auto", torch.device("cuda")) == "graph"
    assert fused.mode("on", torch.device("cpu")) == "eager"
    # the pseudo-inverse (eigh) synchronises on CUDA: Rademacher at rank > 1 is not captured
    assert not fused.capturable(BernoulliLoRA(p=0.5, rank=2, sketch="rademacher", estimator=GD(), stepsize=1.0))
    assert fused.capturable(BernoulliLoRA(p=0.5, rank=1, sketch="rademacher", estimator=GD(), stepsize=1.0))
    assert fused.capturable(BernoulliLoRA(p=0.5, rank=2, sketch="column", estimator=GD(), stepsize=1.0))
    with pytest.raises(ValueError, match="^graph: expected one of"):
        run(lora, prob, prob.W0, [0, 1], steps=2, graph="yes")
    # the block shrinks where one step's draws are large, never below one step
    assert fused.block_size(W, prob, lora, 64) == 64
    big = type("Big", (), {"n_samples": 10**8})()
    assert fused.block_size(W, big, lora, 64) == 1
