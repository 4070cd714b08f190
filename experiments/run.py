"""The Hydra app: ``python -m experiments.run [overrides]`` (``-m`` for multirun).

One job = one configuration with all its seeds batched. It writes
``results.parquet`` and ``config.yaml`` into its Hydra output directory, and is
skipped when a complete result with the same config hash already exists under
``results_root`` (so re-running a killed sweep finishes only what is missing).
Sweep directories carry a random suffix, so two sweeps started in the same
second never share a folder.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from experiments.conf.schema import register

log = logging.getLogger("experiments.run")

if not OmegaConf.has_resolver("blora_unique"):
    # cached: the master's value is copied to every job of a sweep (Hydra copies
    # the resolver cache into each sweep config)
    OmegaConf.register_new_resolver("blora_unique", lambda: secrets.token_hex(3), use_cache=True)
if not OmegaConf.has_resolver("ci_or_paper"):
    # experiment presets pick their sizes with ${ci_or_paper:${size},CI_VALUE,PAPER_VALUE}
    OmegaConf.register_new_resolver(
        "ci_or_paper", lambda size, ci, paper: paper if str(size) == "paper" else ci)
register()


def _progress_bar(enabled):
    if not enabled or not sys.stderr.isatty():
        return None
    state = {"last": -1}

    def show(step, steps):
        pct = int(100 * step / max(steps, 1))
        if pct != state["last"]:
            state["last"] = pct
            bar = "#" * (pct // 4)
            print(f"\r[{bar:<25}] {pct:3d}% ({step}/{steps})", end="" if step < steps else "\n", file=sys.stderr)

    return show


def job_config(cfg) -> dict:
    """The plain mapping a job is built from (no Hydra node, no interpolations)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    from experiments.job import run_job

    plain = job_config(cfg)
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        table = run_job(plain, out_dir, results_root=plain.get("results_root"),
                        progress=_progress_bar(plain.get("progress", True)))
    except ValueError as exc:
        # fail with one line and leave nothing behind (Hydra already made the
        # job directory and its log file)
        if not os.path.exists(os.path.join(out_dir, "results.parquet")):
            shutil.rmtree(out_dir, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if table is not None:
        final = table[table["iteration"] == table["iteration"].max()]
        log.info("final median f_gap %.3e, grad_norm_sq %.3e; bound status: %s",
                 final["f_gap"].median(), final["grad_norm_sq"].median(), table["bound_status"].iloc[0])


if __name__ == "__main__":
    main()
