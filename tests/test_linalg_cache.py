"""shared_matmul keeps the transpose of its shared data matrix (solvers.linalg._transposed):
the products are bitwise those of a fresh transpose, and a matrix written in place (or a
new matrix at the same address) is never served a stale transpose."""
import pytest
import torch

from solvers import linalg
from solvers.linalg import shared_matmul


def _fresh(V, M):
    """The product with the transpose made afresh (the kernel before the cache)."""
    saved = linalg._transposed
    try:
        linalg._transposed = lambda M: M.transpose(0, 1).contiguous()
        return shared_matmul(V, M)
    finally:
        linalg._transposed = saved


def _check_in_place_writes(M, V):
    """Products after in-place writes to M equal those with a fresh transpose."""
    for _ in range(3):
        assert torch.equal(shared_matmul(V, M), _fresh(V, M))
        M.mul_(1.5)
        M[0, 0] = 7.0


def test_kept_transposes_give_the_products_of_fresh_ones():
    gen = torch.Generator().manual_seed(0)
    for k, j in ((20, 30), (300, 400)):  # the mul-sum path and the per-run loop
        M = torch.randn(k, j, generator=gen, dtype=torch.float64)
        V = torch.randn(4, k, generator=gen, dtype=torch.float64)
        _check_in_place_writes(M, V)
        assert torch.equal(shared_matmul(V, M.T.contiguous().T), _fresh(V, M))  # a view: no copy kept
    for _ in range(20):  # freed matrices whose memory is reused by new ones
        M = torch.randn(20, 30, generator=gen, dtype=torch.float64)
        V = torch.randn(2, 20, generator=gen, dtype=torch.float64)
        assert torch.equal(shared_matmul(V, M), _fresh(V, M))
    assert len(linalg._TRANSPOSED) <= 8


def test_a_cache_that_ignores_in_place_writes_is_caught(monkeypatch):
    store = {}

    def stale(M):  # keyed on the address only
        return store.setdefault(M.data_ptr(), M.transpose(0, 1).contiguous())

    gen = torch.Generator().manual_seed(1)
    M = torch.randn(20, 30, generator=gen, dtype=torch.float64)
    V = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    monkeypatch.setattr(linalg, "_transposed", stale)
    with pytest.raises(AssertionError):
        _check_in_place_writes(M, V)
