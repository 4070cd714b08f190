"""Counter-based random numbers, one stream per source of randomness, per run.

Every random number a solver draws is a pure function of
``(seed of the run, stream, step, element index)``: a 32-bit integer hash
(Wellons' *lowbias32*, applied in rounds; :mod:`solvers.hashing`, in numpy on a CPU and
on integer tensors elsewhere, the same integers). Hence

* a run's trajectory depends only on its own seed: bitwise the same whether it
  runs alone or inside a batch of any size, and on a rerun;
* the streams (coin, sketch, minibatch, noise, compressor, ...) are independent
  of each other, so e.g. changing the estimator does not change the coin flips;
* sampling is vectorised over the leading run axis (no Python loop over runs
  and no per-run ``torch.Generator``), so it costs a few elementwise kernels on
  CPU and GPU alike.

``random_bits``, ``uniform``, ``normal``, ``bernoulli``, ``signs``, ``subset`` and
``integers`` also take a block of steps (a ``range`` or
list of ints) for ``step`` and return ``(R, K, *shape)``, element ``[:, k]`` bitwise equal
to the draw of step ``steps[k]`` alone, or an (R, K) integer array of per-run steps,
element ``[r, k]`` the draw of run r at step ``steps[r, k]`` (a run's own steps only, e.g.
the steps at which its coin chose the side being drawn): a solver can draw K steps' sketches in one call,
and inside :class:`block_draws` (used by the engine's CPU loop) every one-step draw for a
run's seeds is served from such a block.

The integer arithmetic (:mod:`solvers.hashing`) is exact mod 2**32: in numpy's uint32 on a
CPU, and elsewhere on int64 tensors holding 32-bit values, every product split so that it
stays below 2**63 (no reliance on signed overflow).
"""
from __future__ import annotations

import enum
import math
import sys
import threading
import warnings

import numpy as np
import torch

from solvers.hashing import (_MASK32, _hash32_int, _uniform_from_words, _uniforms_numpy, _words_numpy,
                             _words_tensor, hash32)


class Stream(enum.IntEnum):
    """Identifiers of the independent sources of randomness."""

    COIN = 1  # the Bernoulli(p) left/right choice
    SKETCH = 2  # the sketch matrix (left and right use distinct sub-streams)
    MINIBATCH = 3  # sample indices of stochastic gradients
    NOISE = 4  # additive gradient noise
    COMPRESSOR = 5  # randomised compressors
    ESTIMATOR = 6  # estimator coins (PAGE / MARINA probability q)
    INIT = 7  # random initialisation of factors (LoRA, COLA, AsymmLoRA)
    DATA = 8  # problem generation


def _as_seed_tensor(seeds, device) -> torch.Tensor:
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device)
    if seeds.ndim != 1:
        raise ValueError("seeds: expected a 1-D sequence of integers (one per run)")
    return seeds


def _key_constants(stream: int, step: int, sub: int) -> tuple[int, int, int]:
    """The per-call integers mixed into the run keys: stream key, low and high step word
    (the latter xor the sub-stream key)."""
    step = int(step)
    return (_hash32_int(int(stream) * 0x9E3779B1 & _MASK32), step & _MASK32,
            ((step >> 32) & _MASK32) ^ (int(sub) * 0x85EBCA6B & _MASK32))


def _key_constants_steps(stream: int, steps, sub: int, device) -> tuple:
    """:func:`_key_constants` for a block of steps: the step words as int64 tensors of the
    block's shape, (K,) or per run (R, K) (the same masks and xor, on an int64 array)."""
    t = np.asarray(steps, dtype=np.int64)
    if t.ndim not in (1, 2):
        raise ValueError("steps: expected a sequence of integers, or an (R, K) array of them per run")
    if t.size == 0:
        raise ValueError("steps: need at least one step")
    key, _, sub_key = _key_constants(stream, 0, sub)  # the step-0 words: no step bits in sub_key
    lo = torch.from_numpy(t & _MASK32).to(device)
    mix = torch.from_numpy(((t >> 32) & _MASK32) ^ sub_key).to(device)
    return key, lo, mix


def _run_keys(seeds, stream_key, step_lo, mix):
    """Per-run keys (R,) for one step, or (R, K) when ``step_lo`` and ``mix`` are (K,)
    tensors of a block of steps or (R, K) ones of per-run steps (the same function of
    (seed, stream, step, sub))."""
    k = hash32(hash32(seeds & _MASK32) ^ stream_key)
    if isinstance(step_lo, torch.Tensor):
        k = k[:, None]
    k = hash32(k + step_lo)
    return hash32(k ^ mix)


def _in_numpy(k: torch.Tensor) -> bool:
    """Whether the words of the keys ``k`` are made in numpy (on a CPU, outside torch.compile)."""
    return k.device.type == "cpu" and not torch.compiler.is_compiling()


def _words(k: torch.Tensor, count: int) -> torch.Tensor:
    """The words (``*k.shape``, count) of the keys ``k``, int64: numpy's uint32 hash on a CPU,
    the int64 tensor hash elsewhere (the same integers)."""
    return _words_numpy(k, count) if _in_numpy(k) else _words_tensor(k, count)


def _bits_core(seeds: torch.Tensor, stream_key, step_lo, mix, count: int) -> torch.Tensor:
    """Uniform 32-bit words (R, [K,] count) for the run keys of (seed, stream, step, sub)."""
    return _words(_run_keys(seeds, stream_key, step_lo, mix), count)


def _uniform_core(seeds, stream_key, step_lo, mix, count: int) -> torch.Tensor:
    k = _run_keys(seeds, stream_key, step_lo, mix)
    if _in_numpy(k) and sys.byteorder == "little":  # words and conversion in numpy, bitwise the same
        return torch.from_numpy(_uniforms_numpy(k, count))
    words = _words(k, 2 * count).reshape(*k.shape, count, 2)
    return _uniform_from_words((words[..., 0] >> 5).to(torch.float64), (words[..., 1] >> 6).to(torch.float64))


def _normal_core(seeds, stream_key, step_lo, mix, count: int) -> torch.Tensor:
    u = _uniform_core(seeds, stream_key, step_lo, mix, 2 * count)
    u = u.reshape(*u.shape[:-1], count, 2)
    return torch.sqrt(-2.0 * torch.log(u[..., 0])) * torch.cos(2.0 * math.pi * u[..., 1])


# The draws are plain eager integer kernels on every device: a block of K steps is one
# draw (solvers.fused), so their launch cost is shared by K steps and nothing needs
# torch.compile. ``set_compile(True)`` compiles the three core functions with
# torch.compile instead (fewer, fused kernels for code that draws one step at a time on
# CUDA; integers identical, normals possibly different in the last ulp from eager, i.e.
# float rounding like a change of device); it costs the compilation (seconds to tens of
# seconds) once per process. If compilation fails the eager functions are used.
_COMPILED: dict = {}
_COMPILE = [False]


def set_compile(flag: bool) -> None:
    """Compile the draw kernels with torch.compile (True) or run them eagerly (False, the default)."""
    if not isinstance(flag, bool):
        raise ValueError(f"compile_rng: expected true or false, got {flag!r}")
    _COMPILE[0] = flag


#: steps of randomness drawn at once by the block draws (the engine's CPU loop and
#: solvers.fused): a cost knob only, the numbers are those of one-step draws
BLOCK = 64


class _BlockCache:
    """Draws of ``block`` consecutive steps at once for the run seeds ``seeds`` (one tensor
    object), served one step at a time; see :func:`block_draws`."""

    def __init__(self, seeds: torch.Tensor, block: int, max_elements: int):
        self.seeds, self.block, self.max_elements = seeds, int(block), int(max_elements)
        self.store: dict = {}

    def get(self, core, seeds, stream, step, sub, count):
        """The draw of ``step`` (a contiguous tensor), or None where this cache does not apply."""
        if seeds is not self.seeds or seeds.shape[0] * count * self.block > self.max_elements:
            return None
        key = (core, int(stream), int(sub), int(count))
        first, values = self.store.get(key, (None, None))
        if first is None or not first <= step < first + self.block:
            first = int(step)
            values = _call(core, seeds, stream, range(first, first + self.block), sub, count)
            self.store[key] = (first, values)
        return values[:, step - first].contiguous()


_LOCAL = threading.local()  # per thread: .caches, the active _BlockCache objects (innermost last)


def _caches() -> list:
    caches = getattr(_LOCAL, "caches", None)
    if caches is None:
        caches = _LOCAL.caches = []
    return caches


class block_draws:
    """Context manager: inside it, every one-step draw for the run seeds ``seeds`` (the very
    tensor object) comes from a draw of ``block`` consecutive steps made at the first
    request and kept per (stream, sub-stream, kind, size); draws for other seed tensors,
    blocks, or more than ``max_elements`` numbers per block are made as usual.

    The numbers are bitwise those of the per-step draws (a block draw's element
    ``[:, k]`` is the draw of step ``first + k``, see the module docstring); only the count
    of small kernels changes: on a CPU a one-step draw is ~100 elementwise integer
    kernels whatever its size, so small problems pay them once per ``block`` steps."""

    def __init__(self, seeds: torch.Tensor, *, block: int | None = None, max_elements: int = 1 << 22):
        block = BLOCK if block is None else block
        if not (isinstance(block, int) and block >= 1):
            raise ValueError(f"block: must be an integer >= 1, got {block}")
        self._cache = _BlockCache(seeds, block, max_elements)

    def __enter__(self):
        _caches().append(self._cache)
        return self

    def __exit__(self, *exc):
        _caches().remove(self._cache)
        return False


def block_drawing(seeds) -> bool:
    """Whether one-step draws for ``seeds`` come from a :class:`block_draws` cache now."""
    caches = _caches()
    return bool(caches) and caches[-1].seeds is seeds


def _call(core, seeds: torch.Tensor, stream: int, step, sub: int, count: int) -> torch.Tensor:
    """``core`` for one step (``step`` an int) or a block of steps (``step`` a range or
    sequence of ints: one more leading axis K after the run axis)."""
    caches = _caches()
    if caches and not _is_block(step):
        hit = caches[-1].get(core, seeds, stream, step, sub, count)
        if hit is not None:
            return hit
    if _is_block(step):
        _lead(seeds, step)  # refuses per-run steps of another run count before any work
        consts = _key_constants_steps(stream, step, sub, seeds.device)
    else:
        consts = _key_constants(stream, step, sub)
    if _COMPILE[0]:
        fn = _COMPILED.get(core)
        if fn is None:
            fn = _COMPILED[core] = torch.compile(core, dynamic=True)
        if fn is not False:
            try:
                return fn(seeds, *consts, count)
            except Exception as exc:  # pragma: no cover - depends on the toolchain
                warnings.warn(f"solvers.rng: torch.compile failed ({type(exc).__name__}); using eager kernels")
                _COMPILED[core] = False
    return core(seeds, *consts, count)


def _is_block(step) -> bool:
    return isinstance(step, (range, list, tuple, np.ndarray))


def _lead(seeds, step) -> tuple:
    """Leading output axes: (R,) for one step, (R, K) for a block of K steps or an (R, K)
    array of per-run steps."""
    R = seeds.shape[0]
    if isinstance(step, np.ndarray) and step.ndim == 2:
        if step.shape[0] != R:
            raise ValueError(f"steps: an array of per-run steps needs {R} rows (one per seed), got {step.shape[0]}")
        return (R, step.shape[1])
    return (R, len(step)) if _is_block(step) else (R,)


def random_bits(seeds, stream: int, step: int, shape, *, sub: int = 0, device=None) -> torch.Tensor:
    """Uniform 32-bit integers (as int64), shape ``(R, *shape)``."""
    device = device if device is not None else getattr(seeds, "device", None)
    seeds = _as_seed_tensor(seeds, device)
    shape = tuple(int(s) for s in shape)
    bits = _call(_bits_core, seeds, stream, step, sub, math.prod(shape))
    return bits.reshape(_lead(seeds, step) + shape)


def uniform(seeds, stream: int, step: int, shape, *, sub: int = 0, device=None, dtype=torch.float64) -> torch.Tensor:
    """Uniform numbers in the open interval (0, 1), shape ``(R, *shape)``.

    Two 32-bit words give a 53-bit mantissa, as in numpy's ``random_sample``.
    """
    device = device if device is not None else getattr(seeds, "device", None)
    seeds = _as_seed_tensor(seeds, device)
    shape = tuple(int(s) for s in shape)
    u = _call(_uniform_core, seeds, stream, step, sub, math.prod(shape))
    return u.reshape(_lead(seeds, step) + shape).to(dtype)


def normal(seeds, stream: int, step: int, shape, *, sub: int = 0, device=None, dtype=torch.float64) -> torch.Tensor:
    """Standard normal numbers (Box-Muller), shape ``(R, *shape)``."""
    device = device if device is not None else getattr(seeds, "device", None)
    seeds = _as_seed_tensor(seeds, device)
    shape = tuple(int(s) for s in shape)
    z = _call(_normal_core, seeds, stream, step, sub, math.prod(shape))
    return z.reshape(_lead(seeds, step) + shape).to(dtype)


def bernoulli(seeds, stream: int, step: int, prob, *, sub: int = 0, device=None) -> torch.Tensor:
    """One Bernoulli(prob) draw per run, shape ``(R,)`` (``(R, K)`` for a block of K
    steps), dtype bool.

    ``prob`` is a float or a tensor of shape ``(R,)`` (runs may have different p).
    prob = 1 gives True and prob = 0 gives False surely.
    """
    u = uniform(seeds, stream, step, (), sub=sub, device=device)
    prob = torch.as_tensor(prob, dtype=torch.float64, device=u.device)
    if _is_block(step) and prob.ndim == 1:
        prob = prob[:, None]  # one probability per run, for each of the K steps
    return u < prob


def signs(seeds, stream: int, step: int, shape, *, sub: int = 0, device=None, dtype=torch.float64) -> torch.Tensor:
    """Rademacher (+1/-1 with probability 1/2 each), shape ``(R, *shape)``."""
    bits = random_bits(seeds, stream, step, shape, sub=sub, device=device)
    return ((bits >> 31) * 2 - 1).to(dtype)


def subset(seeds, stream: int, step: int, population: int, size: int, *, sub: int = 0, device=None) -> torch.Tensor:
    """``size`` distinct indices from ``range(population)`` per run, uniformly
    without replacement; shape ``(R, size)``, dtype int64, sorted order of the
    random keys (i.e. a uniformly random ordered sample); ``(R, K, size)`` for a block
    of K steps."""
    if not 1 <= size <= population:
        raise ValueError(f"batch size: need 1 <= size <= {population}, got {size}")
    keys = random_bits(seeds, stream, step, (population,), sub=sub, device=device)
    # ties between 32-bit keys are broken by index (stable sort), which keeps
    # the result deterministic; their bias is O(population / 2**32).
    return torch.argsort(keys, dim=-1, stable=True)[..., :size]


def integers(seeds, stream: int, step: int, high: int, shape, *, sub: int = 0, device=None) -> torch.Tensor:
    """Uniform integers in ``range(high)`` (with replacement), shape ``(R, *shape)``."""
    u = uniform(seeds, stream, step, shape, sub=sub, device=device)
    return torch.clamp((u * high).to(torch.int64), max=high - 1)
