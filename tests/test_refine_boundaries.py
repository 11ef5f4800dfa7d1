"""Issue 13 item 4: contrast windows' edges moved to the curve's own midpoint level.

The grid of window lengths starts at a length prior (10 clips = 20 s); refinement is what lets a
6-s moment be answered with a 6-s window, in a 30-s clip as in a 1-h recording.
"""

from __future__ import annotations

import numpy as np
import pytest

from granalign.core.moments import MomentSettings, localize_moments
from granalign.core.nms import temporal_iou
from granalign.core.proposals import (
    SHORT_WINDOW_CLIPS,
    ProposalParams,
    contrast_windows,
    refine_boundaries,
)
from granalign.core.smoothing import gaussian_smooth
from granalign.errors import ConfigError, InputError
from graphs.context import Context


def _curve(n: int, start: int, length: int, low: float = 0.2, high: float = 0.9) -> np.ndarray:
    scores = np.full(n, low)
    scores[start : start + length] = high
    return scores


def test_a_short_moment_inside_a_grid_window_is_answered_exactly() -> None:
    scores = _curve(75, 30, 3)  # a 6-s moment in a 150-s video
    grid = contrast_windows(scores, min_len=10, relative_step=0.1)
    refined = contrast_windows(scores, min_len=10, relative_step=0.1, refine=True)
    assert grid[0, 1] - grid[0, 0] + 1 >= 10  # without: 20 s at least
    assert refined[0, :2].tolist() == [30, 32]  # with: the 3 clips, no short windows needed
    assert refined[0, 2] == grid[0, 2] and np.all(refined[:, 2] <= grid[0, 2])  # scores kept
    spans = [tuple(w[:2]) for w in refined]
    assert len(spans) == len(set(spans))  # grid windows that refine alike appear once


def _distinct_count(windows: np.ndarray, iou: float = 0.5) -> int:
    """Greedy count of windows with IoU < ``iou`` to every earlier kept one (whole clips)."""
    kept: list[np.ndarray] = []
    for w in windows:
        spans = np.asarray(kept)[:, :2] + (0.0, 1.0) if kept else np.empty((0, 2))
        if temporal_iou(w[None, :2] + (0.0, 1.0), spans).max(initial=0.0) < iou:
            kept.append(w)
    return len(kept)


def test_refined_windows_still_offer_ten_distinct_moments() -> None:
    rng = np.random.default_rng(1)
    scores = 0.2 + 0.1 * rng.random(300)
    scores[100:110] = 0.9  # one clear moment: most grid windows around it refine to its edges
    grid = contrast_windows(scores, min_len=10, relative_step=0.1)
    refined = contrast_windows(scores, min_len=10, relative_step=0.1, refine=True)
    assert _distinct_count(grid) == 10
    assert _distinct_count(refine_boundaries(scores, grid)) < 10  # refining alone collapses them
    assert _distinct_count(refined) >= 10  # the extras restore a choice of distinct moments
    assert refined[0, :2].tolist() == [100, 109]


@pytest.mark.parametrize("n", [15, 75, 1_800])  # a 30-s clip, a 150-s video, a 1-h recording
def test_the_same_moment_is_found_at_every_video_length(n: int) -> None:
    start = n // 3
    scores = _curve(n, start, 4)
    out = contrast_windows(scores, min_len=min(10, n), relative_step=0.1, refine=True)
    assert out[0, :2].tolist() == [start, start + 3]


def test_a_long_moment_cut_at_a_grid_step_is_extended_to_its_edges() -> None:
    rng = np.random.default_rng(0)
    scores = 0.1 + 0.05 * rng.random(600)
    scores[101:358] = 0.8 + 0.05 * rng.random(257)  # 257 clips: not a length of the grid
    grid = contrast_windows(scores, min_len=10, relative_step=0.1)
    assert grid[0, :2].tolist() != [101, 357]
    refined = refine_boundaries(scores, grid)
    assert refined[0, :2].tolist() == [101, 357]


def test_edges_follow_the_midpoint_of_the_window_and_the_rest() -> None:
    scores = np.array([0.0] * 10 + [0.4, 0.6, 0.9, 0.9, 0.6, 0.4] + [0.0] * 10)
    # window [10, 15]: inside mean 0.633, outside 0 -> level 0.317: every clip stays
    assert refine_boundaries(scores, [[10, 15, 0.7]])[0, :2].tolist() == [10, 15]
    # window [12, 13]: inside 0.9, outside 0.2 -> level 0.55: grows over the two 0.6 clips only
    assert refine_boundaries(scores, [[12, 13, 0.7]])[0, :2].tolist() == [11, 14]
    # window [5, 20]: inside 0.238, outside 0 -> level 0.119: trims the zeros, keeps 0.4 to 0.4
    assert refine_boundaries(scores, [[5, 20, 0.6]])[0, :2].tolist() == [10, 15]


def test_never_below_two_clips_nor_the_whole_video() -> None:
    spike = _curve(40, 20, 1)
    out = refine_boundaries(spike, [[15, 25, 0.6]])
    assert out[0, 1] - out[0, 0] + 1 == SHORT_WINDOW_CLIPS and out[0, 0] <= 20 <= out[0, 1]
    almost_flat = np.full(40, 0.9)
    almost_flat[0] = 0.0
    out = refine_boundaries(almost_flat, [[10, 30, 0.6]])
    assert out[0, 1] - out[0, 0] + 1 < 40


def test_bad_windows_are_refused() -> None:
    with pytest.raises(InputError, match="windows must have shape"):
        refine_boundaries(np.linspace(0, 1, 10), [[1, 2]])
    with pytest.raises(InputError, match="windows must satisfy"):
        refine_boundaries(np.linspace(0, 1, 10), [[3, 12, 0.5]])
    assert refine_boundaries(np.linspace(0, 1, 10), np.empty((0, 3))).shape == (0, 3)


def test_the_setting_is_on_in_the_graph_and_off_in_the_papers_rule() -> None:
    assert ProposalParams().contrast_refine is False
    assert MomentSettings().params.contrast_refine is True
    assert ProposalParams(**Context().proposal_kwargs()).contrast_refine is True
    assert ProposalParams(**Context().with_overrides(contrast_refine=False).proposal_kwargs()) == (
        ProposalParams(**{**Context().proposal_kwargs(), "contrast_refine": False})
    )
    with pytest.raises(ConfigError, match="contrast_refine must be true or false"):
        ProposalParams(contrast_refine="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="contrast_refine must be true or false"):
        MomentSettings(contrast_refine=1)  # type: ignore[arg-type]


def test_graph_defaults_answer_a_10_s_moment_with_its_own_length() -> None:
    rng = np.random.default_rng(2)
    scores = 0.2 + 0.2 * rng.random(75)
    scores[30:35] = 0.8  # 60-70 s, then smoothed as the graph smooths similarity curves
    scores = gaussian_smooth(scores, 1.0)
    s = MomentSettings()
    args = dict(clip_len=2.0, duration=150.0, mode=s.proposal_mode, contrast=s.contrast,
                contrast_min_len=s.contrast_min_len)  # fmt: skip
    refined = localize_moments(scores[None, :], scores, params=s.params, **args)  # type: ignore[arg-type]
    off = ProposalParams(**{**Context().proposal_kwargs(), "contrast_refine": False})
    unrefined = localize_moments(scores[None, :], scores, params=off, **args)  # type: ignore[arg-type]
    truth = [[60.0, 70.0]]
    assert temporal_iou([refined[0][:2]], truth)[0, 0] >= 0.8
    assert temporal_iou([unrefined[0][:2]], truth)[0, 0] <= 0.5


def test_a_widened_side_does_not_grow_over_a_low_clip() -> None:
    scores = np.array([0.0, 0.0, 0.0, 1.0, 0.2, 0.9, 0.9, 0.0, 0.0, 0.0])
    # window [1, 3]: level 0.31; clip 3 alone is above it, widened right onto clip 4 (0.2)
    assert refine_boundaries(scores, [[1, 3, 0.6]])[0, :2].tolist() == [3, 4]


def test_a_window_that_would_grow_to_the_whole_video_keeps_its_trimmed_edges() -> None:
    flat = np.full(12, 0.5)
    assert refine_boundaries(flat, [[2, 5, 0.5]])[0, :2].tolist() == [2, 5]
    assert refine_boundaries(flat[:2], [[0, 1, 0.5]])[0, :2].tolist() == [0, 1]  # already whole


def test_windows_must_be_whole_clip_indices() -> None:
    with pytest.raises(InputError, match="whole clip indices"):
        refine_boundaries(np.linspace(0, 1, 10), [[0.5, 2.7, 0.5]])
