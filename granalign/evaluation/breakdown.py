"""A paired comparison broken down by the length of each query's ground-truth moment.

Why: a mean over queries hides a length bias.  On QVHighlights' report half VTG-GPT's rule is
ahead of ours on 10–20-s moments (by 8 to 10 points on 60-s crops) and ours is ahead by 14 to
38 points on moments of 40 s and more (README "Quality that generalises"): a change that trades
short moments for long ones leaves the mean flat and shows only here.  ``bench --versus`` and
``eval --baseline`` print this table; ``bench --versus`` also writes it into its ``.delta.json``.
A bin of a few queries (under :data:`FEW_QUERIES`) gets a rough interval, and the table says so.

The bins double in length (10, 20, 40, 80 s), so each holds moments of a similar relative
precision need; a query goes by its *longest* window because R1 needs one window hit, and
the longest one is the easiest to hit.  Upper edges are inclusive like the official
evaluator's ranges (``short`` is (0, 10]); a zero-length window, which the evaluator accepts,
falls in the first bin.  QVHighlights val has no query whose only window is
10 s or shorter: the first bin holds fragmented moments (2 to 25 short windows).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from granalign.core.similarity import as_finite_array
from granalign.errors import InputError
from granalign.evaluation.bootstrap import PairedInterval, paired_bootstrap

#: Upper edges (inclusive) of the length bins, in seconds; the last bin is open.
LENGTH_EDGES_S = (10.0, 20.0, 40.0, 80.0)
#: A percentile bootstrap over fewer queries than this says little (1 query: a ±0 interval).
FEW_QUERIES = 20


@dataclass(frozen=True)
class LengthBin:
    """One bin ``(low, high]`` seconds of the longest ground-truth window and the paired Δ there."""

    low: float
    high: float
    ours: float
    baseline: float
    interval: PairedInterval

    @property
    def label(self) -> str:
        """``≤10 s``, ``10–20 s``, … ``>80 s``: how a table row names the bin."""
        if self.low == 0.0:
            return f"≤{self.high:g} s"
        if math.isinf(self.high):
            return f">{self.low:g} s"
        return f"{self.low:g}–{self.high:g} s"

    @property
    def few(self) -> bool:
        """Too few queries for the interval to mean much (:data:`FEW_QUERIES`)."""
        return self.interval.n < FEW_QUERIES

    def record(self) -> dict[str, object]:
        """The bin as JSON numbers in percent points (``high`` is null for the open bin)."""
        return {
            "longest_gt_s": [self.low, None if math.isinf(self.high) else self.high],
            "queries": self.interval.n,
            "ours": round(100 * self.ours, 2),
            "baseline": round(100 * self.baseline, 2),
            **self.interval.record(),
        }


def paired_by_length(ours: ArrayLike, baseline: ArrayLike, longest_gt_s: ArrayLike) -> list[LengthBin]:
    """The paired bootstrap Δ of one per-query metric in each length bin that holds a query.

    ``ours[i]``, ``baseline[i]`` and ``longest_gt_s[i]`` belong to one query (the order of
    :class:`~granalign.evaluation.metrics.PerQueryMetrics`).  Empty bins are left out, so the
    returned bins' query counts add up to the number of queries.
    """
    a = as_finite_array(ours, "ours", ndim=1)
    b = as_finite_array(baseline, "baseline", ndim=1)
    lengths = as_finite_array(longest_gt_s, "longest_gt_s", ndim=1)
    if not a.shape == b.shape == lengths.shape:
        sizes = f"{a.size}, {b.size} and {lengths.size}"
        raise InputError(f"ours, baseline and longest_gt_s need one value per query, got {sizes}")
    if lengths.size and lengths.min() < 0.0:  # a zero-length window is valid ground truth
        raise InputError(f"longest_gt_s must be seconds >= 0, got {lengths.min():g}")
    edges = (0.0, *LENGTH_EDGES_S, math.inf)
    which = np.searchsorted(np.asarray(LENGTH_EDGES_S), lengths, side="left")  # (low, high]
    bins = []
    for index, (low, high) in enumerate(itertools.pairwise(edges)):
        members = which == index
        if not members.any():
            continue
        bins.append(
            LengthBin(
                low=low,
                high=high,
                ours=float(a[members].mean()),
                baseline=float(b[members].mean()),
                interval=paired_bootstrap(a[members], b[members]),
            )
        )
    return bins
