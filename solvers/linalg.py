"""Batched contractions and reductions whose per-run results do not depend on the batch.

On CPU three things make a run's numbers depend on the batch it shares:

* BLAS picks its kernel (and hence the order of floating-point accumulation) from
  the shapes it is given: ``V @ X.T`` with 1 column and with 50 columns, and even
  ``bmm`` with batch 1 and batch 50, differ in the last bits;
* an elementwise op lays its output out like its inputs, and a reduction follows that
  layout: a per-run (m, n) block stored transposed is summed in another order. Alone,
  a run's tensors are often views with other strides than in a batch (``reshape`` of
  a transposed (1, a, b) tensor is a view, of an (R, a, b) one a copy);
* a reduction with ONE output over at least ``GRAIN_SIZE`` = 32768 terms is split
  across threads (``at::parallel_reduce``'s two-pass path), a different order than
  the serial per-row sum of a batch of rows.

So the solvers and the oracles contract and reduce through these functions:

* :func:`bmm`, :func:`shared_matmul` in invariant mode (default on CPU): an elementwise
  product written into a contiguous buffer and reduced over its last axis when the
  intermediate is small (each output's reduction order is fixed by the contracted
  length only), else a loop over runs of one same-shaped matmul each on inputs in
  the standard (row-major) layout (the same kernel whatever the batch);
* :func:`per_matrix` for LAPACK routines (eigh, qr, cholesky): one call per matrix on
  a fresh, aligned copy (MKL's results depend on the alignment of its operands);
* :func:`row_sum` (sum over the last axis) and :func:`run_sum` (per-run sum over all
  axes but the first, in row-major order), which never take the one-output threaded
  path;
* fast mode (default on CUDA, or ``invariant=False``): one BLAS call, plain ``sum``.

A fourth thing makes them depend on the machine's thread count: MKL's LAPACK
(``qr``, ``eigh``, ``eigvalsh``, ``lstsq``) gives other bits with another number of
threads (a Ray worker runs with one, a local process with all cores). So LAPACK
runs on one thread: :func:`per_matrix` in invariant mode, and the building of a
problem and of a job's theory columns (:func:`one_thread`, used by
:mod:`experiments.build` and :mod:`experiments.job`).

Set the process-wide default with :func:`set_invariant` (e.g. the paper-size CPU
sweep turns it off for GEMM speed; results then differ in the last bits between
batch sizes, never in distribution).
"""
from __future__ import annotations

import contextlib
import math

import torch

_PER_RUN = 1 << 16  # per-run mul-sum intermediate (elements) above which we loop over runs
_CHUNK = 1 << 22  # elements of one chunk of the mul-sum intermediate
_SERIAL = 1 << 15  # at::internal::GRAIN_SIZE: a one-output reduction this long is split across threads
_INVARIANT = None  # None: by device (CPU invariant, CUDA fast)


def set_invariant(flag):
    """Force invariant mode on (True), off (False), or back to by-device (None)."""
    global _INVARIANT
    _INVARIANT = flag


@contextlib.contextmanager
def one_thread():
    """Run the body with one intra-op thread (torch's and MKL's), then restore the
    count: what runs inside gives the same bits whatever the process's thread count
    (MKL's LAPACK does not otherwise). Process-wide while it lasts."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _invariant(t: torch.Tensor, flag):
    return flag if flag is not None else invariant(t.device)


def invariant(device) -> bool:
    """Whether the batch-invariant kernels apply on ``device`` (a torch.device or its name)
    now: the process-wide setting of :func:`set_invariant`, else by device (CPU only)."""
    if _INVARIANT is not None:
        return _INVARIANT
    return (device if isinstance(device, torch.device) else torch.device(device)).type == "cpu"


def kernels(device) -> str:
    """``'invariant'`` or ``'fast'``: the kernels :func:`invariant` picks on ``device`` (the
    results table's ``kernels`` column, so that runs of the two modes are told apart)."""
    return "invariant" if invariant(device) else "fast"


def _standard(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the standard row-major layout (strides of size-1 axes included): a copy
    only where its strides differ, so BLAS gets the same leading dimensions alone and
    in a batch."""
    stride, want = 1, []
    for size in reversed(x.shape):
        want.append(stride)
        stride *= max(size, 1)
    if x.stride() == tuple(reversed(want)):
        return x
    return x.clone(memory_format=torch.contiguous_format)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Sums of the rows of a contiguous (rows, k) tensor, each in an order fixed by k."""
    n, k = x.shape
    if n == 1 and k >= _SERIAL:  # one output: read the row twice to stay on the per-row path
        return x.expand(2, k).sum(-1)[:1]
    return x.sum(-1)


def row_sum(x: torch.Tensor, *, invariant=None) -> torch.Tensor:
    """``x.sum(-1)``, each row summed in an order fixed by its length alone."""
    if not _invariant(x, invariant):
        return x.sum(-1)
    k = x.shape[-1]
    return _rows(x.reshape(-1, k).contiguous()).reshape(x.shape[:-1])


def run_sum(x: torch.Tensor, *, invariant=None) -> torch.Tensor:
    """Per-run sum over all axes but the first, (R, ...) -> (R,), in row-major order."""
    if not _invariant(x, invariant):
        return x.sum(tuple(range(1, x.ndim)))
    return _rows(_standard(x).reshape(x.shape[0], -1))


def per_matrix(fn, *xs, invariant=None):
    """``fn(*xs)`` for a LAPACK routine ``fn`` on batches of matrices ``xs`` (..., a, b) of one
    leading shape; ``fn`` returns a tensor or a tuple of tensors.

    Invariant mode: one call per matrix, on a fresh copy. MKL's result depends on the
    memory alignment of its operands, and a batched call stores matrix i at offset
    ``i * a * b`` elements, so the same matrix gives other bits in another position of a
    batch; a fresh copy is aligned as the matrix of a one-run batch is; and on one
    thread (:func:`one_thread`). Fast mode: one batched call."""
    if not _invariant(xs[0], invariant) or xs[0].shape[:-2].numel() == 0:
        return fn(*xs)
    lead = xs[0].shape[:-2]
    flat = [x.reshape(-1, *x.shape[-2:]) for x in xs]
    with one_thread():
        outs = [fn(*(f[i].clone() for f in flat)) for i in range(flat[0].shape[0])]
    if isinstance(outs[0], torch.Tensor):
        return torch.stack(outs).reshape(*lead, *outs[0].shape)
    return tuple(torch.stack(parts).reshape(*lead, *parts[0].shape) for parts in zip(*outs))


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """``x`` if it starts on a 64-byte boundary (as every fresh allocation does), else a copy."""
    return x if x.data_ptr() % 64 == 0 else x.clone()


def bmm(a: torch.Tensor, b: torch.Tensor, *, invariant=None) -> torch.Tensor:
    """``a @ b`` for batched ``a`` (R, i, k) and ``b`` (R, k, j)."""
    if not _invariant(a, invariant):
        return a @ b
    R, i, k = a.shape
    j = b.shape[-1]
    # the path depends on per-run sizes only, never on R
    if i * j * k <= _PER_RUN:
        return _mul_sum(a[:, :, None, :], b.transpose(-1, -2)[:, None, :, :], (i, j), k)
    # one GEMM per run, its operands in the layout and alignment of a one-run batch (MKL's
    # result depends on both)
    a, b = _standard(a), _standard(b)
    return _per_run_loop(torch.mm, lambda r: (_aligned(a[r]), _aligned(b[r])), R, (i, j), a, b)


def shared_matmul(V: torch.Tensor, M: torch.Tensor, *, invariant=None) -> torch.Tensor:
    """``V @ M`` for per-run rows ``V`` (R, k) and data ``M`` (k, j) shared by all runs."""
    if not _invariant(V, invariant):
        return V @ M
    R, k = V.shape
    j = M.shape[-1]
    if k * j <= _PER_RUN:
        return _mul_sum(V[:, None, :], _transposed(M)[None], (j,), k)
    V, Mt = _standard(V), _transposed(M)
    return _per_run_loop(torch.mv, lambda r: (Mt, _aligned(V[r])), R, (j,), V, M)


_TRANSPOSED: dict = {}  # (address, shape, strides, dtype, device, version) -> (M, M^T contiguous)
_TRANSPOSED_MAX = 1 << 20  # elements of a matrix whose transpose is kept (8 entries: <= 64 MiB)


def _transposed(M: torch.Tensor) -> torch.Tensor:
    """``M.transpose(0, 1).contiguous()``, kept for the shared data matrices that a solver
    multiplies by every step (the same values: a copy made once instead of per step). The
    entry holds ``M`` itself, so its memory cannot be reused by another tensor while the key
    (its address, layout and version counter, which any in-place write bumps) is cached."""
    if M.numel() > _TRANSPOSED_MAX or M.requires_grad:
        return M.transpose(0, 1).contiguous()
    key = (M.data_ptr(), tuple(M.shape), M.stride(), M.dtype, M.device, M._version)
    hit = _TRANSPOSED.get(key)
    if hit is None:
        if len(_TRANSPOSED) >= 8:
            _TRANSPOSED.pop(next(iter(_TRANSPOSED)))
        hit = _TRANSPOSED[key] = (M, M.transpose(0, 1).contiguous())
    return hit[1]


def _per_run_loop(fn, operands, R, shape, x, y):
    """``stack([fn(*operands(r)) for r])``, each result written in place where its slot of the
    output is 64-byte aligned (as a fresh tensor is), else computed fresh and copied."""
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return torch.stack([fn(*operands(r)) for r in range(R)])
    out = torch.empty(R, *shape, dtype=torch.result_type(x, y), device=x.device)
    for r in range(R):
        if out[r].data_ptr() % 64 == 0:
            fn(*operands(r), out=out[r])
        else:
            out[r].copy_(fn(*operands(r)))
    return out


def _mul_sum(x, y, shape, k):
    """``(x * y).sum(-1)`` for x, y broadcasting to (R, *shape, k): the product is written
    into a contiguous buffer (its layout then never depends on the inputs' strides) in
    chunks of runs, and each of its rows is summed in an order fixed by k alone."""
    R = max(x.shape[0], y.shape[0])
    step = max(1, _CHUNK // (k * math.prod(shape)))
    dtype = x.dtype if x.dtype == y.dtype else torch.result_type(x, y)
    grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    if R <= step and not grad:  # one chunk (small problems: the whole per-step cost is overhead)
        prod = torch.mul(x, y, out=torch.empty(R, *shape, k, dtype=dtype, device=x.device))
        return _rows(prod.view(-1, k)).view(R, *shape)
    parts = []
    for s in range(0, R, step):
        xs = x[s:s + step] if x.shape[0] > 1 else x
        ys = y[s:s + step] if y.shape[0] > 1 else y
        n = min(R, s + step) - s
        if grad:  # out= does not record the graph: the same values, copied into the layout
            prod = (xs * ys).expand(n, *shape, k).contiguous()
        else:
            prod = torch.mul(xs, ys, out=torch.empty(n, *shape, k, dtype=dtype, device=x.device))
        parts.append(_rows(prod.view(-1, k)).view(n, *shape))
    return parts[0] if len(parts) == 1 else torch.cat(parts)
