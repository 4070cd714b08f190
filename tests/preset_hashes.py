"""Every job of every Hydra experiment preset, composed as ``python -m experiments.run
-m experiment=NAME size=SIZE`` would compose it: its config hash and results columns.

    python -m tests.preset_hashes [--write FILE]   # JSON {preset/size: [[hash, [[column, value], ...]], ...]}

Used by tests/test_config_hashes.py to pin that a refactoring of the schema or of
the components changes no config hash and no results column of any preset.
"""
from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _jobs(preset: str, size: str):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import experiments.run  # noqa: F401  (registers the schema and the resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_module("experiments.conf", version_base="1.3"):
        base = [f"experiment={preset}", f"size={size}"]
        hc = compose("config", overrides=base, return_hydra_config=True)
        params = OmegaConf.select(hc, "hydra.sweeper.params") or {}
        axes = [[f"{k}={v}" for v in str(params[k]).split(",")] for k in params]
        for combo in itertools.product(*axes):
            cfg = compose("config", overrides=base + list(combo))
            yield OmegaConf.to_container(cfg, resolve=True)


def _plain(v):
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def preset_table() -> dict:
    from experiments.conf.check import config_columns
    from experiments.results import config_hash

    out = {}
    for preset in PRESETS:
        for size in ("ci", "paper"):
            out[f"{preset}/{size}"] = [[config_hash(c), [[k, _plain(v)] for k, v in config_columns(c).items()]]
                                       for c in _jobs(preset, size)]
    return out


if __name__ == "__main__":
    table = preset_table()
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    if "--write" in sys.argv:
        Path(sys.argv[sys.argv.index("--write") + 1]).write_text(text + "\n")
    print(sum(len(v) for v in table.values()), "jobs in", len(table), "preset/size pairs")
