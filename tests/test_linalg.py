"""Batch-invariant contractions: per-run results equal alone and in a batch, bitwise,
on both code paths (mul-sum for small per-run sizes, per-run loop for large)."""
import pytest
import torch

from solvers.linalg import bmm, shared_matmul


@pytest.mark.parametrize("i,k,j", [(5, 3, 4), (64, 4, 64), (200, 40, 200)])
def test_bmm_batch_invariant_and_correct(i, k, j):
    gen = torch.Generator().manual_seed(i)
    a = torch.randn(30, i, k, generator=gen, dtype=torch.float64)
    b = torch.randn(30, k, j, generator=gen, dtype=torch.float64)
    full = bmm(a, b)
    torch.testing.assert_close(full, a @ b, rtol=1e-12, atol=1e-12)
    for r in (0, 7, 29):
        assert torch.equal(bmm(a[r:r + 1], b[r:r + 1])[0], full[r])


@pytest.mark.parametrize("k,j", [(16, 10), (300, 400)])
def test_shared_matmul_batch_invariant_and_correct(k, j):
    gen = torch.Generator().manual_seed(k)
    V = torch.randn(25, k, generator=gen, dtype=torch.float64)
    M = torch.randn(k, j, generator=gen, dtype=torch.float64)
    full = shared_matmul(V, M)
    torch.testing.assert_close(full, V @ M, rtol=1e-12, atol=1e-12)
    for r in (0, 11, 24):
        assert torch.equal(shared_matmul(V[r:r + 1], M)[0], full[r])
