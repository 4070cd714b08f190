"""Draw every figure the results allow.

    python -m figures.make DIR [--out FIGDIR] [--jobs N]

DIR is a results parquet file or a directory (complete jobs found recursively,
else DIR/collected.parquet); a file that cannot be read is skipped with one
warning line on stderr naming it. FIGDIR defaults to DIR/figures (beside the file
for a parquet). One set of figures per problem; a figure whose columns or
variation are absent is skipped with one printed line. Exit status 2, with one
line on stderr, when no results are found.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import re
import sys
import warnings
from pathlib import Path

import pandas as pd

from figures import plots, rates, style
from figures.data import InconsistentHash, NotEnoughData, has_values
from figures.files import UnreadableResults, load


def _minibatch_estimators() -> set:
    """Estimators that sample minibatches (a ``batch`` key): their cost is drawn in epochs."""
    from solvers import registry

    return {name for name, spec in registry.specs("estimator").items() if "batch" in spec.keys()}


def _slug(s) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)).strip("-") or "x"


def figure_specs(df: pd.DataFrame, tag: str):
    """(name, function, kwargs) for the figures of one problem's table."""
    specs = [(f"convergence_{tag}_grad_norm_sq_iteration", plots.convergence,
              dict(metric="grad_norm_sq", x="iteration"))]
    drawn = {("grad_norm_sq", "iteration")}
    if has_values(df, "f_gap"):
        specs.append((f"convergence_{tag}_f_gap_iteration", plots.convergence, dict(metric="f_gap", x="iteration")))
        drawn.add(("f_gap", "iteration"))
    if "bound_metric" in df.columns and "bound" in df.columns:
        finite = df[df["bound"].notna()]
        for m in sorted(finite["bound_metric"].astype(str).unique()):
            if m in df.columns and (m, "iteration") not in drawn:
                specs.append((f"convergence_{tag}_{_slug(m)}_iteration", plots.convergence,
                              dict(metric=m, x="iteration")))
                drawn.add((m, "iteration"))
    if "estimator" in df.columns and df["estimator"].isin(_minibatch_estimators()).any():
        specs.append((f"convergence_{tag}_grad_norm_sq_epochs", plots.convergence,
                      dict(metric="grad_norm_sq", x="epochs")))
    if has_values(df, "bits"):
        specs.append((f"convergence_{tag}_grad_norm_sq_bits", plots.convergence,
                      dict(metric="grad_norm_sq", x="bits")))
    specs += [
        (f"rate_vs_p_{tag}", rates.rate_vs_p, {}),
        (f"rate_vs_rank_{tag}", rates.rate_vs_rank, {}),
        (f"rate_vs_lambda_{tag}", rates.rate_vs_lambda, {}),
        (f"tightness_{tag}", plots.tightness, {}),
    ]
    return specs


def _tasks(df: pd.DataFrame):
    """(table, problem, name, function, kwargs) of every figure ``df`` may allow."""
    problems = sorted(df["problem"].astype(str).unique()) if "problem" in df.columns else [None]
    for prob in problems:
        sub = df if prob is None else df[df["problem"].astype(str) == prob]
        tag = _slug(prob) if prob is not None else "all"
        for name, fn, kw in figure_specs(sub, tag):
            yield sub, prob, name, fn, kw


def _draw(task, out_dir) -> tuple[list[Path], str | None]:
    """One figure: (paths written, None) or ([], the skip line)."""
    sub, prob, name, fn, kw = task
    try:
        return fn(sub, Path(out_dir) / name, title=None if prob is None else f"problem: {prob}", **kw), None
    except NotEnoughData as why:
        return [], f"skip {name}: {why}"


def _heaviest_first(tasks) -> list[int]:
    """The tasks' indices, those of the problems with the most configurations
    first (a figure's time grows with its curves and panels), else in order: the
    workers then end on short figures instead of one waiting for the other."""
    sizes: dict = {}

    def size(table):
        if id(table) not in sizes:
            sizes[id(table)] = table["config_hash"].nunique() if "config_hash" in table.columns else len(table)
        return sizes[id(table)]

    return sorted(range(len(tasks)), key=lambda i: -size(tasks[i][0]))


_PENDING: list = []  # (task, out_dir) for the forked workers of make_all (inherited, not pickled)


def _draw_pending(i: int):
    return _draw(*_PENDING[i])


def make_all(df: pd.DataFrame, out_dir, *, log=print, jobs: int = 1) -> tuple[list[Path], list[str]]:
    """Draw every figure ``df`` allows into ``out_dir``. Returns (paths, skipped lines).

    ``jobs`` > 1 draws the figures in that many forked processes (where the platform
    can fork), each figure whole in the process that draws it: the same files, and the
    lines logged in the same order as with one process."""
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs: must be an integer >= 1, got {jobs!r}")
    tasks = list(_tasks(df))
    if jobs > 1 and len(tasks) > 1 and "fork" in multiprocessing.get_all_start_methods():
        order = _heaviest_first(tasks)
        _PENDING[:] = [(tasks[i], out_dir) for i in order]
        try:
            with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks))) as pool:
                drawn = pool.map(_draw_pending, range(len(tasks)), chunksize=1)
        finally:
            _PENDING.clear()
        results = [None] * len(tasks)
        for i, result in zip(order, drawn):
            results[i] = result
    else:
        results = [_draw(t, out_dir) for t in tasks]
    written, skipped = [], []
    for paths, line in results:
        if line is not None:
            skipped.append(line)
            log(line)
        written += paths
        for p in paths:
            log(str(p))
    return written, skipped


@contextlib.contextmanager
def _said_once():
    """The suite's own warnings (a skipped file, an inconsistent hash) as one line
    each on stderr, each said once; other warnings as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        if issubclass(w.category, (UnreadableResults, InconsistentHash)):
            if str(w.message) not in seen:
                seen.add(str(w.message))
                print(f"figures.make: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def main(argv: list[str] | None = None) -> int:
    style.use_file_backend()
    ap = argparse.ArgumentParser(prog="python -m figures.make", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="results parquet, or a directory of job results")
    ap.add_argument("--out", default=None, help="figure directory (default DIR/figures)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="figures drawn in this many processes at once (default 1)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        print(f"figures.make: error: --jobs: must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    src = Path(args.dir)
    with _said_once():
        df = load(src)
    if df.empty:
        print(f"figures.make: no results found in {src}", file=sys.stderr)
        return 2
    if "iteration" not in df.columns:
        print(f"figures.make: {src} holds no trajectory table (no 'iteration' column)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (src.parent if src.is_file() else src) / "figures"
    style.apply_style()
    with _said_once():
        written, _ = make_all(df, out, jobs=args.jobs)
    if not written:
        print(f"figures.make: no figure could be drawn from {src}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
