"""The Hydra app: ``python -m experiments.run [overrides]`` (``-m`` for multirun).

One job = one configuration with all its seeds batched. It writes
``results.parquet`` and ``config.yaml`` into its Hydra output directory, and is
skipped when a complete result with the same config hash already exists under
``results_root`` (so re-running a killed sweep finishes only what is missing);
it is claimed before it runs, so two sweeps into one ``results_root`` share the
work instead of doing it twice (:mod:`experiments.claims`). Sweep directories
carry a random suffix, so two sweeps started in the same second never share a
folder.

A refused, skipped or failed job removes only what was made for it (never a
folder or file that existed before it started, :mod:`experiments.outdir`). A
bad value, a full disk or a read-only results folder is reported in one line
(``error: <field>: ...``, exit status 2) and stops a multirun.
"""
from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from experiments.conf.schema import register
from experiments.presets import RESOLVERS

log = logging.getLogger("experiments.run")

if not OmegaConf.has_resolver("blora_unique"):
    # cached: the master's value is copied to every job of a sweep (Hydra copies
    # the resolver cache into each sweep config)
    OmegaConf.register_new_resolver("blora_unique", lambda: secrets.token_hex(3), use_cache=True)
for _name, _fn in RESOLVERS.items():  # e.g. ${ci_or_paper:${size},CI_VALUE,PAPER_VALUE} in the presets
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
register()


def job_config(cfg) -> dict:
    """The plain mapping a job is built from (no Hydra node, no interpolations)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out


def _fail(message: str) -> None:
    """One line on stderr, then stop (a multirun too: every further job would fail alike)."""
    from experiments.outdir import remove_unused_sweep

    print(f"error: {message}", file=sys.stderr)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        remove_unused_sweep()
    sys.exit(2)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    from experiments.job import run_job
    from experiments.outdir import JobFolder
    from experiments.progress import job_label, job_summary, make_progress
    from experiments.results import JOB_FILES, config_hash
    from experiments.storage import is_storage_error

    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    dir_field = "hydra.sweep.dir" if hc.mode == RunMode.MULTIRUN else "hydra.run.dir"
    folder = JobFolder(out_dir)
    folder.add(*JOB_FILES)  # removed again if this job fails (never if they were there before)
    try:
        plain = job_config(cfg)
        label = job_label(plain, config_hash(plain))
        outcome = run_job(plain, out_dir, results_root=plain.get("results_root"), dir_field=dir_field,
                          progress=make_progress(plain.get("progress", True), label=label),
                          overrides=list(hc.overrides.task))
    except ValueError as exc:
        folder.clean()
        _fail(str(exc))
    except OSError as exc:
        if not is_storage_error(exc):
            folder.clean(keep_log=True)
            raise
        folder.clean()
        path = Path(str(exc.filename or out_dir)).resolve()
        root = Path(str(cfg.get("results_root"))).resolve()
        field = "results_root" if root == path or root in path.parents else dir_field
        _fail(f"{field}: cannot write {path}: {exc.strerror}; stopping here "
              "(every further job would fail the same way)")
    except BaseException:
        folder.clean(keep_log=True)  # partial results go; the log of what happened stays
        raise
    h = outcome.config_hash[:12]
    if outcome.status == "skipped":
        log.info("skipped: config %s already complete in %s (to run it again, delete that folder "
                 "or choose another results_root)", h, outcome.where)
        folder.clean()
    elif outcome.status == "claimed":
        who = outcome.holder or {}
        log.info("skipped: config %s is being run by pid %s on %s since %s, into %s", h, who.get("pid", "?"),
                 who.get("host", "?"), who.get("started", "?"), who.get("out_dir", "?"))
        folder.clean()
    else:
        log.info("%s", job_summary(outcome.table, plain, outcome.config_hash, outcome.seconds))


if __name__ == "__main__":
    main()
