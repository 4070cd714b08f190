"""Sketch distributions: shapes, closed-form E[H] against Monte Carlo with a
confidence interval, lambda_min^p / lambda_max^p, bad names."""
import numpy as np
import pytest
import torch

from solvers.sketches import lambda_p, make_sketch, monte_carlo_expected_projection


@pytest.mark.parametrize("name", ["gaussian", "orthonormal", "rademacher", "column"])
def test_shapes_and_determinism(name):
    sk = make_sketch(name)
    seeds = torch.arange(5)
    B = sk.sample_left(seeds, 3, 7, 2)
    A = sk.sample_right(seeds, 3, 2, 4)
    assert B.shape == (5, 7, 2) and A.shape == (5, 2, 4)
    assert torch.equal(B, sk.sample_left(seeds, 3, 7, 2))
    assert torch.equal(B[2:3], sk.sample_left(seeds[2:3], 3, 7, 2))


def test_orthonormal_columns():
    B = make_sketch("orthonormal").sample_left(torch.arange(4), 0, 9, 3)
    torch.testing.assert_close(B.transpose(-1, -2) @ B, torch.eye(3, dtype=B.dtype).expand(4, 3, 3))


def test_column_sketch_distinct_unit_columns():
    B = make_sketch("column").sample_left(torch.arange(50), 0, 6, 3)
    assert torch.equal(B.sum(1), torch.ones(50, 3, dtype=B.dtype))  # one 1 per column
    assert bool((B.sum(2) <= 1).all())  # distinct rows


@pytest.mark.parametrize("name", ["gaussian", "orthonormal", "column"])
@pytest.mark.parametrize("side,dim,r", [("left", 5, 2), ("right", 4, 1), ("left", 6, 6)])
def test_closed_form_matches_monte_carlo(name, side, dim, r):
    sk = make_sketch(name)
    c = sk.expected_projection(dim, r)
    assert c == pytest.approx(r / dim)
    mc = monte_carlo_expected_projection(sk, side, dim, r, samples=4000, seed=11)
    # every entry of E[H] = c I within its own confidence interval (z = 4)
    dev = np.abs(mc.mean - c * np.eye(dim))
    assert np.all(dev <= 4 * mc.stderr + 1e-12)
    assert abs(mc.scalar - c) <= mc.scalar_halfwidth + 1e-12


def test_rademacher_rank_deficiency_shrinks_expected_projection():
    # m = 2, r = 2: the two sign columns are dependent with probability 1/2, so
    # E[rank] = 1.5 and E[H] = 0.75 I (not r/m = 1).
    sk = make_sketch("rademacher")
    assert sk.expected_projection(2, 2) is None
    mc = monte_carlo_expected_projection(sk, "left", 2, 2, samples=8000, seed=3)
    assert abs(mc.scalar - 0.75) <= mc.scalar_halfwidth
    lo, hi = lambda_p("rademacher", 1.0, 2, 5, 2, samples=8000)
    assert lo == hi and abs(lo - 0.75) < 0.03


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_lambda_p_isotropic(p):
    lo, hi = lambda_p("gaussian", p, 8, 4, 2)
    assert lo == pytest.approx(p * 2 / 8 + (1 - p) * 2 / 4) and hi == lo


def test_bad_inputs():
    with pytest.raises(ValueError, match="sketch: unknown"):
        make_sketch("nope")
    with pytest.raises(ValueError, match="p: must lie"):
        lambda_p("gaussian", 1.5, 4, 4, 1)


@pytest.mark.parametrize("name", ["gaussian", "orthonormal", "rademacher"])
def test_block_draws_equal_per_step_draws(name):
    """Sketches that declare block_draws return (R, K, ...) whose [:, k] is the draw of
    step steps[k] (bitwise for the entrywise sketches; the Haar QR to rounding)."""
    sketch = make_sketch(name)
    assert sketch.block_draws
    seeds = torch.arange(5) * 3
    steps = range(11, 15)
    B = sketch.sample_left(seeds, steps, 9, 3)
    A = sketch.sample_right(seeds, steps, 3, 7)
    assert B.shape == (5, 4, 9, 3) and A.shape == (5, 4, 3, 7)
    for k, t in enumerate(steps):
        assert torch.allclose(B[:, k], sketch.sample_left(seeds, t, 9, 3), rtol=0, atol=1e-14)
        assert torch.allclose(A[:, k], sketch.sample_right(seeds, t, 3, 7), rtol=0, atol=1e-14)
        if name != "orthonormal":
            assert torch.equal(B[:, k], sketch.sample_left(seeds, t, 9, 3))
    assert not make_sketch("column").block_draws
