"""Figures from results tables (parquet files only; no solver imports).

    python -m figures.make DIR [--out FIGDIR]

One writer per figure, ``fn(df, stem, ...) -> [pdf, png]``, beside a drawing
function ``fn_figure(df, ...) -> Figure``: :mod:`figures.plots` (``convergence``,
``tightness``) and :mod:`figures.rates` (``rate_vs_p``, ``rate_vs_rank``,
``rate_vs_lambda``). How lines look and how large figures get in
:mod:`figures.style`; panels, labels and axis limits in :mod:`figures.layout`;
reading (an unreadable file is skipped with a warning) in :mod:`figures.files`;
configurations and reductions in :mod:`figures.data`.
"""
from figures.data import NotEnoughData
from figures.files import UnreadableResults, load
from figures.plots import convergence, convergence_figure, tightness, tightness_figure
from figures.rates import (rate_vs_lambda, rate_vs_lambda_figure, rate_vs_p, rate_vs_p_figure, rate_vs_rank,
                           rate_vs_rank_figure)

__all__ = ["NotEnoughData", "UnreadableResults", "load", "convergence", "convergence_figure", "tightness",
           "tightness_figure", "rate_vs_p", "rate_vs_p_figure", "rate_vs_rank", "rate_vs_rank_figure",
           "rate_vs_lambda", "rate_vs_lambda_figure"]
