"""Block draws in the CPU loop (solvers.rng.block_draws, issue 14 item 3): the engine's
recorded numbers are bitwise those of one-step draws, for every problem, estimator,
method and sketch of the batch-invariance matrix, across block boundaries; a cache that
serves the wrong step is caught; draws for other seed tensors are left alone."""
import contextlib

import pytest
import torch

from solvers import rng
from solvers.engine import run
import numpy as np

from solvers.engine import FIELDS
from tests.test_batch_invariance import COMBOS, _job

KW = dict(steps=7, eval_every=2, track_every_step=True, graph="off")  # the loop (solvers.lean draws its own blocks)


def _assert_same(a, b, what):
    """Every recorded field but the wall time, and the final iterates, bitwise (NaN = NaN)."""
    for f in FIELDS:
        if f != "time_s":
            assert np.array_equal(a[f], b[f], equal_nan=True), f"{what}: field {f} differs\n{a[f]}\n{b[f]}"
    assert np.array_equal(a.W.numpy(), b.W.numpy(), equal_nan=True), f"{what}: final iterates differ"


def _plain(monkeypatch):
    """The engine without block draws (one-step draws, as before)."""
    monkeypatch.setattr(rng, "block_draws", lambda seeds, **kw: contextlib.nullcontext())


def _both(combo, monkeypatch, seeds=(3, 11, 5)):
    job = _job(combo)
    P = job.problem
    monkeypatch.setattr(rng, "BLOCK", 3)  # 7 steps cross two block boundaries
    blocks = run(job.method, P, P.W0, list(seeds), **KW)
    with monkeypatch.context() as m:
        _plain(m)
        plain = run(job.method, P, P.W0, list(seeds), **KW)
    return blocks, plain


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_block_draws_give_the_numbers_of_one_step_draws(combo, monkeypatch):
    blocks, plain = _both(combo, monkeypatch)
    _assert_same(plain, blocks, str(combo))


def test_a_cache_serving_the_wrong_step_is_caught(monkeypatch):
    """The check above fails for a cache that is off by one step."""
    get = rng._BlockCache.get

    def shifted(self, core, seeds, stream, step, sub, count):
        return get(self, core, seeds, stream, step + 1, sub, count)

    monkeypatch.setattr(rng._BlockCache, "get", shifted)
    blocks, plain = _both(("quadratic", "gd", "blora2", "gaussian", "constant"), monkeypatch)
    with pytest.raises(AssertionError):
        _assert_same(plain, blocks, "shifted cache")


def test_block_draws_draw_once_per_block_and_only_for_their_seeds(monkeypatch):
    calls = []
    core = rng._normal_core

    def counting(*args):
        calls.append(args[2])  # the step word(s): an int, or a (K,) tensor for a block
        return core(*args)

    monkeypatch.setattr(rng, "_normal_core", counting)
    seeds, other = torch.arange(4), torch.arange(4)
    with rng.block_draws(seeds, block=5):
        inside = [rng.normal(seeds, rng.Stream.SKETCH, t, (3, 2), sub=1) for t in range(12)]
        foreign = rng.normal(other, rng.Stream.SKETCH, 2, (3, 2), sub=1)
        assert rng.block_drawing(seeds) and not rng.block_drawing(other)
    assert not rng.block_drawing(seeds)
    assert sum(isinstance(c, torch.Tensor) for c in calls) == 3  # blocks at steps 0, 5, 10
    assert sum(not isinstance(c, torch.Tensor) for c in calls) == 1  # the foreign seeds' draw
    for t, z in enumerate(inside):
        assert z.is_contiguous() and torch.equal(z, rng.normal(seeds, rng.Stream.SKETCH, t, (3, 2), sub=1))
    assert torch.equal(foreign, inside[2])
    with pytest.raises(ValueError, match="block"):
        rng.block_draws(seeds, block=0)


def test_block_draws_are_per_thread():
    """A cache opened in one thread serves nothing in another (each thread its own stack)."""
    import threading

    seeds, seen = torch.arange(3), []
    with rng.block_draws(seeds, block=4):
        t = threading.Thread(target=lambda: seen.append(rng.block_drawing(seeds)))
        t.start()
        t.join()
        assert rng.block_drawing(seeds)
    assert seen == [False]
