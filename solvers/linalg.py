"""Batched contractions whose per-run results do not depend on the batch.

BLAS picks its kernel (and hence the order of floating-point accumulation) from
the shapes it is given: ``V @ X.T`` with 1 column and with 50 columns, and even
``bmm`` with batch 1 and batch 50, differ in the last bits on CPU. To make a
run's trajectory bitwise the same alone and inside a batch, the solvers and the
oracles contract through these two functions:

* invariant mode (default on CPU): an elementwise product reduced over the last
  axis when the intermediate is small (each output's reduction order is fixed
  by the contracted length only), else a loop over runs of one same-shaped
  matmul each (the same kernel whatever the batch);
* fast mode (default on CUDA, or ``invariant=False``): one BLAS call.

Set the process-wide default with :func:`set_invariant` (e.g. the paper-size CPU
sweep turns it off for GEMM speed; results then differ in the last bits between
batch sizes, never in distribution).
"""
from __future__ import annotations

import torch

_PER_RUN = 1 << 16  # per-run mul-sum intermediate (elements) above which we loop over runs
_CHUNK = 1 << 22  # elements of one chunk of the mul-sum intermediate
_INVARIANT = None  # None: by device (CPU invariant, CUDA fast)


def set_invariant(flag):
    """Force invariant mode on (True), off (False), or back to by-device (None)."""
    global _INVARIANT
    _INVARIANT = flag


def _invariant(t: torch.Tensor, flag):
    if flag is not None:
        return flag
    if _INVARIANT is not None:
        return _INVARIANT
    return t.device.type == "cpu"


def bmm(a: torch.Tensor, b: torch.Tensor, *, invariant=None) -> torch.Tensor:
    """``a @ b`` for batched ``a`` (R, i, k) and ``b`` (R, k, j)."""
    if not _invariant(a, invariant):
        return a @ b
    R, i, k = a.shape
    j = b.shape[-1]
    # the path depends on per-run sizes only, never on R
    if i * j * k <= _PER_RUN:
        bt = b.transpose(-1, -2)
        step = max(1, _CHUNK // (i * j * k))
        return torch.cat([(a[s:s + step, :, None, :] * bt[s:s + step, None, :, :]).sum(-1)
                          for s in range(0, R, step)])
    out = torch.empty(R, i, j, dtype=torch.result_type(a, b), device=a.device)
    for r in range(R):
        torch.mm(a[r], b[r], out=out[r])
    return out


def shared_matmul(V: torch.Tensor, M: torch.Tensor, *, invariant=None) -> torch.Tensor:
    """``V @ M`` for per-run rows ``V`` (R, k) and data ``M`` (k, j) shared by all runs."""
    if not _invariant(V, invariant):
        return V @ M
    R, k = V.shape
    j = M.shape[-1]
    if k * j <= _PER_RUN:
        Mt = M.transpose(0, 1)[None]
        step = max(1, _CHUNK // (k * j))
        return torch.cat([(V[s:s + step, None, :] * Mt).sum(-1) for s in range(0, R, step)])
    Mt = M.transpose(0, 1).contiguous()
    out = torch.empty(R, j, dtype=torch.result_type(V, M), device=V.device)
    for r in range(R):
        torch.mv(Mt, V[r], out=out[r])
    return out
