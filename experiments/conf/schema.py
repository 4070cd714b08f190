"""Structured configs (dataclasses in Hydra's ConfigStore).

A wrong type (``steps=abc``) or an unknown group option (``problem=nonexistent``)
is rejected by Hydra with its own message before the job starts; value checks
(``method.p=1.5``) are done by :func:`experiments.build.build_job`, also before
any work, with one line naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

MISSING = "???"  # omegaconf.MISSING; spelled out so this module imports without Hydra

# ----------------------------------------------------------------------------- problems


@dataclass
class QuadraticConf:
    name: str = "quadratic"
    m: int = 8
    n: int = 6
    mu: float = 1.0
    L: float = 10.0
    seed: int = 0


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
    seed: int = 0


@dataclass
class LinregConf:
    name: str = "linreg"
    size: str = "${size}"


@dataclass
class L1Conf:
    name: str = "l1"
    m: int = 6
    n: int = 5
    n_samples: int = 120
    seed: int = 0


@dataclass
class MaxAffineConf:
    name: str = "maxaffine"
    m: int = 6
    n: int = 5
    n_pieces: Optional[int] = None  # None: 2 m n
    seed: int = 0


# ----------------------------------------------------------------------------- methods


@dataclass
class BernoulliLoRAConf:
    name: str = "bernoulli_lora"
    p: float = 0.5
    rank: int = 2
    alpha: float = 1.0


@dataclass
class FPFTConf:
    name: str = "fpft"


@dataclass
class LoRAConf:
    name: str = "lora"
    rank: int = 2
    alpha: float = 1.0
    random_A: bool = True
    init_scale: float = 1.0


@dataclass
class AsymmLoRAConf(LoRAConf):
    name: str = "asymm_lora"


@dataclass
class COLAConf(LoRAConf):
    name: str = "cola"
    merge_every: int = 10


# ----------------------------------------------------------------------------- estimators


@dataclass
class GDConf:
    name: str = "gd"


@dataclass
class SGDConf:
    name: str = "sgd"
    batch: Optional[int] = 10
    noise: Optional[float] = None


@dataclass
class PAGEConf:
    name: str = "page"
    batch: int = 10
    q: Optional[float] = None  # None: q = b / (b + N) as in the paper's code


@dataclass
class MVRConf:
    name: str = "mvr"
    momentum: float = 0.1
    batch: Optional[int] = 10
    noise: Optional[float] = None
    init_with: str = "sample"


@dataclass
class QGDConf:
    name: str = "qgd"
    transmit: str = "weights"  # weights | factor (clients send compressed r x n / m x r factor gradients)


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
class CompressorConf:
    name: str = "identity"
    k: Optional[int] = None
    s: Optional[int] = None


@dataclass
class StepsizeConf:
    rule: str = "constant"  # constant | polyak
    factor: float = 1.0  # gamma = factor / L


@dataclass
class RunConf:
    problem: Any = MISSING
    method: Any = MISSING
    estimator: Any = MISSING
    sketch: SketchConf = field(default_factory=SketchConf)
    compressor: CompressorConf = field(default_factory=CompressorConf)
    stepsize: StepsizeConf = field(default_factory=StepsizeConf)
    steps: int = 200
    seeds: int = 10
    seed: int = 0
    eval_every: int = 10
    track_every_step: bool = True
    device: str = "auto"
    size: str = "ci"
    results_root: str = "results"  # jobs write below it; a job complete anywhere below it is skipped
    progress: bool = True


GROUPS = {
    "problem": {"quadratic": QuadraticConf, "counterexample": CounterexampleConf, "logistic": LogisticConf,
                "linreg": LinregConf, "l1": L1Conf, "maxaffine": MaxAffineConf},
    "method": {"bernoulli_lora": BernoulliLoRAConf, "fpft": FPFTConf, "lora": LoRAConf,
               "asymm_lora": AsymmLoRAConf, "cola": COLAConf},
    "estimator": {"gd": GDConf, "sgd": SGDConf, "page": PAGEConf, "mvr": MVRConf, "qgd": QGDConf,
                  "marina": MARINAConf, "ef21": EF21Conf, "subgradient": SubgradientConf},
    "sketch": {n: SketchConf for n in ("gaussian", "orthonormal", "rademacher", "column")},
    "compressor": {"identity": CompressorConf, "randk": CompressorConf, "topk": CompressorConf,
                   "dither": CompressorConf, "natural": CompressorConf},
}
_PRESETS = {"compressor": {"randk": {"k": 4}, "topk": {"k": 4}, "dither": {"s": 4}}}


def group_config(group: str, name: str) -> dict:
    """The default mapping of one group option, as the Hydra app composes it."""
    import dataclasses

    if name not in GROUPS[group]:
        raise ValueError(f"{group}: unknown name {name!r}; choose one of {sorted(GROUPS[group])}")
    cls = GROUPS[group][name]
    kw = {"name": name} if "name" in cls.__dataclass_fields__ else {}
    kw.update(_PRESETS.get(group, {}).get(name, {}))
    return dataclasses.asdict(cls(**kw))


def job_config(*, problem="quadratic", method="bernoulli_lora", estimator="gd", sketch="gaussian",
               compressor="identity", **overrides) -> dict:
    """A full job configuration exactly as ``python -m experiments.run`` composes
    it (same keys, same defaults, hence the same config hash), without Hydra.
    ``overrides`` maps dotted keys (``method.p``) or top-level keys to values."""
    import dataclasses

    cfg = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
           for f in dataclasses.fields(RunConf)}
    cfg = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in cfg.items()}
    for group, name in (("problem", problem), ("method", method), ("estimator", estimator),
                        ("sketch", sketch), ("compressor", compressor)):
        cfg[group] = group_config(group, name)
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
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
            kw.update(_PRESETS.get(group, {}).get(name, {}))
            cs.store(group=group, name=name, node=cls(**kw))
