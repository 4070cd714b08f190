"""Factored projections equal the dense pseudo-inverse reference, including
rank-deficient sketches (hypothesis over shapes and ranks)."""
import pytest
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


def _tol(S):
    """Round-off allowance of the Gram-matrix path: solving with S^T S squares the
    condition number kappa of the kept directions, so errors of order eps * kappa^2
    are inherent (a full-rank 2 x 2 Gaussian sketch can have kappa ~ 1e4)."""
    s = torch.linalg.svdvals(S)
    top = s.amax(-1, keepdim=True)
    kept = torch.where(s ** 2 > 1e-10 * S.shape[-1] * top ** 2, s, torch.full_like(s, float("inf")))
    kappa = float((top[..., 0] / kept.amin(-1)).max())
    return 1e-9 + 100 * torch.finfo(torch.float64).eps * kappa ** 2


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
    tol = _tol(B)
    torch.testing.assert_close(project_left(B, G), ref, atol=tol, rtol=tol)


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
    tol = _tol(At)
    torch.testing.assert_close(project_right(A, G), ref, atol=tol, rtol=tol)


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


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(2, 30), st.integers(1, 8), st.integers(0, 10**6))
def test_cholesky_path_equals_pinv_for_full_rank_sketches(m, n, r, seed):
    """full_rank=True (the sync-free CUDA path) computes the same projection as the
    pseudo-inverse when the Gram matrix is positive definite (Gaussian sketches)."""
    r = min(r, m, n)
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(3, m, r, generator=gen, dtype=torch.float64)
    A = torch.randn(3, r, n, generator=gen, dtype=torch.float64)
    G = torch.randn(3, m, n, generator=gen, dtype=torch.float64)
    scale = G.abs().max()
    assert torch.allclose(project_left(B, G, full_rank=True), project_left(B, G), atol=1e-9 * scale)
    assert torch.allclose(project_right(A, G, full_rank=True), project_right(A, G), atol=1e-9 * scale)


def test_cholesky_path_flags_singular_gram_with_nan():
    """A rank-deficient sketch on the Cholesky path gives NaN (reported as diverged),
    never a silently wrong projection; only that run is affected."""
    B = torch.randn(2, 6, 2, dtype=torch.float64)
    B[1, :, 1] = B[1, :, 0]  # repeated column
    G = torch.randn(2, 6, 5, dtype=torch.float64)
    out = project_left(B, G, full_rank=True)
    assert torch.isnan(out[1]).all()
    assert torch.allclose(out[0], project_left(B[:1], G[:1])[0], atol=1e-12)


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal", "column", "rademacher"])
def test_sync_free_direction_equals_default_direction(sketch):
    """The CUDA direction (both sides drawn, coin selects, Cholesky where the sketch is
    full rank a.s.) equals the default one run by run, on a mixed batch."""
    from solvers import rng
    from solvers.methods import BernoulliLoRA

    R, m, n, r = 12, 9, 7, 3
    G = torch.randn(R, m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seeds = torch.arange(R)
    method = BernoulliLoRA(p=0.5, rank=r, sketch=sketch)
    D, left = method.direction(G, seeds, 4)
    assert 0 < int(left.sum()) < R  # mixed batch
    again = rng.bernoulli(seeds, rng.Stream.COIN, 4, 0.5)
    assert torch.equal(left, again)
    D2 = method.direction_sync_free(G, seeds, 4, left)
    assert torch.allclose(D, D2, atol=1e-12)
