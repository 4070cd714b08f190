"""Structured configs (dataclasses in Hydra's ConfigStore): the one declaration
of every configuration key, its type, default and valid values.

Each group option (``problem=quadratic``, ``method=bernoulli_lora``, ...) is one
dataclass; its fields are exactly the keys that option takes. A field's
``metadata`` declares its valid values (:func:`param`: ``ge``, ``gt``, ``le``,
``choices``); ranges that only the component can know (a rank against the
problem's shape, ``k <= m n``) are checked by the component itself.
:func:`experiments.conf.check.check_config` enforces all of it on the plain
mapping, before any work, for the Hydra app and the Hydra-free sweep alike, and
refuses an unknown key (``+method.foo=1``) with one line naming the field.

Results columns: every key of a job's configuration is a column of its results
table (:func:`experiments.conf.check.config_columns`), named ``<group>_<key>``
(``problem_L``, ``estimator_batch``, ``compressor_k``, ``stepsize_factor``,
``stepsize_rule``); a group's ``name`` is the column named after the group
(``method``, ``problem``, ``estimator``, ``sketch``, ``compressor``), and
``method.p`` / ``method.rank`` are the core columns ``p`` / ``rank``. Top-level
keys that change the numbers keep their name (``steps``, ``eval_every``, ...).
Hence a key added here is a column without further work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from solvers.rng import _MASK32

MISSING = "???"  # omegaconf.MISSING; spelled out so this module imports without Hydra

#: the largest seed: the random streams (solvers.rng) key a run by the low 32 bits
#: of its seed, so seeds s and s + 2**32 would draw the same numbers
SEED_MAX = _MASK32


def param(default=None, *, ge=None, gt=None, le=None, choices=None):
    """A dataclass field with its valid values in ``metadata`` (bounds inclusive for
    ``ge`` / ``le``, strict for ``gt``; ``choices`` a tuple of allowed values)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, choices=choices).items() if v is not None}
    return field(default=default, metadata=meta)


def _seed(default=0):
    return param(default, ge=0, le=SEED_MAX)


# ----------------------------------------------------------------------------- problems
# (value ranges of problem parameters are checked by the problem factories)


@dataclass
class QuadraticConf:
    name: str = "quadratic"
    m: int = 8
    n: int = 6
    mu: float = 1.0
    L: float = 10.0
    seed: int = _seed()
    # a finite sum of n_samples least-squares terms (None: the plain quadratic),
    # residual std ``noise`` at W*, split over n_clients with ``heterogeneity``;
    # None leaves the factory's value (noise 1.0, heterogeneity 0.0) and keeps the
    # plain quadratic's config hash unchanged
    n_samples: Optional[int] = None
    noise: Optional[float] = None
    n_clients: Optional[int] = None
    heterogeneity: Optional[float] = None


@dataclass
class CounterexampleConf:
    name: str = "counterexample"


@dataclass
class LogisticConf:
    name: str = "logistic"
    m: int = 4  # classes
    n: int = 10  # features
    n_samples: int = 200
    lam: float = 0.01
    n_clients: Optional[int] = None
    heterogeneity: float = 0.0
    shift: float = 1.0
    seed: int = _seed()


@dataclass
class LinregConf:
    name: str = "linreg"
    size: str = param("${size}", choices=("ci", "paper"))
    # null: the paper's stated f; authors: the authors' code (full gradient grad f - A^T b/N,
    # its own W0). "stated" is no value here: null alone names the stated f, so it has one
    # config hash (null is left out of the hash: the same hashes as before the option existed)
    variant: Optional[str] = param(None, choices=("authors",))


@dataclass
class L1Conf:
    name: str = "l1"
    m: int = 6
    n: int = 5
    n_samples: int = 120
    seed: int = _seed()


@dataclass
class MaxAffineConf:
    name: str = "maxaffine"
    m: int = 6
    n: int = 5
    n_pieces: Optional[int] = None  # None: 2 m n
    seed: int = _seed()


# ----------------------------------------------------------------------------- methods


@dataclass
class BernoulliLoRAConf:
    # no alpha: the step is taken in weight space, W - gamma H_B G (or G H_A), where
    # the LoRA scaling alpha / r of the trained factor cancels (it multiplies the
    # factor's gradient and divides its contribution to W)
    name: str = "bernoulli_lora"
    p: float = param(0.5, ge=0, le=1)
    rank: int = param(2, ge=1)  # <= min(m, n): checked against the problem


@dataclass
class FPFTConf:
    name: str = "fpft"


@dataclass
class LoRAConf:
    name: str = "lora"
    rank: int = param(2, ge=1)
    alpha: float = param(1.0, gt=0)
    random_A: bool = True
    init_scale: float = 1.0


@dataclass
class AsymmLoRAConf(LoRAConf):
    name: str = "asymm_lora"


@dataclass
class COLAConf(LoRAConf):
    name: str = "cola"
    merge_every: int = param(10, ge=1)


# ----------------------------------------------------------------------------- estimators
# (q, momentum, noise and batch against N are checked by the estimators)


@dataclass
class GDConf:
    name: str = "gd"


@dataclass
class SGDConf:
    name: str = "sgd"
    batch: Optional[int] = param(10, ge=1)
    noise: Optional[float] = param(None, ge=0)


@dataclass
class PAGEConf:
    name: str = "page"
    batch: int = param(10, ge=1)
    q: Optional[float] = None  # None: q = b / (b + N) as in the paper's code


@dataclass
class MVRConf:
    name: str = "mvr"
    momentum: float = 0.1
    batch: Optional[int] = param(10, ge=1)
    noise: Optional[float] = param(None, ge=0)
    init_with: str = param("sample", choices=("sample", "full"))


@dataclass
class QGDConf:
    name: str = "qgd"
    # weights | factor (clients send compressed r x n / m x r factor gradients)
    transmit: str = param("weights", choices=("weights", "factor"))


@dataclass
class MARINAConf:
    name: str = "marina"
    q: float = 0.1


@dataclass
class EF21Conf:
    name: str = "ef21"


@dataclass
class SubgradientConf:
    name: str = "subgradient"


# ----------------------------------------------------------------------------- sketch, compressor


@dataclass
class SketchConf:
    name: str = "gaussian"


@dataclass
class WeightedColumnConf:
    # r distinct coordinates with inclusion probabilities ~ decay**i, capped at 1
    # (solvers.sketches.WeightedColumnSketch): E[H_B], E[H_A] are not multiples of I
    name: str = "weighted_column"
    left_decay: float = param(1.0, gt=0, le=1)  # rows of W (the m side, H_B)
    right_decay: float = param(1.0, gt=0, le=1)  # columns of W (the n side, H_A)


@dataclass
class IdentityConf:
    name: str = "identity"


@dataclass
class RandKConf:
    name: str = "randk"
    k: int = param(4, ge=1)


@dataclass
class RandKUnscaledConf:
    # Rand-k without the d/k scaling: contractive, alpha = k/d (for ef21)
    name: str = "randk_unscaled"
    k: int = param(4, ge=1)


@dataclass
class TopKConf:
    name: str = "topk"
    k: int = param(4, ge=1)


@dataclass
class DitherConf:
    name: str = "dither"
    s: int = param(4, ge=1)


@dataclass
class NaturalConf:
    name: str = "natural"


@dataclass
class StepsizeConf:
    rule: str = param("constant", choices=("constant", "polyak"))
    factor: float = param(1.0, gt=0)  # gamma = factor / L


@dataclass
class RunConf:
    problem: Any = MISSING
    method: Any = MISSING
    estimator: Any = MISSING
    sketch: Any = MISSING
    compressor: Any = MISSING
    stepsize: StepsizeConf = field(default_factory=StepsizeConf)
    steps: int = param(200, ge=1)
    seeds: int = param(10, ge=1)  # runs seed, seed + 1, ..., seed + seeds - 1 (all <= SEED_MAX)
    seed: int = _seed()
    eval_every: int = param(10, ge=1)
    track_every_step: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N (checked by experiments.build.resolve_device)
    size: str = param("ci", choices=("ci", "paper"))
    results_root: str = "results"  # jobs write below it; a job complete anywhere below it is skipped
    progress: bool = True
    # engine settings that do not change the numbers (experiments.confighash.NON_RESULT_KEYS):
    # the fused path of solvers.fused, and torch.compile of the random-number kernels
    graph: str = param("auto", choices=("auto", "off", "eager", "on"))
    compile_rng: bool = False


GROUPS = {
    "problem": {"quadratic": QuadraticConf, "counterexample": CounterexampleConf, "logistic": LogisticConf,
                "linreg": LinregConf, "l1": L1Conf, "maxaffine": MaxAffineConf},
    "method": {"bernoulli_lora": BernoulliLoRAConf, "fpft": FPFTConf, "lora": LoRAConf,
               "asymm_lora": AsymmLoRAConf, "cola": COLAConf},
    "estimator": {"gd": GDConf, "sgd": SGDConf, "page": PAGEConf, "mvr": MVRConf, "qgd": QGDConf,
                  "marina": MARINAConf, "ef21": EF21Conf, "subgradient": SubgradientConf},
    "sketch": {**{n: SketchConf for n in ("gaussian", "orthonormal", "rademacher", "column")},
               "weighted_column": WeightedColumnConf},
    "compressor": {"identity": IdentityConf, "randk": RandKConf, "randk_unscaled": RandKUnscaledConf,
                   "topk": TopKConf, "dither": DitherConf, "natural": NaturalConf},
}
#: the option of each group when none is chosen (config.yaml's defaults list says the same)
DEFAULTS = {"problem": "quadratic", "method": "bernoulli_lora", "estimator": "gd", "sketch": "gaussian",
            "compressor": "identity"}
#: groups without options (one dataclass, no ``name``)
FIXED_GROUPS = {"stepsize": StepsizeConf}

#: a group that only some options of another group use: (user group, its options
#: that use it). Any other choice must leave the group at its default option
#: (:data:`DEFAULTS`), since the value would be stored (and hashed) but never used.
USED_BY = {
    "sketch": ("method", ("bernoulli_lora",)),
    "compressor": ("estimator", ("qgd", "marina", "ef21")),
}


def group_config(group: str, name: str) -> dict:
    """The default mapping of one group option, as the Hydra app composes it."""
    import dataclasses

    if name not in GROUPS[group]:
        raise ValueError(f"{group}: unknown name {name!r}; choose one of {sorted(GROUPS[group])}")
    cls = GROUPS[group][name]
    kw = {"name": name} if "name" in cls.__dataclass_fields__ else {}
    return dataclasses.asdict(cls(**kw))


def set_key(cfg: dict, key: str, value) -> None:
    """``cfg[a][b] = value`` for the dotted ``key`` ``'a.b'`` (missing levels made), as a
    Hydra override does; an undeclared key is then refused by the schema check."""
    node = cfg
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def job_config(*, problem=DEFAULTS["problem"], method=DEFAULTS["method"], estimator=DEFAULTS["estimator"],
               sketch=DEFAULTS["sketch"], compressor=DEFAULTS["compressor"], **overrides) -> dict:
    """A full job configuration exactly as ``python -m experiments.run`` composes
    it (same keys, same defaults, hence the same config hash), without Hydra.
    ``overrides`` maps dotted keys (``method.p``) or top-level keys to values; a
    key the configuration does not have is added (and then refused by
    :func:`experiments.conf.check.check_config`, as Hydra's ``+key=value`` is)."""
    import dataclasses

    cfg = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
           for f in dataclasses.fields(RunConf)}
    cfg = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in cfg.items()}
    for group, name in (("problem", problem), ("method", method), ("estimator", estimator),
                        ("sketch", sketch), ("compressor", compressor)):
        cfg[group] = group_config(group, name)
    for key, value in overrides.items():
        set_key(cfg, key, value)
    if cfg["problem"].get("size") == "${size}":
        cfg["problem"]["size"] = cfg["size"]
    return cfg


def register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConf)
    for group, options in GROUPS.items():
        for name, cls in options.items():
            kw = {"name": name} if "name" in cls.__dataclass_fields__ else {}
            cs.store(group=group, name=name, node=cls(**kw))
