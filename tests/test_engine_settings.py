"""The engine settings ``graph`` (solvers.fused) and ``compile_rng`` (solvers.rng) are
configuration keys that do not change the numbers: out of the config hash (the hashes of
existing configurations are unchanged, pinned below), out of the results columns, checked
like every key, and a job's table is the same under every ``graph`` mode. The solvers have
no import cycle (engine and fused used to import each other)."""
import ast
import pathlib

import numpy as np
import pytest

from experiments.conf.check import check_config, config_columns
from experiments.conf.schema import job_config
from experiments.job import execute
from experiments.results import config_hash
from solvers import rng

# config hashes computed before the keys existed (the default job; a finite-sum PAGE job)
PINNED = {(): "e2060b273c711a28f8bd868a782b1ce17b09504b7b82a64381adbef59f537a2e",
          (("problem", "linreg"), ("estimator", "page"), ("estimator.batch", 10), ("size", "ci")):
              "0c279a0f9c3a34043a057f3f88f8e1aad97a6ef13a25914130f3dc271e22be6f"}


def _cfg(items, **extra):
    kw = dict(items)
    groups = {k: kw.pop(k) for k in ("problem", "estimator") if k in kw}
    return job_config(**groups, **kw, **extra)


@pytest.mark.parametrize("items", list(PINNED))
def test_hash_unchanged_and_independent_of_the_engine_settings(items):
    base = _cfg(items)
    assert base["graph"] == "auto" and base["compile_rng"] is False
    assert config_hash(base) == PINNED[items]
    for extra in (dict(graph="off"), dict(graph="on", compile_rng=True), dict(graph="eager")):
        assert config_hash(_cfg(items, **extra)) == PINNED[items]
    old = {k: v for k, v in base.items() if k not in ("graph", "compile_rng")}  # a config stored before
    assert config_hash(old) == PINNED[items]
    assert not {"graph", "compile_rng"} & set(config_columns(base))


def test_settings_are_checked_with_one_line():
    with pytest.raises(ValueError, match=r"^graph: ") as info:
        check_config(job_config(graph="yes"))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^compile_rng: "):
        check_config(job_config(compile_rng="yes"))


def test_tables_equal_under_every_graph_mode():
    common = dict(problem="linreg", estimator="page", steps=12, seeds=3, eval_every=4, device="cpu",
                  progress=False, **{"estimator.batch": 10, "size": "ci", "method.p": 0.5})
    tables = {g: execute(job_config(graph=g, **common))[0] for g in ("auto", "off", "eager", "on")}
    ref = tables["off"].drop(columns="time_s")
    for g, table in tables.items():
        t = table.drop(columns="time_s")
        assert list(t.columns) == list(ref.columns)
        for col in t.columns:
            np.testing.assert_array_equal(t[col].to_numpy(), ref[col].to_numpy(), err_msg=f"{g} {col}")
    assert rng._COMPILE[0] is False


def _imports(path, package):
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package + "."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == package:
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith(package + "."))
    return out


def _cycle(graph):
    """A cycle of the directed graph {node: successors}, or None."""
    state = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_solvers_have_no_import_cycle():
    root = pathlib.Path(__file__).resolve().parents[1] / "solvers"
    graph = {p.stem: _imports(p, "solvers") - {p.stem} for p in root.glob("*.py")}
    assert _cycle(graph) is None, _cycle(graph)
    # the check catches a cycle: engine -> fused -> engine, as it was
    assert _cycle({**graph, "fused": graph["fused"] | {"engine"}}) is not None
