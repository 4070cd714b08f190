"""A plain job configuration against its schema: validation and results columns.

:func:`check_config` refuses, with one line naming the field, anything the
schema (:mod:`experiments.conf.schema`) does not declare: an unknown key in any
group or at the top level, a value of the wrong type or outside its declared
range, a group set for a method or estimator that does not use it, seeds outside
the random streams' 32-bit key space. It needs no problem data, so it runs
before any work (the Hydra app and :mod:`experiments.sweep` both call it through
:func:`experiments.build.build_job`; the sweep calls it on every job first).

:func:`config_columns` turns the same configuration into the configuration
columns of the results table (naming convention in the schema's docstring).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Mapping

from experiments.conf.schema import DEFAULTS, FIXED_GROUPS, GROUPS, SEED_MAX, RunConf, group_config, used_by

NAN = float("nan")

#: config keys that a core column of the results table holds under a short name,
#: with that column's value for an option that has no such key
SHORT_COLUMNS = {("method", "p"): ("p", NAN), ("method", "rank"): ("rank", 0)}
#: top-level keys that are not columns: the runs' seeds are the rows' ``seed`` column
_NOT_COLUMNS = frozenset({"seed", "seeds"})

_KIND = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


@functools.lru_cache(maxsize=None)
def _fields(cls) -> dict:
    """{name: (type, optional, metadata)} of a schema dataclass."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        if typing.get_origin(tp) is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp, optional = args[0], len(args) < len(typing.get_args(tp))
        out[f.name] = (tp, optional, dict(f.metadata))
    return out


def _describe(tp, meta) -> str:
    if "choices" in meta:
        return f"one of {list(meta['choices'])}"
    kind = _KIND.get(tp, str(tp))
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    low = f"[{ge}" if ge is not None else (f"({gt}" if gt is not None else None)
    if low is not None and le is not None:
        return f"{kind} in {low}, {le}]"
    if low is not None:
        return f"{kind} {'>=' if ge is not None else '>'} {low[1:]}"
    return f"{kind} <= {le}" if le is not None else kind


def _type_ok(value, tp) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    return True  # Any: a group, checked on its own


def check_value(where: str, value, tp, optional: bool, meta: Mapping) -> None:
    """Raise ``ValueError('<where>: must be ..., got ...')`` unless ``value`` has
    type ``tp`` (None only if ``optional``) and satisfies the rules in ``meta``."""
    if value is None and optional:
        return
    ok = value is not None and _type_ok(value, tp)
    if ok and "choices" in meta:
        ok = value in meta["choices"]
    if ok and "ge" in meta:
        ok = value >= meta["ge"]
    if ok and "gt" in meta:
        ok = value > meta["gt"]
    if ok and "le" in meta:
        ok = value <= meta["le"]
    if not ok:
        raise ValueError(f"{where}: must be {_describe(tp, meta)}{' or null' if optional else ''}, got {value!r}")


def group_class(group: str, node):
    """The schema dataclass of a group's mapping (by its ``name``)."""
    if group in FIXED_GROUPS:
        return FIXED_GROUPS[group]
    name = node.get("name") if isinstance(node, Mapping) else None
    if name not in GROUPS[group]:
        raise ValueError(f"{group}: unknown name {name!r}; choose one of {sorted(GROUPS[group])}")
    return GROUPS[group][name]


def _check_group(group: str, node) -> None:
    if not isinstance(node, Mapping):
        raise ValueError(f"{group}: expected a mapping of its keys, got {node!r}")
    cls = group_class(group, node)
    fields = _fields(cls)
    for key in node:
        if key not in fields:
            owner = f"{node['name']}" if "name" in node else group
            raise ValueError(f"{group}.{key}: unknown key: {owner} takes {sorted(fields)}")
    for key, (tp, optional, meta) in fields.items():
        check_value(f"{group}.{key}", node.get(key), tp, optional, meta)


def check_config(cfg) -> None:
    """Validate a plain job configuration; raise ``ValueError`` with one line
    naming the first offending field (``method.alpha: unknown key: ...``)."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"config: expected a mapping, got {type(cfg).__name__}")
    top = _fields(RunConf)
    for key in cfg:
        if key not in top:
            raise ValueError(f"{key}: unknown key: the configuration takes {sorted(top)}")
    for key, (tp, optional, meta) in top.items():
        if key not in cfg:
            raise ValueError(f"{key}: missing (a job configuration has every key of {sorted(top)})")
        if key in GROUPS or key in FIXED_GROUPS:
            _check_group(key, cfg[key])
        else:
            check_value(key, cfg[key], tp, optional, meta)
    last = cfg["seed"] + cfg["seeds"] - 1
    if last > SEED_MAX:
        raise ValueError(f"seed: the runs' seeds {cfg['seed']}..{last} must be <= {SEED_MAX} "
                         f"(the random streams are keyed by 32-bit seeds)")
    for group, (user, options) in used_by().items():
        uname = cfg[user]["name"]
        default = group_config(group, DEFAULTS[group])
        given = {k: v for k, v in cfg[group].items() if v is not None}
        if uname not in options and given != {k: v for k, v in default.items() if v is not None}:
            raise ValueError(f"{group}: {cfg[group]['name']} is used only by {user} {', '.join(options)}; "
                             f"{user} {uname} would ignore it (leave {group} at {DEFAULTS[group]})")


def _column_value(value, tp):
    if value is None:
        return NAN if tp in (int, float) else None
    return float(value) if tp is float else value


def column_name(group: str, key: str) -> str:
    """The results column of config key ``group.key`` (``problem.L`` -> ``problem_L``)."""
    if key == "name":
        return group
    short = SHORT_COLUMNS.get((group, key))
    return short[0] if short else f"{group}_{key}"


def config_columns(cfg) -> dict:
    """{column: value} for every key of a (checked) job configuration: each key
    of each group (``problem_L``; every key the option declares, NaN / None where
    unset), the core ``p`` / ``rank`` (NaN / 0 when the method has none), and the
    top-level keys that change the numbers except the seeds (``steps``, ...).
    Ints stay ints, floats are floats (``stepsize.factor=1`` gives 1.0)."""
    from experiments.results import NON_RESULT_KEYS

    cols = {}
    for group in (*GROUPS, *FIXED_GROUPS):
        node = cfg[group]
        for key, (tp, _, _) in _fields(group_class(group, node)).items():
            cols[column_name(group, key)] = _column_value(node.get(key), tp)
    for (group, key), (name, missing) in SHORT_COLUMNS.items():
        cols.setdefault(name, missing)
    for key, (tp, _, _) in _fields(RunConf).items():
        if key not in GROUPS and key not in FIXED_GROUPS and key not in NON_RESULT_KEYS | _NOT_COLUMNS:
            cols[key] = _column_value(cfg[key], tp)
    return cols


def is_config_column(name: str) -> bool:
    """Whether a results column holds a configuration key (by the naming convention)."""
    groups = (*GROUPS, *FIXED_GROUPS)
    if name in groups or any(name == short for short, _ in SHORT_COLUMNS.values()):
        return True
    if any(name.startswith(f"{g}_") for g in groups):
        return True
    from experiments.results import NON_RESULT_KEYS

    return name in _fields(RunConf) and name not in NON_RESULT_KEYS | _NOT_COLUMNS
