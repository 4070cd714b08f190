"""Several Hydra multiruns of the app (:mod:`experiments.run`) in ONE process.

    python -m experiments.multirun QUEUE --timing FILE --logs DIR [--since SECONDS]
                                   [--runner hydra|sweep] -- COMMON...

``QUEUE`` holds one multirun per line: its overrides, separated by tabs (what
``scripts/reproduce.sh`` would pass to ``python -m experiments.run -m``); ``COMMON`` is
appended to every line (``size=...`` ``device=...`` ``results_root=...``
``hydra.sweep.dir=...``). Line ``k`` (from 1) writes its output to ``DIR/kk.log`` and
two lines (start; end with its seconds and the load average) to ``FILE`` and stdout, in the format of
``scripts/reproduce.sh`` (seconds since its start: ``--since`` is the time it had
already spent).

Why: each ``python -m experiments.run`` process pays the import of torch, pandas and
Hydra (seconds on a small CPU) before its few-second jobs; here it is paid once. The
jobs, their configurations, config hashes, folders and numbers are those of the separate
processes (the app's ``main`` is called as the command line would, one multirun after
the other). A failing multirun (exit status != 0) prints its log and stops the queue with
exit status 1, as the script does.

``--runner sweep`` runs each line's jobs through :mod:`experiments.sweep` instead (the
same jobs, configurations, config hashes and numbers: :mod:`experiments.presets` expands
the overrides as Hydra does, and a batched run's numbers are its own alone, bitwise), into
``results_root`` (``hydra.*`` overrides do not apply): the jobs that differ only in p,
stepsize and seed become one engine call, and no job pays Hydra's composition of its
configuration (on a small CPU most of a small job's time).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path


def _load() -> str:
    """The 1-minute load average (as ``uptime`` shows it), or '?'."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def read_queue(path) -> list[list[str]]:
    """The multiruns of ``path``: one per non-empty line, overrides separated by tabs."""
    lines = Path(path).read_text().splitlines()
    return [[a for a in line.split("\t") if a] for line in lines if line.strip()]


def _reset_logging():
    """Hydra configures the root logger for each job; drop its handlers between multiruns
    (they write to the previous multirun's log)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        with contextlib.suppress(Exception):
            h.close()


def run_one(overrides: list[str], log_path: Path) -> int:
    """One multirun ``python -m experiments.run -m OVERRIDES`` in this process, its
    stdout and stderr into ``log_path``; returns its exit status."""
    from hydra.core.global_hydra import GlobalHydra

    from experiments import run as app

    argv = sys.argv
    status = 0
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        sys.argv = ["experiments.run", "-m", *overrides]
        try:
            app.main()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            raise
        except Exception:  # pragma: no cover - Hydra reports job errors as SystemExit
            import traceback

            traceback.print_exc()
            status = 1
        finally:
            sys.argv = argv
            log.flush()
            _reset_logging()
            GlobalHydra.instance().clear()
    return status


def run_one_sweep(overrides: list[str], log_path: Path) -> int:
    """The jobs of one line through :func:`experiments.sweep.main` (``--out`` the line's
    ``results_root``), its output into ``log_path``; returns its exit status."""
    from experiments import sweep

    roots = [o.split("=", 1)[1] for o in overrides if o.startswith("results_root=")]
    if not roots:
        raise ValueError("--runner sweep: give results_root=DIR among the overrides")
    items = [o for o in overrides if not o.startswith(("hydra.", "results_root="))]
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return sweep.main([*items, "--out", roots[-1]])


RUNNERS = {"hydra": run_one, "sweep": run_one_sweep}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.multirun", description=__doc__.split("\n\n")[0])
    ap.add_argument("queue")
    ap.add_argument("--timing", required=True, help="file the stamp lines are appended to")
    ap.add_argument("--logs", required=True, help="folder of the per-multirun logs NN.log")
    ap.add_argument("--since", type=float, default=0.0, help="seconds already spent by the caller")
    ap.add_argument("--runner", choices=sorted(RUNNERS), default="hydra",
                    help="each line as a Hydra multirun (default) or through experiments.sweep")
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []  # appended to every multirun
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    queue = read_queue(args.queue)
    t0 = time.monotonic() - args.since
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)

    def stamp(text):
        line = f"[{int(time.monotonic() - t0):4d} s] {text}"
        print(line, flush=True)
        with open(args.timing, "a") as fh:
            fh.write(line + "\n")

    for k, overrides in enumerate(queue, start=1):
        log = logs / f"{k:02d}.log"
        stamp(f"experiment {k}: {' '.join(overrides)} ...")
        t = time.monotonic()
        status = RUNNERS[args.runner]([*overrides, *common], log)
        if status != 0:
            print(log.read_text(), end="", file=sys.stderr)
            stamp(f"experiment {k} failed (log: {log})")
            return 1
        stamp(f"experiment {k} done in {int(time.monotonic() - t)} s (log: {log}; load {_load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
