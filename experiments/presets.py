"""The jobs of a Hydra multirun command line, without Hydra (for machines that lack it).

``expand(["experiment=linreg_gd", "size=paper"])`` returns the job configurations
that ``python -m experiments.run -m experiment=linreg_gd size=paper`` runs, in
Hydra's order, each with the override list Hydra gives that job
(``hydra.overrides.task``), so the batched runner (:mod:`experiments.sweep`) and
the Hydra app compute the same config hashes from the one definition of an
experiment, its preset in ``experiments/conf/experiment/``.

What is reproduced, and nothing more (anything else is refused with one line
naming it, never guessed):

* overrides ``key=value`` and ``key=a,b,c`` (a sweep), values as Hydra's grammar
  reads them (``null``, ``true``, ints, floats such as ``1e-3``, quoted or plain
  strings); ``group=option`` chooses a config group option; ``hydra.*`` and
  ``hydra/...`` overrides change no job and are dropped, as Hydra drops them from
  a job's task overrides;
* ``+experiment/SUB=OPTION``: a preset part appended after the preset (Hydra appends
  it to the defaults list), e.g. ``experiment=exact_pairs`` sweeps two such groups;
* presets (``@package _global_``) whose defaults list holds ``override /GROUP: OPTION``,
  another preset's name and ``_self_``, whose body sets configuration keys, and
  whose ``hydra.sweeper.params`` lists the swept values;
* interpolations that are one whole value: ``${key}`` and the resolvers of
  :data:`RESOLVERS` (``${ci_or_paper:${size},CI,PAPER}``).

The expansion follows Hydra's basic sweeper: the sweeper params are resolved on
the configuration composed without the command line's sweeps, then params and
command-line overrides (a command-line key replaces the param of the same key,
keeping its place) are combined as a cartesian product, and every job is
composed from scratch with its own override list. ``tests/test_presets.py``
checks all of this against Hydra itself on every preset.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"
PRESET_GROUP = "experiment"


def ci_or_paper(size, ci, paper):
    """``paper`` at ``size == 'paper'``, else ``ci``: presets pick their sizes with
    ``${ci_or_paper:${size},CI_VALUE,PAPER_VALUE}`` (registered in Hydra by
    :mod:`experiments.run`)."""
    return paper if str(size) == "paper" else ci


#: the resolvers a preset may call (the Hydra app registers the same functions)
RESOLVERS = {"ci_or_paper": ci_or_paper}

# --------------------------------------------------------------------------- values

_INT = re.compile(r"[+-]?(0|[1-9](_?[0-9])*)")
_DIGITS = r"[0-9](_?[0-9])*"
_POINT = rf"(({_DIGITS})?\.{_DIGITS}|{_DIGITS}\.)"
_FLOAT = re.compile(rf"[+-]?({_POINT}|({_DIGITS}|{_POINT})[eE][+-]?{_DIGITS}|inf|nan)", re.IGNORECASE)
_PLAIN = re.compile(r"[A-Za-z0-9_.:/\-+*@%&?!^~<>|#$]+( +[A-Za-z0-9_.:/\-+*@%&?!^~<>|#$]+)*")


class Quoted(str):
    """A quoted string of an override (Hydra keeps its quotes when it lists the job)."""

    quote = "'"


def parse_value(text: str, where: str):
    """One value element of an override, as Hydra's override grammar reads it."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        q = Quoted(t[1:-1])
        q.quote = t[0]
        return q
    low = t.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    if _INT.fullmatch(t):
        return int(t.replace("_", ""))
    if _FLOAT.fullmatch(t):
        return float(t.replace("_", ""))
    if t == "" or (_PLAIN.fullmatch(t) and "${" not in t):
        return t
    raise ValueError(f"{where}: {text!r} is not a value this expander reads (a plain or quoted string, "
                     f"number, true/false or null); run it through Hydra: python -m experiments.run -m ...")


def value_text(value) -> str:
    """A parsed value written back as Hydra writes it in a job's override list."""
    if isinstance(value, Quoted):
        return f"{value.quote}{value}{value.quote}"
    if value is None:
        return "null"
    if isinstance(value, str):
        return re.sub(r"([\\()\[\]{}:=, ])", r"\\\1", value) if value.strip() == value else value
    return str(value)


def _split_commas(text: str, where: str, *, refuse: str = "") -> list[str]:
    """``text`` split at the commas outside quotes and ``{...}``; a character of
    ``refuse`` outside quotes, or an unbalanced quote, is refused with one line."""
    parts, cur, depth, quote = [], "", 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in refuse:
            raise ValueError(f"{where}: {text!r}: lists, dicts, range()/choice()/glob() and escapes are not "
                             f"read here; run it through Hydra: python -m experiments.run -m ...")
        elif ch in "{}":
            depth += 1 if ch == "{" else -1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if quote:
        raise ValueError(f"{where}: {text!r}: unbalanced quote")
    return parts + [cur]


def _split_top(text: str, where: str) -> list[str]:
    """An override's value split at the commas outside quotes (a sweep's elements)."""
    return _split_commas(text, where, refuse="[]{}()\\")


def appended_group(key: str):
    """``'+experiment/SUB'`` -> ``'SUB'`` when ``experiment/SUB/`` is a folder of preset
    parts (``+experiment/SUB=OPTION`` appends ``experiment/SUB/OPTION.yaml``, a
    ``@package _global_`` part, after the preset), else None."""
    head = f"+{PRESET_GROUP}/"
    if key.startswith(head) and (CONF_DIR / PRESET_GROUP / key[len(head):]).is_dir():
        return key[len(head):]
    return None


def parse_override(text: str) -> tuple[str, list]:
    """``'key=a,b'`` -> ``('key', [a, b])``; one element means no sweep. Refuses
    ``+key`` (except ``+experiment/SUB``: :func:`appended_group`), ``++key``, ``~key``
    and ``key@package`` with one line."""
    key, eq, value = str(text).partition("=")
    key = key.strip()
    if appended_group(key) is not None:
        if not eq:
            raise ValueError(f"{text}: expected {key}=OPTION")
        return key, [parse_value(v, key) for v in _split_top(value, key)]
    if key[:1] in ("+", "~") or "@" in key:
        raise ValueError(f"{key}: only KEY=VALUE overrides are read here (no +, ++, ~ or @package); "
                         f"run it through Hydra: python -m experiments.run -m ...")
    if not eq or not re.fullmatch(r"[A-Za-z_][\w./-]*", key):
        raise ValueError(f"{text}: expected KEY=VALUE")
    return key, [parse_value(v, key) for v in _split_top(value, key)]


def _is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


# --------------------------------------------------------------------------- presets

def preset_names() -> list[str]:
    """Every preset of ``experiments/conf/experiment``, sorted."""
    return sorted(p.stem for p in (CONF_DIR / PRESET_GROUP).glob("*.yaml"))


def _yaml_loader():
    """PyYAML's safe loader reading floats as OmegaConf (hence Hydra) does (``1e-3``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
    return Loader


def load_preset(name: str) -> tuple[list, dict]:
    """(defaults list, body) of preset ``name``; one line when there is none."""
    import yaml

    path = CONF_DIR / PRESET_GROUP / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        raise ValueError(f"{PRESET_GROUP}: unknown preset {name!r}; choose one of {preset_names()}")
    text = path.read_text(encoding="utf-8")
    if "# @package _global_" not in text.splitlines()[:3]:
        raise ValueError(f"{PRESET_GROUP}={name}: a preset starts with '# @package _global_'")
    body = yaml.load(text, Loader=_yaml_loader()) or {}
    defaults = body.pop("defaults", [])
    return defaults, body


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _preset_chain(name: str, groups: dict, seen=()) -> list[dict]:
    """The bodies of preset ``name`` and the presets it includes, in merge order;
    its ``override /GROUP: OPTION`` entries are written into ``groups``."""
    from experiments.conf.schema import GROUPS

    if name in seen:
        raise ValueError(f"{PRESET_GROUP}={name}: includes itself")
    defaults, body = load_preset(name)
    chain, self_done = [], False
    for entry in defaults:
        if entry == "_self_":
            chain.append(body)
            self_done = True
        elif isinstance(entry, str):
            chain.extend(_preset_chain(entry, groups, seen + (name,)))
        elif isinstance(entry, dict) and len(entry) == 1:
            (key, option), = entry.items()
            group = key[len("override /"):] if key.startswith("override /") else None
            if group is not None and _is_hydra(group):
                continue  # a launcher or sweeper choice changes no job
            if group not in GROUPS:
                raise ValueError(f"{PRESET_GROUP}={name}: defaults entry {entry} is not read here "
                                 f"(only 'override /GROUP: OPTION' for GROUP in {sorted(GROUPS)}, preset names "
                                 f"and _self_)")
            groups[group] = option
        else:
            raise ValueError(f"{PRESET_GROUP}={name}: defaults entry {entry!r} is not read here")
    if not self_done:
        chain.append(body)
    return chain


# --------------------------------------------------------------------------- interpolations

def _whole(text: str):
    """The inside of ``${...}`` when ``text`` is exactly one interpolation, else None."""
    t = text.strip()
    if not t.startswith("${"):
        return None
    depth = 0
    for i, ch in enumerate(t):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0 and ch == "}":
            return t[2:i] if i == len(t) - 1 else None
    return None


def _resolve(value, cfg: dict, where: str):
    if not (isinstance(value, str) and "${" in value):
        return value
    inner = _whole(value)
    if inner is None:
        raise ValueError(f"{where}: {value!r}: only a whole-value ${{key}} or ${{resolver:...}} is read here")
    return _resolve_call(inner, cfg, where)


def _resolve_call(inner: str, cfg: dict, where: str):
    name, colon, args = inner.partition(":")
    if not colon:
        node = cfg
        for part in name.strip().split("."):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"{where}: ${{{inner}}}: no key {name.strip()!r}")
            node = node[part]
        return _resolve(node, cfg, where)
    if name not in RESOLVERS:
        raise ValueError(f"{where}: ${{{inner}}}: unknown resolver {name!r} (known: {sorted(RESOLVERS)})")
    return RESOLVERS[name](*[_resolve_arg(a, cfg, where) for a in _split_commas(args, where)])


def _resolve_arg(arg: str, cfg: dict, where: str):
    a = arg.strip()
    if a.startswith("${"):
        return _resolve(a, cfg, where)
    if len(a) >= 2 and a[0] == a[-1] and a[0] in "'\"":
        return a[1:-1]
    value = parse_value(a, where)
    return str(value) if isinstance(value, Quoted) else value


def _resolve_all(node, cfg: dict, prefix: str = ""):
    if isinstance(node, dict):
        return {k: _resolve_all(v, cfg, f"{prefix}{k}.") for k, v in node.items()}
    return _resolve(node, cfg, prefix.rstrip("."))


# --------------------------------------------------------------------------- composition

def _typed(cfg: dict) -> dict:
    """Ints where the schema declares a float become floats, as OmegaConf stores them."""
    import dataclasses
    import typing

    from experiments.conf.check import group_class
    from experiments.conf.schema import FIXED_GROUPS, GROUPS, RunConf

    def fix(node, cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if typing.get_origin(tp) is typing.Union:
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            v = node.get(f.name)
            if tp is float and isinstance(v, int) and not isinstance(v, bool):
                node[f.name] = float(v)

    fix(cfg, RunConf)
    for group in (*GROUPS, *FIXED_GROUPS):
        if isinstance(cfg.get(group), dict):
            try:
                fix(cfg[group], group_class(group, cfg[group]))
            except ValueError:
                pass  # an unknown option: refused by the schema check
    return cfg


def _plain(value):
    return str(value) if isinstance(value, Quoted) else value


def compose(overrides: list[str]) -> tuple[dict, dict]:
    """(job configuration, resolved sweeper params) of one job's override list,
    composed as Hydra composes ``config.yaml`` with these overrides (no sweeps)."""
    from experiments.conf.schema import DEFAULTS, GROUPS, job_config

    parsed = [parse_override(o) for o in overrides]
    for key, values in parsed:
        if len(values) != 1:
            raise ValueError(f"{key}: a sweep ({','.join(map(value_text, values))}) where one value is expected")
    groups = dict(DEFAULTS)
    chain = []
    preset = [v[0] for k, v in parsed if k == PRESET_GROUP]
    if preset:
        if preset[-1] is not None:
            chain = _preset_chain(_plain(preset[-1]), groups)
    for key, (value,) in parsed:  # appended preset parts merge after the preset, in order
        sub = appended_group(key)
        if sub is not None:
            chain.extend(_preset_chain(f"{sub}/{_plain(value)}", groups))
    leaves, params = {}, {}
    for body in chain:
        body = dict(body)
        hydra = body.pop("hydra", None) or {}
        params.update(((hydra.get("sweeper") or {}).get("params")) or {})
        leaves.update(_flatten(body))
    for key, (value,) in parsed:
        if _is_hydra(key) or key == PRESET_GROUP or appended_group(key) is not None:
            continue
        if key in GROUPS:
            groups[key] = _plain(value)
        else:
            leaves[key] = _plain(value)
    for key, value in leaves.items():
        if isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: lists are not read here")
    cfg = job_config(**groups, **leaves)
    cfg = _typed(_resolve_all(cfg, cfg))
    params = {k: _resolve(v, cfg, f"hydra.sweeper.params.{k}") for k, v in params.items()}
    return cfg, params


def expand(overrides: list[str]) -> list[tuple[dict, list[str]]]:
    """The jobs of ``python -m experiments.run -m *overrides``: a list of
    (job configuration, the job's override list), in the order Hydra runs them.

    Raises
    ------
    ValueError
        One line naming what cannot be expanded (a sweep over presets, an override
        or preset construct this module does not read) or a bad configuration key.
    """
    parsed = [parse_override(o) for o in overrides]
    for key, values in parsed:
        if key == PRESET_GROUP and len(values) > 1:
            raise ValueError(f"{PRESET_GROUP}: one preset per multirun (Hydra reads the sweep of the first "
                             f"only); run one command per preset")
    plain = [o for o, (_, values) in zip(overrides, parsed) if len(values) == 1]
    _, params = compose(plain)
    lists: dict[str, list[str]] = {}
    for key, value in params.items():
        _, values = parse_override(f"{key}={value}")
        lists[key] = [f"{key}={value_text(v)}" for v in values]
    for key, values in parsed:
        if _is_hydra(key):
            continue
        lists[key] = [f"{key}={value_text(v)}" for v in values]
    jobs = []
    for combo in itertools.product(*lists.values()):
        jobs.append((compose(list(combo))[0], list(combo)))
    return jobs
