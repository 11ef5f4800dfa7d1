"""Issue 13 items 4 and 5: contrast windows on a scale-free grid that reach short moments, and
the two answer profiles (benchmark: near-duplicates kept; distinct: what a tool caller reads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from granalign.core.moments import DISTINCT_NMS_IOU, MomentSettings, localize_moments
from granalign.core.nms import temporal_iou
from granalign.core.proposals import SHORT_WINDOW_CLIPS, ProposalParams, contrast_windows
from granalign.errors import ConfigError
from granalign.stages.nms import AnswerSettings
from graphs.context import Context
from tests.test_tool import DOG_VIDEO, demo_store  # noqa: F401  (fixture)


def _iou(window: np.ndarray, start: int, end: int) -> float:
    a, b = int(window[0]), int(window[1])
    inter = max(0, min(b, end) - max(a, start) + 1)
    return inter / ((b - a + 1) + (end - start + 1) - inter)


def _short_moment_curve() -> np.ndarray:
    scores = np.full(75, 0.2)  # a 150-s video at 2 s/clip
    scores[30:33] = 0.9  # a 6-s moment: 3 clips
    return scores


def test_short_moment_is_reachable_only_with_the_short_prior() -> None:
    scores = _short_moment_curve()
    without = contrast_windows(scores, min_len=10, relative_step=0.1)
    with_prior = contrast_windows(scores, min_len=10, relative_step=0.1, short_prior=4.0)
    assert np.all(without[:, 1] - without[:, 0] + 1 >= 10)  # 20 s at least: IoU with 6 s < 0.5
    assert max(_iou(w, 30, 32) for w in without) < 0.5
    assert with_prior[0, :2].tolist() == [30, 32]  # the 3-clip moment itself, ranked first
    assert np.all(with_prior[:, 1] - with_prior[:, 0] + 1 >= SHORT_WINDOW_CLIPS)


def test_short_prior_shrinks_short_windows_by_length() -> None:
    scores = _short_moment_curve()
    out = contrast_windows(scores, min_len=10, relative_step=0.1, short_prior=4.0)
    inside, outside = 0.9, 0.2  # the exact window [30, 32]
    contrast = (inside - outside) * 3 / (3 + 4.0)
    assert out[0, 2] == pytest.approx((contrast + 1.0) / 2.0)


def test_a_long_event_still_beats_a_spike_inside_it() -> None:
    scores = np.full(75, 0.2)
    scores[20:40] = 0.7  # a 40-s event
    scores[28:30] = 0.75  # with a slightly higher 4-s spike in it
    out = contrast_windows(scores, min_len=10, relative_step=0.1, short_prior=4.0)
    assert _iou(out[0], 20, 39) >= 0.9


@pytest.mark.parametrize(("n", "start", "length"), [(75, 11, 13), (1_800, 1_234, 13), (18_000, 9_001, 300)])
def test_relative_grid_lands_on_a_moment_at_any_scale(n: int, start: int, length: int) -> None:
    rng = np.random.default_rng(n)
    scores = 0.1 + 0.01 * rng.random(n)
    scores[start : start + length] = 0.9
    out = contrast_windows(scores, min_len=10, relative_step=0.1, short_prior=4.0)
    assert _iou(out[0], start, start + length - 1) >= 0.9


def test_contrast_windows_validate_the_new_settings() -> None:
    with pytest.raises(ConfigError, match="relative_step"):
        contrast_windows(np.linspace(0, 1, 30), relative_step=-0.1)
    with pytest.raises(ConfigError, match="short_prior"):
        contrast_windows(np.linspace(0, 1, 30), short_prior=float("nan"))
    with pytest.raises(ConfigError, match="contrast_short_prior"):
        ProposalParams(contrast_short_prior=-1.0)


def test_defaults_flow_from_the_library_to_the_graph() -> None:
    params = ProposalParams(**Context().proposal_kwargs())
    assert params == MomentSettings().params
    assert (params.contrast_step, params.contrast_short_prior) == (0.1, 4.0)
    assert ProposalParams().contrast_short_prior == 0.0  # the paper's rule has no contrast prior


def test_graph_defaults_find_a_short_moment() -> None:
    scores = _short_moment_curve()
    s = MomentSettings()
    moments = localize_moments(
        scores[None, :],
        scores,
        clip_len=2.0,
        duration=150.0,
        params=s.params,
        mode=s.proposal_mode,
        contrast=s.contrast,
        contrast_min_len=s.contrast_min_len,
    )
    assert moments[0][:2] == [60.0, 66.0]


def test_answer_profiles() -> None:
    ctx = Context()
    assert ctx.answer_profile == "auto" and ctx.answer_nms_iou == ctx.nms_iou == 0.95
    tool = ctx.for_answers()
    assert tool.answer_profile == "distinct" and tool.answer_nms_iou == DISTINCT_NMS_IOU
    assert AnswerSettings.of(tool).nms_iou == DISTINCT_NMS_IOU
    assert AnswerSettings.of(ctx).nms_iou == 0.95  # bench keeps the official-metric profile
    chosen = Context(answer_profile="benchmark").for_answers()
    assert chosen.answer_profile == "benchmark" and AnswerSettings.of(chosen).nms_iou == 0.95
    with pytest.raises(ConfigError, match="answer_profile"):
        Context(answer_profile="pretty")


def test_distinct_profile_returns_distinct_windows() -> None:
    rng = np.random.default_rng(0)
    scores = np.clip(np.convolve(rng.random(75), np.ones(5) / 5, mode="same"), 0, 1)
    scores = (scores - scores.min()) / (scores.max() - scores.min())
    s = MomentSettings()
    kwargs = {
        "clip_len": 2.0,
        "duration": 150.0,
        "params": s.params,
        "mode": s.proposal_mode,
        "contrast": True,
        "contrast_min_len": s.contrast_min_len,
        "top_n": 5,
    }
    distinct = np.array(localize_moments(scores[None, :], scores, nms_iou=DISTINCT_NMS_IOU, **kwargs))
    iou = temporal_iou(distinct[:, :2], distinct[:, :2])
    assert np.all(iou[~np.eye(len(distinct), dtype=bool)] < DISTINCT_NMS_IOU)
    bench = np.array(localize_moments(scores[None, :], scores, nms_iou=0.95, **kwargs))
    assert bench[0].tolist() == distinct[0].tolist()  # the top answer is the same


def _max_pair_iou(moments: list[list[float]]) -> float:
    rows = np.asarray(moments, dtype=np.float64)[:, :2]
    iou = temporal_iou(rows, rows)
    return float(iou[~np.eye(len(rows), dtype=bool)].max()) if len(rows) > 1 else 0.0


def test_the_tool_answers_distinct_windows_where_the_graph_keeps_overlaps(
    demo_store: tuple[Path, dict[str, dict[str, object]]],  # noqa: F811
) -> None:
    from graphs.retrieval import graph
    from tools.langchain_tool import MomentRetriever, ToolSettings

    # the demo video is short: at 0.3 the difference shows (its windows overlap by IoU < 0.5)
    ctx = Context(store_dir=str(demo_store[0]), checkpointer="none", top_n=5, distinct_nms_iou=0.3)
    query = "a dog runs on the grass"
    benchmark = graph.invoke({"video": DOG_VIDEO, "query": query}, context=ctx)["moments"]
    tool = MomentRetriever(ToolSettings(context=ctx, url_allowlist=())).run(DOG_VIDEO, query, 5).artifact
    assert _max_pair_iou(benchmark) >= 0.3  # the graph's own default is the benchmark profile
    assert _max_pair_iou(tool["moments"]) < 0.3  # the tool answers with the distinct profile
    assert tool["moments"][0] == benchmark[0]


def test_a_tiny_contrast_step_keeps_the_grid_bounded_on_a_long_video() -> None:
    """contrast_step accepts any value in (0, 1]: a step of 1e-6 put starts one clip apart at
    every length, n²/2 windows (162 million, gigabytes and tens of seconds, at 10 h of 2-s
    clips).  The grid is now thinned to about ``max_candidates``; the moment is still found."""
    import tracemalloc

    n, start, length = 4_000, 2_345, 40
    rng = np.random.default_rng(7)
    scores = 0.1 + 0.01 * rng.random(n)
    scores[start : start + length] = 0.9
    tracemalloc.start()
    try:
        out = contrast_windows(scores, min_len=10, relative_step=1e-6, short_prior=4.0, refine=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB for {n} clips"
    assert _iou(out[0], start, start + length - 1) >= 0.9
    # the default step's grid is unchanged at 10 h (18,000 clips: 343,785 windows < 500,000)
    long = np.repeat(scores, 5)[:18_000]
    kwargs = {"min_len": 10, "relative_step": 0.1, "short_prior": 4.0}
    unbounded = contrast_windows(long, **kwargs, max_candidates=10**9)
    np.testing.assert_array_equal(contrast_windows(long, **kwargs), unbounded)
