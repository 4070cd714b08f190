"""The counter-based hash under :mod:`solvers.rng`: Wellons' *lowbias32*, applied in rounds,
in three forms that give the same integers: on int64 tensors holding uint32 values with
split products (CUDA and other devices; no reliance on signed overflow), on Python ints,
and in numpy's uint32 (the CPU), plus the uniforms made from pairs of words.

On a CPU the words and the uniforms are computed in numpy, in place, on chunks of about
``_WORDS_CHUNK`` words that stay in cache: every operation is exact integer arithmetic
mod 2**32 or one IEEE double operation, so the numbers are bitwise those of the tensor
forms (``tests/test_rng.py``: property tests against the tensor path and a written-out
formula, known-answer tests, and slips that they catch).
"""
from __future__ import annotations

import math

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for 0 <= x < 2**32, without int64 overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


#: Wellons' lowbias32: (xor-shift, multiply) rounds, then a last xor-shift; every form of
#: the hash below (int64 tensors, Python ints, numpy uint32) reads these
_HASH_ROUNDS = ((16, 0x7FEB352D), (15, 0x846CA68B))
_HASH_LAST_SHIFT = 16
#: added to the hashed (key ^ element) word before the last hash of _bits_core
_WORD_OFFSET = 0x27D4EB2F


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash on int64 tensors holding uint32 values."""
    x = x & _MASK32
    for shift, mul in _HASH_ROUNDS:
        x = _mul32(x ^ (x >> shift), mul)
    return x ^ (x >> _HASH_LAST_SHIFT)


def _hash32_int(x: int) -> int:
    """:func:`hash32` on one Python integer (same function, no tensor)."""
    x &= _MASK32
    for shift, mul in _HASH_ROUNDS:
        x = ((x ^ (x >> shift)) * mul) & _MASK32
    return x ^ (x >> _HASH_LAST_SHIFT)


def _words_tensor(k: torch.Tensor, count: int) -> torch.Tensor:
    """The words of the run keys ``k`` (R, [K]) and element indices ``0..count-1``."""
    idx = torch.arange(count, dtype=torch.int64, device=k.device)
    return hash32(hash32(k[..., None] ^ hash32(idx)) + _WORD_OFFSET)


def _hash32_numpy(x: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """:func:`hash32` on a uint32 array, in place (unsigned arithmetic wraps mod 2**32);
    ``tmp``, an array of x's shape, holds the shifted words (else one is allocated)."""
    tmp = np.empty_like(x) if tmp is None else tmp
    for shift, mul in _HASH_ROUNDS:
        np.right_shift(x, np.uint32(shift), out=tmp)
        x ^= tmp
        x *= np.uint32(mul)
    np.right_shift(x, np.uint32(_HASH_LAST_SHIFT), out=tmp)
    x ^= tmp
    return x


#: uint32 words hashed at a time by _words_uint32: its passes over them stay in cache
_WORDS_CHUNK = 1 << 15


def _word_chunks(k: torch.Tensor, count: int, out: np.ndarray | None = None):
    """Yield ``(i, x)``: the words (rows, count) of the keys ``k`` (flattened) from row i on,
    hashed in place in chunks of about ``_WORDS_CHUNK`` words, so the eighteen passes over
    a chunk run in cache; ``x`` is a view of ``out`` (all keys' words) if given, else of a
    buffer reused by the next chunk."""
    idx = _hash32_numpy(np.arange(count, dtype=np.uint32))
    keys = k.numpy().astype(np.uint32).reshape(-1)
    rows = max(1, _WORDS_CHUNK // count)
    buf = np.empty((min(rows, keys.size), count), dtype=np.uint32) if out is None else None
    tmp = np.empty((min(rows, keys.size), count), dtype=np.uint32)
    for i in range(0, keys.size, rows):
        n = min(rows, keys.size - i)
        x = out[i:i + n] if out is not None else buf[:n]
        t = tmp[:n]
        np.bitwise_xor(keys[i:i + n, None], idx, out=x)
        _hash32_numpy(x, t)
        x += np.uint32(_WORD_OFFSET)
        _hash32_numpy(x, t)
        yield i, x


def _words_uint32(k: torch.Tensor, count: int) -> np.ndarray:
    """:func:`_words_tensor` on a CPU, in numpy's uint32: the same integers (every
    operation is exact mod 2**32), with one multiplication where the int64 tensors that
    the other devices use need two split products and three masks (the hashing is most
    of a small problem's draw cost)."""
    out = np.empty((math.prod(k.shape), count), dtype=np.uint32)
    for _ in _word_chunks(k, count, out):
        pass
    return out.reshape(*k.shape, count)


def _uniforms_numpy(k: torch.Tensor, count: int) -> np.ndarray:
    """The uniforms (``*k.shape``, count) of :func:`_uniform_core` on a little-endian CPU,
    each chunk of words converted while in cache. Bitwise the tensor path: a * 2**26 + b
    is an integer below 2**53, so forming it in integers and converting once is exact, as
    the float product and sum are; then the same + 0.5 and / 2**53. A pair of words read
    as one uint64 (the first word low) gives a and b by shifts."""
    u = np.empty((math.prod(k.shape), count), dtype=np.float64)
    for i, x in _word_chunks(k, 2 * count):
        x = x.view(np.uint64)
        c = x >> np.uint64(5)
        c &= np.uint64(0x7FFFFFF)  # a: the top 27 bits of the first word
        c <<= np.uint64(26)
        c |= x >> np.uint64(38)  # b: the top 26 bits of the second word
        v = u[i:i + len(c)]
        v[...] = c
        v += 0.5
        v /= _TWO_53
    return u.reshape(*k.shape, count)


def _words_numpy(k: torch.Tensor, count: int) -> torch.Tensor:
    """:func:`_words_uint32` as int64, like the tensor path."""
    return torch.from_numpy(_words_uint32(k, count).astype(np.int64))


#: a uniform from two words: (a * 2**26 + b + 0.5) / 2**53 with a, b their top 27 and 26 bits
_TWO_26, _TWO_53 = 67108864.0, 9007199254740992.0


def _uniform_from_words(a, b):
    """The uniform of the top-bit integers ``a`` and ``b`` (float64 tensors or arrays):
    every operation is one IEEE double operation, so numpy and torch give the same bits."""
    return (a * _TWO_26 + b + 0.5) / _TWO_53
