r"""Bernoulli-LoRA as a ``torch.optim.Optimizer``: no adapters, moments in factor space.

The method in weight space
--------------------------
A LoRA adapter on a weight :math:`W\in\mathbb{R}^{m\times n}` (``out x in``) computes
:math:`W + s\,BA` with :math:`B\in\mathbb{R}^{m\times r}`, :math:`A\in\mathbb{R}^{r\times n}`
and the scaling :math:`s` (PEFT: ``lora_alpha / r``). Bernoulli-LoRA (arXiv 2508.03820)
trains in rounds of ``every`` steps; at the start of round :math:`k` one coin
:math:`c_k\sim\mathrm{Bernoulli}(p)` is drawn for all weights at once:

* :math:`c_k=1`, **left** round: :math:`B=B_S` (``m x r``) is sampled and frozen,
  :math:`A` starts at 0 and is trained with gradient
  :math:`\partial L/\partial A = s\,B_S^\top G` (``r x n``), :math:`G=\partial L/\partial W`;
* :math:`c_k=0`, **right** round: :math:`A=A_S` (``r x n``) is sampled and frozen,
  :math:`B` starts at 0 and is trained with gradient :math:`s\,G A_S^\top` (``m x r``).

The PEFT path (:mod:`experiments.real_model.peft_switcher`) keeps :math:`A, B` as
adapter modules and folds :math:`s\,BA` into :math:`W` at the end of each round. This
optimiser keeps no adapter: an inner optimiser (AdamW or SGD) turns the factor gradient
into a factor update :math:`\Delta A` (moments of shape ``r x n``) and the weight is
updated at once,

.. math::

    W \leftarrow W + s\,B_S\,\Delta A \quad\text{(left)},\qquad
    W \leftarrow W + s\,\Delta B\,A_S \quad\text{(right)},

which is the PEFT path's merge applied step by step: after every step
:math:`W = W_0 + s\,B_S A_t` where :math:`W_0` is the weight at the start of the round,
so both paths see the same function and the same gradients (to float round-off).

What it stores per projected weight (``state[W]``): the inner optimiser's moments of the
trained side (AdamW: ``exp_avg``, ``exp_avg_sq`` of ``r x n`` or ``m x r``; SGD: the
momentum buffer), the round's frozen draw when ``cache_sketch=True`` (else it is drawn
again at every step: it is a pure function of the seed, the round and the layer), and the
trained factor itself only when ``weight_decay > 0`` (needed for decay on the factor).

Weight decay is that of the PEFT path: AdamW's decoupled decay (and SGD's L2 term) acts on
the trained *factor* (pulling :math:`A_t` towards 0, i.e. :math:`W` towards the round's
:math:`W_0`), not on :math:`W`. Parameters that are not projected (not 2-D, or in a group
with ``project=False``) get plain AdamW / SGD with the group's settings, decay on the
parameter itself.

Randomness
----------
Step :math:`t = 1, 2, \dots` belongs to round :math:`k = \lfloor (t-1)/\text{every}\rfloor`.
The coin is ``rng.bernoulli([seed], Stream.COIN, k, p)`` and the frozen draw of the
``l``-th projected weight (position among the projected parameters of ``param_groups``,
groups in order) comes from ``Stream.SKETCH`` at step ``k`` (:func:`frozen_factor`), the
convention of :class:`experiments.real_model.peft_switcher.BernoulliLoRASwitcher` with
the layers in ``named_modules`` order. ``tests/test_blora_optimizer.py`` checks that the
two follow the same trajectory.
"""
from __future__ import annotations

import math

import torch

from solvers import rng
from solvers.sketches import make_sketch

__all__ = ["BernoulliLoRAOptimizer", "frozen_factor", "coin_side", "state_bytes"]

LEFT, RIGHT = "left", "right"
_INNER = ("adamw", "sgd")
_MOMENTS = ("reset", "keep")
_DRAWS = ("sketch", "real_model")


def coin_side(seed: int, k: int, p: float) -> str:
    """Side of round ``k``: ``'left'`` with probability ``p`` (``Stream.COIN``, step ``k``)."""
    left = bool(rng.bernoulli(torch.tensor([int(seed)]), rng.Stream.COIN, int(k), float(p))[0])
    return LEFT if left else RIGHT


def frozen_factor(seed: int, k: int, layer: int, side: str, shape, rank: int, *, sketch="gaussian",
                  draws: str = "sketch", init_std: float = 1.0) -> torch.Tensor:
    r"""The frozen factor of layer ``layer`` in round ``k``, float64 on the CPU.

    Parameters
    ----------
    seed, k, layer : int
        Run seed, round and layer index (sub-streams ``2 layer`` and ``2 layer + 1``).
    side : {'left', 'right'}
        ``'left'``: :math:`B_S` of shape ``(m, r)``; ``'right'``: :math:`A_S`, ``(r, n)``.
    shape : (int, int)
        ``(m, n)`` of the weight.
    rank : int
        ``r``.
    sketch : str or Sketch
        :mod:`solvers.sketches` distribution, by name or as an object (``draws='sketch'``).
    draws : {'sketch', 'real_model'}
        ``'sketch'``: the sketch's tall draw on sub-stream ``2l`` (left) or ``2l+1``
        (right, transposed); ``'real_model'``: standard Gaussian factors as in
        :func:`experiments.real_model.methods.random_factors` (``A_S`` on ``2l``,
        ``B_S`` on ``2l+1``).
    init_std : float
        Multiplier of the draw.
    """
    m, n = (int(d) for d in shape)
    seeds = torch.tensor([int(seed)], dtype=torch.int64)
    if draws == "real_model":
        if side == LEFT:
            x = rng.normal(seeds, rng.Stream.SKETCH, int(k), (m, rank), sub=2 * layer + 1)[0]
        else:
            x = rng.normal(seeds, rng.Stream.SKETCH, int(k), (rank, n), sub=2 * layer)[0]
    else:
        sk = make_sketch(sketch) if isinstance(sketch, str) else sketch
        if side == LEFT:
            x = sk._draw(seeds, int(k), m, rank, 2 * layer, None, torch.float64)[0]
        else:
            x = sk._draw(seeds, int(k), n, rank, 2 * layer + 1, None, torch.float64)[0].T
    return float(init_std) * x


def state_bytes(optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (``numel * element_size``, nested dicts,
    lists and objects' tensor attributes included, each tensor counted once)."""
    seen, total = set(), 0

    def visit(v):
        nonlocal total
        if isinstance(v, torch.Tensor):
            if id(v) not in seen:
                seen.add(id(v))
                total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif hasattr(v, "__dict__") and not isinstance(v, type):
            for x in vars(v).values():
                visit(x)

    for st in optimizer.state.values():
        visit(st)
    return total


def _adamw_delta(g, st, pre, F, group):
    """torch AdamW on a tensor F (None = 0) with grad g: returns F_new - F, updates st."""
    b1, b2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    if pre + "exp_avg" not in st:
        st[pre + "step"] = 0
        st[pre + "exp_avg"] = torch.zeros_like(g)
        st[pre + "exp_avg_sq"] = torch.zeros_like(g)
    st[pre + "step"] += 1
    n = st[pre + "step"]
    m, v = st[pre + "exp_avg"], st[pre + "exp_avg_sq"]
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2 ** n)).add_(group["eps"])
    delta = m / denom * (-lr / (1 - b1 ** n))
    if wd and F is not None:
        delta.add_(F, alpha=-lr * wd)
    return delta


def _sgd_delta(g, st, pre, F, group):
    """torch SGD (L2 weight decay, momentum, dampening, Nesterov) on F: returns F_new - F."""
    lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
    d = g if not (wd and F is not None) else g.add(F, alpha=wd)
    if mom:
        buf = st.get(pre + "momentum_buffer")
        if buf is None:
            buf = st[pre + "momentum_buffer"] = d.clone()
        else:
            buf.mul_(mom).add_(d, alpha=1 - group["dampening"])
        d = d.add(buf, alpha=mom) if group["nesterov"] else buf
    return d * (-lr)


class BernoulliLoRAOptimizer(torch.optim.Optimizer):
    r"""Bernoulli-LoRA in weight space (see the module docstring).

    Parameters
    ----------
    params : iterable of tensors or of dicts
        Parameters or param groups. 2-D parameters of a group with ``project=True``
        (the default) are trained by Bernoulli-LoRA; the others by plain AdamW / SGD.
    lr : float
        Step size of the inner optimiser (on the factor).
    rank : int
        LoRA rank ``r`` (per group).
    scale : float
        LoRA scaling ``s`` (per group); PEFT's ``lora_alpha / r`` to match a PEFT run.
    p : float
        Probability of a left round (``B`` sampled, ``A`` trained); 1 / 0 is RAC-LoRA.
    every : int
        Round length in steps (1: a new coin and new draws at every step).
    seed : int
        Run seed; every draw is a pure function of (seed, round, layer).
    sketch : str
        Sketch distribution (:mod:`solvers.sketches`) for ``draws='sketch'``.
    draws : {'sketch', 'real_model'}
        Sampling convention (:func:`frozen_factor`).
    init_std : float
        Multiplier of every frozen draw.
    inner : {'adamw', 'sgd'}
        Inner optimiser on the trained factor.
    betas, eps : AdamW settings (per group).
    momentum, dampening, nesterov : SGD settings (per group).
    weight_decay : float
        Decay of the trained factor (AdamW: decoupled; SGD: L2 term), per group.
    moments : {'reset', 'keep'}
        ``'reset'``: the inner state restarts at every round; ``'keep'``: one state per
        side lives through the rounds (as ``optimizer_state='keep'`` in the PEFT path).
    cache_sketch : bool
        Keep the round's frozen draw in the state (``m r`` or ``r n`` numbers per weight)
        instead of drawing it again at every step.
    """

    def __init__(self, params, *, lr: float = 1e-3, rank: int = 8, scale: float = 1.0, p: float = 0.5,
                 every: int = 1, seed: int = 0, sketch: str = "gaussian", draws: str = "sketch",
                 init_std: float = 1.0, inner: str = "adamw", betas=(0.9, 0.999), eps: float = 1e-8,
                 momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, moments: str = "reset", cache_sketch: bool = True):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p: must lie in [0, 1], got {p}")
        if int(every) != every or every < 1:
            raise ValueError(f"every: must be an integer >= 1, got {every}")
        if inner not in _INNER:
            raise ValueError(f"inner: expected one of {_INNER}, got {inner!r}")
        if moments not in _MOMENTS:
            raise ValueError(f"moments: expected one of {_MOMENTS}, got {moments!r}")
        if draws not in _DRAWS:
            raise ValueError(f"draws: expected one of {_DRAWS}, got {draws!r}")
        sk = make_sketch(sketch)
        if draws == "real_model" and sk.name != "gaussian":
            raise ValueError(f"sketch: draws='real_model' samples Gaussian factors only, got {sk.name!r}")
        defaults = dict(lr=lr, rank=rank, scale=scale, betas=tuple(betas), eps=eps, momentum=momentum,
                        dampening=dampening, nesterov=nesterov, weight_decay=weight_decay, project=True)
        self.config = dict(p=float(p), every=int(every), seed=int(seed), sketch=sk.name, draws=draws,
                           init_std=float(init_std), inner=inner, moments=moments, cache_sketch=bool(cache_sketch))
        self._t = 0
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()  # a refused group leaves nothing behind
            raise

    def _check_group(self, g: dict) -> None:
        for key, ok in (("lr", g["lr"] >= 0), ("rank", int(g["rank"]) == g["rank"] and g["rank"] >= 1),
                        ("weight_decay", g["weight_decay"] >= 0), ("eps", g["eps"] >= 0),
                        ("momentum", g["momentum"] >= 0), ("dampening", g["dampening"] >= 0),
                        ("betas", all(0 <= b < 1 for b in g["betas"]))):
            if not ok:
                raise ValueError(f"{key}: invalid value {g[key]!r}")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0")
        for i, w in enumerate(g["params"]):  # a rank-min(m, n) adapter already spans every update
            if g["project"] and w.ndim == 2 and g["rank"] > min(w.shape):
                raise ValueError(f"rank: {g['rank']} exceeds min(m, n) = {min(w.shape)} of parameter {i} "
                                 f"(shape {tuple(w.shape)}) of param group {len(self.param_groups) - 1}")

    # ------------------------------------------------------------------ schedule
    @property
    def steps_taken(self) -> int:
        """Number of :meth:`step` calls so far."""
        return self._t

    def round_of(self, t: int) -> int:
        """Round of the ``t``-th step (``t >= 1``)."""
        return (int(t) - 1) // self.config["every"]

    def side_of_round(self, k: int) -> str:
        """``'left'`` or ``'right'``: the coin of round ``k``."""
        return coin_side(self.config["seed"], k, self.config["p"])

    def projected(self):
        """``(layer index l, group, parameter)`` of every projected weight, in order."""
        out = []
        for g in self.param_groups:
            for w in g["params"]:
                if g["project"] and w.ndim == 2:
                    out.append((len(out), g, w))
        return out

    def _frozen(self, st, l, w, k, side, group):
        if "sketch" in st:
            return st["sketch"]
        c = self.config
        S = frozen_factor(c["seed"], k, l, side, w.shape, int(group["rank"]), sketch=c["sketch"], draws=c["draws"],
                          init_std=c["init_std"]).to(dtype=w.dtype, device=w.device)
        if c["cache_sketch"]:
            st["sketch"] = S
        return S

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        """One step: the coin and draws of the step's round, factor gradients, inner update, W update."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t = self._t + 1
        k = self.round_of(t)
        if getattr(self, "_side_cache", (None, None))[0] != k:  # one coin per round, not per step
            self._side_cache = (k, self.side_of_round(k))
        side = self._side_cache[1]
        delta_fn = _adamw_delta if self.config["inner"] == "adamw" else _sgd_delta
        proj_ids = {id(w): l for l, _, w in self.projected()}
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                if w.grad.is_sparse:
                    raise RuntimeError("BernoulliLoRAOptimizer does not support sparse gradients")
                st = self.state[w]
                if id(w) not in proj_ids:
                    w.add_(delta_fn(w.grad, st, "", w, group))
                    continue
                if st.get("round") != k:  # first step of this weight in round k
                    for key in ("sketch", "factor"):
                        st.pop(key, None)
                    if self.config["moments"] == "reset":
                        for key in [x for x in st if x.startswith((LEFT + ".", RIGHT + "."))]:
                            del st[key]
                    st["round"] = k
                s = float(group["scale"])
                S = self._frozen(st, proj_ids[id(w)], w, k, side, group)
                G = w.grad
                g = (S.T @ G) * s if side == LEFT else (G @ S.T) * s
                F = None
                if group["weight_decay"]:
                    F = st.get("factor")
                    if F is None:
                        F = st["factor"] = torch.zeros_like(g)
                d = delta_fn(g, st, side + ".", F, group)
                if F is not None:
                    F.add_(d)
                w.add_(S @ d if side == LEFT else d @ S, alpha=s)
        self._t = t
        return loss

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self):
        sd = super().state_dict()
        sd["bernoulli_lora"] = dict(self.config, steps_taken=self._t)
        return sd

    def load_state_dict(self, state_dict) -> None:
        saved = state_dict.get("bernoulli_lora")
        if saved is None:
            raise ValueError("state_dict: no 'bernoulli_lora' entry (not saved by BernoulliLoRAOptimizer)")
        for key, mine in self.config.items():
            if saved.get(key) != mine:
                raise ValueError(f"state_dict.bernoulli_lora.{key}: saved {saved.get(key)!r}, this optimizer has {mine!r}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "bernoulli_lora"})
        self._t = int(saved["steps_taken"])

    def __repr__(self) -> str:
        c = self.config
        return (f"BernoulliLoRAOptimizer(p={c['p']}, every={c['every']}, seed={c['seed']}, inner={c['inner']!r}, "
                f"sketch={c['sketch']!r}, draws={c['draws']!r}, moments={c['moments']!r}, "
                f"groups={len(self.param_groups)}, projected={len(self.projected())}, steps_taken={self._t})")
