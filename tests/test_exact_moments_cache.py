"""theory.exact_moments.Component makes its pieces' means and :math:`\\bar T` once (at the
first push) instead of at every step: the same bits as made afresh at every push, for
each component its own (a second component is never served the first's), and ``mean()``
hands out a copy (changing it changes nothing the component computes later)."""
import numpy as np

from theory.exact_moments import Component, Noise, Projection, Subset, haar_moments

M, N = 3, 2
D = M * N
SIZE = D + 1  # the state and the homogeneous coordinate


def _push_afresh(c, S):
    """Component.push as it was: the means and T-bar made at every call."""
    means = [p.mean() for p in c.pieces]
    Tbar = c.T0 + sum(means, np.zeros_like(c.T0))
    out = Tbar @ S @ Tbar.T
    for piece, mean in zip(c.pieces, means):
        out += piece.second(S) - mean @ S @ mean.T
    return out


def _component(seed):
    rng = np.random.default_rng(seed)
    first, fourth = haar_moments(M, 1)
    proj = Projection(L=rng.normal(size=(SIZE, D)), R=rng.normal(size=(D, SIZE)), m=M, n=N, side="left",
                      first=first, fourth=fourth)
    subset = Subset(terms=rng.normal(size=(4, SIZE, SIZE)), k=2, scale=2.0)
    noise = Noise(C=rng.normal(size=(SIZE, 2)), shape=(SIZE, SIZE), h=D)
    return Component(T0=rng.normal(size=(SIZE, SIZE)), pieces=(proj, subset, noise))


def _moments(rng):
    x = rng.normal(size=(SIZE, 3))
    return x @ x.T


def test_push_is_bitwise_the_push_made_afresh_at_every_step():
    rng = np.random.default_rng(0)
    c = _component(1)
    S = _moments(rng)
    for _ in range(5):  # the first push makes the means, the others reuse them
        got, want = c.push(S), _push_afresh(c, S)
        assert np.array_equal(got, want)
        S = 0.5 * (want + want.T) / np.abs(want).max()


def test_each_component_has_its_own_means():
    rng = np.random.default_rng(2)
    S = _moments(rng)
    a, b = _component(3), _component(4)
    a.push(S)  # a's means made first: b must not be served them
    assert np.array_equal(b.push(S), _push_afresh(b, S))
    assert not np.array_equal(a.mean(), b.mean())
    assert np.array_equal(a.mean(), a.T0 + sum((p.mean() for p in a.pieces), np.zeros_like(a.T0)))


def test_mean_is_a_copy():
    rng = np.random.default_rng(5)
    S = _moments(rng)
    c = _component(6)
    before = c.push(S)
    c.mean()[:] = 0.0  # a caller writing into what it got
    assert np.array_equal(c.push(S), before)
    assert np.array_equal(c.push(S), _push_afresh(c, S))
