"""Figures from results tables (parquet files only; no solver imports).

    python -m figures.make DIR [--out FIGDIR]

One function per figure in :mod:`figures.plots` (``convergence``, ``rate_vs_p``,
``rate_vs_rank``, ``tightness``), each ``fn(df, stem, ...) -> [pdf, png]``;
style and the paper's method names in :mod:`figures.style`; loading and
reductions in :mod:`figures.data`.
"""
from figures.data import NotEnoughData, load
from figures.plots import convergence, rate_vs_p, rate_vs_rank, tightness

__all__ = ["NotEnoughData", "load", "convergence", "rate_vs_p", "rate_vs_rank", "tightness"]
