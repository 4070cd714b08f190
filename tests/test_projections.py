"""Factored projections equal the dense pseudo-inverse reference, including
rank-deficient sketches (hypothesis over shapes and ranks)."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers.projections import dense_projector_left, dense_projector_right, project_left, project_right


def _rank_deficient(mat, kind, gen):
    if kind == "duplicate" and mat.shape[-1] > 1:
        mat[..., -1] = mat[..., 0]
    elif kind == "zero":
        mat[..., 0] = 0.0
    elif kind == "combo" and mat.shape[-1] > 2:
        mat[..., -1] = 2 * mat[..., 0] - 3 * mat[..., 1]
    return mat


shapes = st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5),
                   st.sampled_from(["full", "duplicate", "zero", "combo"]), st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_left_projection_matches_dense(args):
    R, m, n, r, kind, seed = args
    r = min(r, m)
    gen = torch.Generator().manual_seed(seed)
    B = _rank_deficient(torch.randn(R, m, r, generator=gen, dtype=torch.float64), kind, gen)
    G = torch.randn(R, m, n, generator=gen, dtype=torch.float64)
    ref = dense_projector_left(B) @ G
    torch.testing.assert_close(project_left(B, G), ref, atol=1e-9, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_right_projection_matches_dense(args):
    R, m, n, r, kind, seed = args
    r = min(r, n)
    gen = torch.Generator().manual_seed(seed)
    At = _rank_deficient(torch.randn(R, n, r, generator=gen, dtype=torch.float64), kind, gen)
    A = At.transpose(-1, -2)
    G = torch.randn(R, m, n, generator=gen, dtype=torch.float64)
    ref = G @ dense_projector_right(A)
    torch.testing.assert_close(project_right(A, G), ref, atol=1e-9, rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_projection_is_orthogonal_and_idempotent(m, r, seed):
    r = min(r, m)
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(2, m, r, generator=gen, dtype=torch.float64)
    G = torch.randn(2, m, 3, generator=gen, dtype=torch.float64)
    P = project_left(B, G)
    torch.testing.assert_close(project_left(B, P), P, atol=1e-10, rtol=1e-10)
    # ||H G||^2 = <G, H G> for an orthogonal projection
    torch.testing.assert_close((P * P).sum((-2, -1)), (G * P).sum((-2, -1)), atol=1e-10, rtol=1e-10)


def test_all_zero_sketch_projects_to_zero():
    B = torch.zeros(1, 5, 2, dtype=torch.float64)
    G = torch.randn(1, 5, 3, dtype=torch.float64)
    assert torch.equal(project_left(B, G), torch.zeros_like(G))
