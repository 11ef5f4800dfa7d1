"""Paired Δ by moment length (``granalign.evaluation.breakdown``): the bins, their edges and
that each bin's interval is the bootstrap over exactly its queries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from granalign.errors import InputError
from granalign.evaluation.bootstrap import paired_bootstrap
from granalign.evaluation.breakdown import FEW_QUERIES, LENGTH_EDGES_S, paired_by_length


def test_upper_edges_are_inclusive_like_the_official_ranges() -> None:
    lengths = np.array([2.0, 10.0, 10.5, 20.0, 40.0, 40.01, 80.0, 150.0])
    ours = np.ones(lengths.size)
    bins = paired_by_length(ours, np.zeros(lengths.size), lengths)
    assert [(b.low, b.high, b.interval.n) for b in bins] == [
        (0.0, 10.0, 2),
        (10.0, 20.0, 2),
        (20.0, 40.0, 1),
        (40.0, 80.0, 2),
        (80.0, math.inf, 1),
    ]
    assert [b.label for b in bins] == ["≤10 s", "10–20 s", "20–40 s", "40–80 s", ">80 s"]


def test_each_bin_is_the_bootstrap_over_its_own_queries_and_empty_bins_are_left_out() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.choice([6.0, 14.0, 120.0], size=60)  # nothing in 20–80 s
    ours = rng.integers(0, 2, size=60).astype(float)
    base = rng.integers(0, 2, size=60).astype(float)
    bins = paired_by_length(ours, base, lengths)
    assert [b.label for b in bins] == ["≤10 s", "10–20 s", ">80 s"]
    assert sum(b.interval.n for b in bins) == 60
    for b in bins:
        members = (lengths > b.low) & (lengths <= b.high)
        assert b.interval == paired_bootstrap(ours[members], base[members])
        assert b.ours == pytest.approx(ours[members].mean())
        assert b.baseline == pytest.approx(base[members].mean())
    record = bins[-1].record()
    assert record["longest_gt_s"] == [LENGTH_EDGES_S[-1], None]  # the open bin: JSON null
    assert record["queries"] == bins[-1].interval.n
    assert record["delta"] == round(100 * bins[-1].interval.mean_diff, 2)


@pytest.mark.parametrize(
    ("ours", "base", "lengths", "message"),
    [
        ([1.0, 0.0], [1.0], [5.0, 9.0], "need one value per query, got 2, 1 and 2"),
        ([1.0], [0.0], [-2.0], "longest_gt_s must be seconds >= 0, got -2"),
        ([1.0], [0.0], [float("nan")], "longest_gt_s"),
    ],
)
def test_bad_input_is_named(ours: list[float], base: list[float], lengths: list[float], message: str) -> None:
    with pytest.raises(InputError, match=message):
        paired_by_length(ours, base, lengths)


def test_a_zero_length_window_counts_in_the_first_bin() -> None:
    """The evaluator accepts a window [4, 4]; the breakdown must not refuse what it scored."""
    bins = paired_by_length([1.0, 0.0], [0.0, 0.0], [0.0, 30.0])
    assert [(b.label, b.interval.n) for b in bins] == [("≤10 s", 1), ("20–40 s", 1)]


def test_bins_of_few_queries_are_flagged() -> None:
    lengths = np.array([5.0] * (FEW_QUERIES - 1) + [30.0] * FEW_QUERIES)
    bins = paired_by_length(np.ones(lengths.size), np.zeros(lengths.size), lengths)
    assert [(b.label, b.few) for b in bins] == [("≤10 s", True), ("20–40 s", False)]
