"""Every job of every Hydra experiment preset, composed as ``python -m experiments.run
-m experiment=NAME size=SIZE`` composes it: its config hash and a digest of its
results columns (names, order and values of :func:`experiments.conf.check.config_columns`).

    python -m tests.preset_hashes [--write FILE]   # JSON {preset/size: [[hash, columns digest], ...]}

tests/data/preset_hashes.json holds the table made before the components described
themselves (issue 12), updated once since, on purpose: the presets became the one source
of jobs (issue 12 item 2), so linreg_gd (and linreg_gd_authors, built on it) at size
paper evaluate every 40 iterations, the jobs of the batched path that made the published
H200 runs (whose stored hashes predate the current schema), at size ci the same hashes in another order, and the
presets exact_pairs, exact_isotropic, linreg_gd_fpft and linreg_finite_sum_page were
added. tests/test_config_hashes.py checks that nothing else moved.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SIZES = ("ci", "paper")


def preset_jobs(preset: str, size: str):
    """The plain configuration of every job of a preset's multirun (its sweeper's
    parameters crossed), in the sweeper's order."""
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
            yield OmegaConf.to_container(compose("config", overrides=base + list(combo)), resolve=True)


def columns_digest(cfg) -> str:
    """16 hex digits of sha256 over the ordered (column, value) pairs of a configuration."""
    from experiments.conf.check import config_columns

    pairs = [[k, "nan" if isinstance(v, float) and math.isnan(v) else v] for k, v in config_columns(cfg).items()]
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()[:16]


def preset_table(presets=PRESETS, sizes=SIZES) -> dict:
    from experiments.results import config_hash

    return {f"{p}/{s}": [[config_hash(c), columns_digest(c)] for c in preset_jobs(p, s)]
            for p in presets for s in sizes}


if __name__ == "__main__":
    table = preset_table()
    if "--write" in sys.argv:
        Path(sys.argv[sys.argv.index("--write") + 1]).write_text(json.dumps(table, sort_keys=True, indent=0) + "\n")
    print(sum(len(v) for v in table.values()), "jobs in", len(table), "preset/size pairs")
