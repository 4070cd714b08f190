"""Components that describe themselves: one registry of problems, methods,
estimators, sketches and compressors.

Every component registers itself where it is defined, with :func:`register`
(in the style of peft's ``PEFT_TYPE_TO_CONFIG_MAPPING``, but filled by a
decorator instead of a hand-kept dict)::

    @dataclass
    class PAGEConf:                       # its configuration: keys, types, defaults,
        name: str = "page"                # valid values (param(..., ge=1))
        batch: int = param(10, ge=1)
        q: Optional[float] = None

    @register("estimator", conf=PAGEConf, needs=("finite_sum",), theorem="page",
              label="PAGE", style={"linestyle": "-.", "marker": "s"})
    class PAGE: ...

What a :class:`Spec` declares, and who reads it:

* ``conf`` -- the option's keys, types, defaults and valid values
  (:func:`param`); :mod:`experiments.conf.schema` derives the Hydra config
  groups, the validation and the results columns from it;
* ``target`` -- the class or factory the configuration builds
  (:mod:`experiments.build`: ``target(**params, **context)``);
* ``needs`` -- what the component needs of a problem (:data:`NEEDS`); a problem
  says what it provides (``Problem.provides()``), and :func:`missing` compares them
  before any work;
* ``uses`` -- the other config groups this option uses (a method uses a sketch,
  a distributed estimator a compressor): any other option leaves them at their
  default;
* ``theorem`` -- estimators: the key of the theorem family in
  :data:`theory.dispatch.THEOREMS`; methods: whether the weight-space theorems
  apply (True) or why not (a string);
* ``label`` and ``style`` -- its display name and line style
  (:mod:`figures.style` reads them).

This module imports no torch. The built-in components are registered when their
module is imported; :func:`specs` imports the modules of :data:`PROVIDERS` on
first use.

**Extension point.** A new component (a user's package, a test file) is registered
by applying :func:`register` before the configuration is built. For the Hydra app
and the sweep, which run in their own processes, name the module in the
environment variable ``BLORA_PLUGINS`` (comma-separated ``module`` or
``module:function``; the module is imported and the function, if given, called
once, before the first look-up; as pytest's ``PYTEST_PLUGINS``)::

    BLORA_PLUGINS=mypkg.components python -m experiments.run estimator=my_estimator

A plug-in's component names enter the configuration (and its hash) like the
built-in ones; the code behind a name is the user's to keep fixed.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

KINDS = ("problem", "method", "estimator", "sketch", "compressor")
#: what a component may need of a problem (and a problem may provide), with the
#: problem attribute that provides it: a finite sum (``n_samples``, with
#: ``minibatch_grad``), clients (``n_clients``, with ``client_grads``), the optimal
#: value ``f_star``, the minimiser ``W_star``
NEEDS = {"finite_sum": "n_samples", "clients": "n_clients", "f_star": "f_star", "W_star": "W_star"}
#: the modules that register the built-in components of each kind
PROVIDERS = {
    "problem": ("experiments.problems",),
    "method": ("solvers.methods", "solvers.distributed"),
    "estimator": ("solvers.estimators", "solvers.distributed"),
    "sketch": ("solvers.sketches",),
    "compressor": ("solvers.compressors",),
}

#: the environment variable naming plug-in modules (see the module docstring)
PLUGINS_ENV = "BLORA_PLUGINS"

_SPECS: dict = {kind: {} for kind in KINDS}
_LOADED: set = set()
_PLUGINS_LOADED: list = []


def param(default=None, *, ge=None, gt=None, le=None, choices=None):
    """A configuration dataclass field with its valid values in ``metadata``
    (bounds inclusive for ``ge`` / ``le``, strict for ``gt``; ``choices`` a tuple
    of allowed values). :func:`experiments.conf.check.check_config` enforces them."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, choices=choices).items() if v is not None}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Spec:
    """One registered component (see the module docstring for each field)."""

    kind: str
    name: str
    target: Callable
    conf: type
    needs: frozenset = frozenset()
    uses: tuple = ()
    theorem: Union[str, bool, None] = None
    label: Optional[str] = None
    style: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    def default_config(self) -> dict:
        """The option's default mapping, as the Hydra app composes it."""
        kw = {"name": self.name} if "name" in self.conf.__dataclass_fields__ else {}
        return dataclasses.asdict(self.conf(**kw))

    def keys(self) -> tuple:
        return tuple(f.name for f in dataclasses.fields(self.conf))

    @property
    def display(self) -> str:
        return self.label if self.label is not None else self.name


def register(kind: str, name: Optional[str] = None, *, conf: type, needs=(), uses=(),
             theorem=None, label=None, style=None, replace: bool = False, **extra):
    """Decorator: register the decorated class or factory as component ``name``
    (default: its ``name`` attribute) of ``kind``; returns it unchanged.

    Raises
    ------
    ValueError
        Unknown kind or need, a ``conf`` that is not a dataclass, or a name taken
        (unless ``replace``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    for need in needs:
        if need not in NEEDS:
            raise ValueError(f"needs: expected some of {tuple(NEEDS)}, got {need!r}")
    if not dataclasses.is_dataclass(conf):
        raise ValueError(f"conf: expected a dataclass, got {conf!r}")

    def deco(target):
        key = name if name is not None else getattr(target, "name", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"name: {target!r} has no name; pass register(kind, name, ...)")
        if key in _SPECS[kind] and not replace and _SPECS[kind][key].target is not target:
            raise ValueError(f"{kind}: {key!r} is registered already (pass replace=True to override)")
        _SPECS[kind][key] = Spec(kind, key, target, conf, frozenset(needs), tuple(uses),
                                 theorem, label, dict(style) if style is not None else None, dict(extra))
        return target

    return deco


def unregister(kind: str, name: str) -> None:
    """Remove a component (for tests that register their own)."""
    _SPECS[kind].pop(name, None)


def load_plugins(value: Optional[str] = None) -> None:
    """Import the plug-ins named in ``value`` (default: ``$BLORA_PLUGINS``), each once.

    Raises
    ------
    ValueError
        ``BLORA_PLUGINS: cannot import ...`` naming the entry that failed.
    """
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry in _PLUGINS_LOADED:
            continue
        module, _, func = entry.partition(":")
        try:
            mod = importlib.import_module(module)
            hook = getattr(mod, func) if func else None
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{PLUGINS_ENV}: cannot import {entry!r}: {exc}") from None
        _PLUGINS_LOADED.append(entry)
        if hook is not None:
            hook()


def _load(kind: str) -> None:
    if kind not in _LOADED:
        for module in PROVIDERS[kind]:
            importlib.import_module(module)
        _LOADED.add(kind)
        load_plugins()


def specs(kind: str) -> dict:
    """{name: Spec} of every registered component of ``kind`` (built-ins first)."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    _load(kind)
    return dict(_SPECS[kind])


def spec(kind: str, name: Any) -> Spec:
    """The component ``name`` of ``kind``; ``ValueError('<kind>: unknown name ...')`` if none."""
    options = specs(kind)
    if name not in options:
        raise ValueError(f"{kind}: unknown name {name!r}; choose one of {sorted(options)}")
    return options[name]


def find(kind: str, name: Any) -> Optional[Spec]:
    """The component ``name`` of ``kind``, or None."""
    return specs(kind).get(name) if isinstance(name, str) else None


def missing(needs, provides) -> list:
    """The needs (:data:`NEEDS`) a problem's ``provides`` does not cover, in order."""
    return [n for n in NEEDS if n in set(needs) and n not in set(provides)]
