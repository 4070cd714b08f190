"""Progress of one job, on a terminal and in logs, and its one-line summary."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("experiments.run")

#: Without a terminal, a progress line at least every this many percent ...
LOG_EVERY_PCT = 10
#: ... or after this many seconds since the last line, whichever comes first.
LOG_EVERY_S = 5.0


def make_progress(enabled: bool, *, label: str, stream=None, clock=time.monotonic):
    """A ``progress(step, steps)`` callable for :func:`solvers.engine.run`, or None.

    On a terminal (``stream`` defaults to stderr) it redraws one bar; otherwise
    it logs ``<label>: step t/T (p%)`` whenever the job has advanced
    :data:`LOG_EVERY_PCT` percent or :data:`LOG_EVERY_S` seconds have passed
    since the previous line, and at the last step.
    """
    if not enabled:
        return None
    stream = sys.stderr if stream is None else stream
    state = {"pct": -1, "logged_pct": 0, "logged_step": 0, "logged_at": clock()}

    if stream.isatty():
        def bar(step, steps):
            pct = int(100 * step / max(steps, 1))
            if pct != state["pct"]:
                state["pct"] = pct
                print(f"\r{label} [{'#' * (pct // 4):<25}] {pct:3d}% ({step}/{steps})",
                      end="" if step < steps else "\n", file=stream, flush=True)
        return bar

    def lines(step, steps):
        pct = int(100 * step / max(steps, 1))
        now = clock()
        if step != state["logged_step"] and (step >= steps or pct - state["logged_pct"] >= LOG_EVERY_PCT
                                             or now - state["logged_at"] >= LOG_EVERY_S):
            state["logged_pct"], state["logged_step"], state["logged_at"] = pct, step, now
            log.info("%s: step %d/%d (%d%%)", label, step, steps, pct)
    return lines


def _num(x) -> str:
    try:
        return f"{float(x):g}"
    except (TypeError, ValueError):
        return str(x)


def job_label(cfg, config_hash: str) -> str:
    """``<hash:12> <method>/<estimator> p=.. rank=..`` for log lines."""
    mc, ec = cfg["method"], cfg["estimator"]
    parts = [config_hash[:12], f"{mc['name']}/{ec['name']}"]
    if "p" in mc:
        parts.append(f"p={_num(mc['p'])}")
    if "rank" in mc:
        parts.append(f"rank={mc['rank']}")
    return " ".join(parts)


def job_summary(table, cfg, config_hash: str, seconds: float) -> str:
    """One line: which job, seeds x steps, time, final median f_gap, bound status
    and the verdict(s) of :func:`theory.verify.verify` on this job's runs."""
    from theory.verify import verify

    final = table[table["iteration"] == table["iteration"].max()]
    seeds = table["seed"].nunique()
    try:
        verdicts = verify(table)["verdict"]
        verdict = ", ".join(f"{v} ({n})" if len(verdicts) > 1 else str(v)
                            for v, n in verdicts.value_counts().items())
    except Exception as err:  # informational line only: the results are already written
        verdict = f"not computed ({type(err).__name__}: {err}); run python -m experiments.verify"
    return (f"job {job_label(cfg, config_hash)}: {seeds} seeds x {cfg['steps']} steps in {seconds:.2f}s; "
            f"final median f_gap {final['f_gap'].median():.3e}, grad_norm_sq {final['grad_norm_sq'].median():.3e}; "
            f"bound: {table['bound_status'].iloc[0]}; verdict: {verdict}")
