"""Structured configs (dataclasses in Hydra's ConfigStore), derived from the
components' own declarations.

Each group option (``problem=quadratic``, ``method=bernoulli_lora``, ...) is the
configuration dataclass its component registered (:mod:`solvers.registry`, next
to the class or factory it builds); its fields are exactly the keys that option
takes. A field's ``metadata`` declares its valid values (:func:`param`: ``ge``,
``gt``, ``le``, ``choices``); ranges that only the component can know (a rank
against the problem's shape, ``k <= m n``) are checked by the component itself.
This module declares only the top level (:class:`RunConf`, :class:`StepsizeConf`)
and reads the groups from the registry (:data:`GROUPS`, :data:`USED_BY`).
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
Hence a key added to a component's configuration dataclass (or here, at the top
level) is a column without further work.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from solvers import registry
from solvers.fused import GRAPH_MODES
from solvers.registry import param
from solvers.rng import _MASK32

MISSING = "???"  # omegaconf.MISSING; spelled out so this module imports without Hydra

#: the largest seed: the random streams (solvers.rng) key a run by the low 32 bits
#: of its seed, so seeds s and s + 2**32 would draw the same numbers
SEED_MAX = _MASK32


def _seed(default=0):
    return param(default, ge=0, le=SEED_MAX)


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
    # the fused path of solvers.fused / the lean CPU path of solvers.lean, and torch.compile
    # of the random-number kernels
    graph: str = param("auto", choices=GRAPH_MODES)
    compile_rng: bool = False


class _Groups(Mapping):
    """{group: {option: configuration dataclass}}, read from the registry at every
    access (a component registered later, e.g. by a test or a plug-in, is an option)."""

    def __getitem__(self, group):
        if group not in _GROUP_ORDER:
            raise KeyError(group)
        return {name: spec.conf for name, spec in registry.specs(group).items()}

    def __iter__(self):
        return iter(_GROUP_ORDER)

    def __len__(self):
        return len(_GROUP_ORDER)


#: the option groups, in the order of their results columns
_GROUP_ORDER = ("problem", "method", "estimator", "sketch", "compressor")
#: {group: {option: dataclass}} (live view of :mod:`solvers.registry`)
GROUPS = _Groups()
#: the option of each group when none is chosen (config.yaml's defaults list says the same)
DEFAULTS = {"problem": "quadratic", "method": "bernoulli_lora", "estimator": "gd", "sketch": "gaussian",
            "compressor": "identity"}
#: groups without options (one dataclass, no ``name``)
FIXED_GROUPS = {"stepsize": StepsizeConf}

def used_by() -> dict:
    """{group: (user group, its options that use it)} from the components' ``uses``
    (a method uses a sketch, a distributed estimator a compressor). Any other choice
    must leave the group at its default option (:data:`DEFAULTS`), since the value
    would be stored (and hashed) but never used."""
    out = {}
    for user in _GROUP_ORDER:
        for name, spec in registry.specs(user).items():
            for group in spec.uses:
                out.setdefault(group, (user, []))[1].append(name)
    return {g: (user, tuple(names)) for g, (user, names) in out.items()}


def __getattr__(name):
    if name == "USED_BY":  # a live view, like GROUPS
        return used_by()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def group_config(group: str, name: str) -> dict:
    """The default mapping of one group option, as the Hydra app composes it."""
    return registry.spec(group, name).default_config()


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
    for group in GROUPS:
        for name, spec in registry.specs(group).items():
            kw = {"name": name} if "name" in spec.conf.__dataclass_fields__ else {}
            cs.store(group=group, name=name, node=spec.conf(**kw))
