"""Functional, per-seed optimisers over one flat (S, P) parameter buffer.

Optimisers are functional and elementwise, hence exactly per seed:
:class:`AdamW` (torch.optim.AdamW's update, weight decay 0.01 by default, with a
per-seed learning rate and per-seed, per-tensor step counts so that a factor that is
frozen in a round keeps its moments untouched) and plain :class:`SGD`.
:class:`Plateau` is ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode min, factor
0.1, threshold 1e-4 rel, patience 10) per seed, stepped on the validation loss after
every epoch.
"""
from __future__ import annotations

import math

import torch


def flat_views(tensors: list, n_seeds: int):
    """One contiguous (S, P) buffer holding ``tensors`` and views of it shaped like them.

    The views are autograd leaves; the optimiser updates the buffer in place, so a
    whole step of AdamW is a handful of kernels whatever the number of tensors.
    """
    sizes = [int(t[0].numel()) for t in tensors]
    flat = torch.cat([t.detach().reshape(n_seeds, -1) for t in tensors], dim=1).contiguous()
    views, start = [], 0
    for t, k in zip(tensors, sizes):
        views.append(flat[:, start:start + k].view(t.shape))
        start += k
    return flat, views, sizes


class _Masked:
    """The per-(seed, tensor) mask of the optimisers over a flat (S, P) buffer of L tensors,
    expanded to every parameter once per mask object (the trainer hands back the same
    object for a whole round), so a masked step launches no expansion kernels."""

    def __init__(self, flat: torch.Tensor, sizes: list):
        self.sizes = torch.tensor(sizes, device=flat.device)
        self.P = flat.shape[1]
        self._mask_key, self._mask_val = None, None

    def _expand(self, x):  # (S, L) -> (S, P)
        return x.repeat_interleave(self.sizes, dim=1, output_size=self.P)

    def _masks(self, active, dtype):
        """``(active as dtype (S, L), keep (S, P) bool)``, or ``(None, None)`` unmasked."""
        if active is None:
            return None, None
        if self._mask_key is not active:
            self._mask_key, self._mask_val = active, (active.to(dtype), self._expand(active))
        return self._mask_val


class AdamW(_Masked):
    """torch.optim.AdamW on a flat (S, P) buffer of L tensors, masked per (seed, tensor).

    ``active`` (S, L) bool says which tensors of which seeds take this step; the others
    keep value, moments and step count (so a factor frozen in a round is untouched).
    """

    def __init__(self, flat: torch.Tensor, sizes: list, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(flat, sizes)
        self.b1, self.b2 = betas
        self.eps, self.wd = eps, weight_decay
        self.m = torch.zeros_like(flat)
        self.v = torch.zeros_like(flat)
        self.t = torch.zeros(flat.shape[0], len(sizes), dtype=flat.dtype, device=flat.device)

    def update(self, flat, grad, active, lr):
        with torch.no_grad():
            act, keep = self._masks(active, self.t.dtype)
            t = self.t + (1.0 if act is None else act)
            tc = t.clamp(min=1.0)
            step_size = self._expand(lr[:, None] / (1 - self.b1**tc))
            bc2_sqrt = self._expand(torch.sqrt(1 - self.b2**tc))
            m = self.m.lerp(grad, 1 - self.b1)
            v = (self.v * self.b2).addcmul_(grad, grad, value=1 - self.b2)
            new = flat * (1 - lr[:, None] * self.wd) - step_size * m / (v.sqrt() / bc2_sqrt + self.eps)
            if active is None:
                flat.copy_(new), self.m.copy_(m), self.v.copy_(v)
            else:
                flat.copy_(torch.where(keep, new, flat))
                self.m.copy_(torch.where(keep, m, self.m))
                self.v.copy_(torch.where(keep, v, self.v))
            self.t = t

    def reset(self):
        for x in (self.m, self.v, self.t):
            x.zero_()

    def state_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.m, self.v, self.t))


class SGD(_Masked):
    """Plain SGD on the flat buffer, masked like :class:`AdamW`; no state."""

    def __init__(self, flat, sizes, **_):
        super().__init__(flat, sizes)

    def update(self, flat, grad, active, lr):
        with torch.no_grad():
            new = flat - lr[:, None] * grad
            _, keep = self._masks(active, flat.dtype)
            if keep is not None:
                new = torch.where(keep, new, flat)
            flat.copy_(new)

    def reset(self):
        pass

    def state_bytes(self) -> int:
        return 0


class Plateau:
    """ReduceLROnPlateau(mode='min', threshold_mode='rel') independently per seed."""

    def __init__(self, lr: torch.Tensor, *, factor=0.1, patience=10, threshold=1e-4, min_lr=0.0, eps=1e-8):
        self.lr = lr.clone()
        self.best = torch.full_like(lr, math.inf)
        self.bad = torch.zeros_like(lr)
        self.factor, self.patience, self.threshold, self.min_lr, self.eps = factor, patience, threshold, min_lr, eps

    def step(self, metric: torch.Tensor):
        better = metric < self.best * (1 - self.threshold)
        self.best = torch.where(better, metric, self.best)
        self.bad = torch.where(better, torch.zeros_like(self.bad), self.bad + 1)
        reduce = self.bad > self.patience
        new_lr = torch.clamp(self.lr * self.factor, min=self.min_lr)
        self.lr = torch.where(reduce & (self.lr - new_lr > self.eps), new_lr, self.lr)
        self.bad = torch.where(reduce, torch.zeros_like(self.bad), self.bad)
