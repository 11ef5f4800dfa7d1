"""Tests of the pure-math floor: similarity, fusion, proposals, NMS and the moments glue.

Hand-computed cases pin the paper's formulas; property tests (hypothesis) pin the output
contract every caller relies on (windows inside the video, sorted, NMS-clean, deterministic).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from granalign.core.feedback import feedback_queries
from granalign.core.fusion import fuse_variants, granular_fusion, variant_scores
from granalign.core.moments import (
    DEFAULT_NMS_IOU,
    clips_to_seconds,
    localize_moments,
    saliency,
)
from granalign.core.nms import greedy_nms_indices, temporal_iou, temporal_nms
from granalign.core.proposals import (
    ProposalParams,
    contrast_windows,
    drop_bottom_proposals,
    dynamic_threshold,
    generate_proposals,
    high_score_clips,
    merge_clips,
    proposal_means,
    score_proposals,
)
from granalign.core.similarity import cosine_similarity, minmax_normalise, normalised_similarity
from granalign.core.smoothing import gaussian_smooth, smoothed_similarity
from granalign.errors import ConfigError, InputError

# ----------------------------------------------------------------------------------------------
# similarity


def test_cosine_similarity_known_values() -> None:
    queries = np.array([[1.0, 0.0], [1.0, 1.0]])
    captions = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    expected = np.array([[1.0, 0.0, -1.0], [1 / math.sqrt(2), 1 / math.sqrt(2), -1 / math.sqrt(2)]])
    np.testing.assert_allclose(cosine_similarity(queries, captions), expected, atol=1e-12)


def test_zero_norm_vectors_give_zero_not_nan() -> None:
    sims = cosine_similarity(np.zeros((1, 3)), np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert np.array_equal(sims, np.zeros((1, 2)))
    sims = cosine_similarity(np.array([[1.0, 2.0, 3.0]]), np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(sims, [[0.0, 1.0]])


def test_minmax_normalise_rows_and_constant_row() -> None:
    scores = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    out = minmax_normalise(scores)
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    # differences at float-rounding level are noise, not a preference
    assert np.array_equal(minmax_normalise(np.array([0.3, 0.3 + 1e-17, 0.3])), np.zeros(3))


def test_normalised_similarity_is_minmax_of_cosine() -> None:
    rng = np.random.default_rng(1)
    q, c = rng.normal(size=(2, 8)), rng.normal(size=(20, 8))
    g = normalised_similarity(q, c)
    assert g.shape == (2, 20)
    np.testing.assert_allclose(g, minmax_normalise(cosine_similarity(q, c)))
    assert np.allclose(g.min(axis=1), 0.0) and np.allclose(g.max(axis=1), 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_similarity_rejects_non_finite_naming_the_argument(bad: float) -> None:
    good = np.ones((2, 3))
    broken = good.copy()
    broken[1, 2] = bad
    with pytest.raises(InputError, match="queries"):
        cosine_similarity(broken, good)
    with pytest.raises(InputError, match="captions"):
        cosine_similarity(good, broken)
    with pytest.raises(InputError, match="scores"):
        minmax_normalise(broken)


def test_similarity_shape_errors() -> None:
    with pytest.raises(InputError, match="embedding size"):
        cosine_similarity(np.ones((1, 3)), np.ones((2, 4)))
    with pytest.raises(InputError, match="2-D"):
        cosine_similarity(np.ones(3), np.ones((2, 3)))
    with pytest.raises(InputError, match="at least one"):
        cosine_similarity(np.ones((1, 3)), np.ones((0, 3)))


# ----------------------------------------------------------------------------------------------
# fusion


def test_fusion_formula_m2_by_hand() -> None:
    g_s = np.array([[0.2, 1.0, 0.0], [0.4, 0.6, 1.0]])
    g_a = np.array([[1.0, 0.5, 0.0], [0.0, 0.8, 0.6]])
    mask = np.array([True, True, True])
    # S_f = 1/(2m) Σ_i [g_s^i + g_a^i], m = 2
    expected = np.array(
        [(0.2 + 1.0 + 0.4 + 0.0) / 4, (1.0 + 0.5 + 0.6 + 0.8) / 4, (0.0 + 0.0 + 1.0 + 0.6) / 4]
    )
    np.testing.assert_allclose(granular_fusion(g_s, g_a, mask), expected)
    np.testing.assert_allclose(variant_scores(g_s, g_a, mask), 0.5 * (g_s + g_a))


def test_fusion_aware_missing_zero_and_agnostic() -> None:
    g_s = np.array([[0.2, 1.0, 0.0]])
    g_a = np.array([[1.0, np.nan, 0.5]])  # no aware caption for clip 1: value ignored
    g_d_agn = np.array([[0.3, 0.9, 0.7]])
    mask = np.array([True, False, True])
    zero = granular_fusion(g_s, g_a, mask)
    np.testing.assert_allclose(zero, [0.6, 0.5, 0.25])  # clip 1: (1.0 + 0) / 2
    agn = granular_fusion(g_s, g_a, mask, g_detailed_agnostic=g_d_agn, aware_missing="agnostic")
    np.testing.assert_allclose(agn, [0.6, 0.95, 0.25])  # clip 1: (1.0 + 0.9) / 2
    with pytest.raises(InputError, match="g_detailed_agnostic"):
        granular_fusion(g_s, g_a, mask, aware_missing="agnostic")
    with pytest.raises(InputError, match="aware_missing"):
        granular_fusion(g_s, g_a, mask, aware_missing="never")  # type: ignore[arg-type]


def test_fusion_validation() -> None:
    g = np.full((2, 3), 0.5)
    with pytest.raises(InputError, match="g_detailed_aware must have shape"):
        granular_fusion(g, np.full((2, 4), 0.5), np.ones(3, dtype=bool))
    with pytest.raises(InputError, match="aware_mask must have shape"):
        granular_fusion(g, g, np.ones(4, dtype=bool))
    with pytest.raises(InputError, match="boolean"):
        granular_fusion(g, g, np.ones(3))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        granular_fusion(g - 1.0, g, np.ones(3, dtype=bool))
    with pytest.raises(InputError, match="g_simplified"):
        granular_fusion(np.array([[np.nan, 0.1, 0.2]] * 2), g, np.ones(3, dtype=bool))
    with pytest.raises(InputError, match="g_detailed_aware"):
        granular_fusion(g, np.array([[np.nan, 0.1, 0.2]] * 2), np.ones(3, dtype=bool))


@settings(max_examples=40, deadline=None, database=None)
@given(
    data=st.data(),
    m=st.integers(1, 4),
    n=st.integers(1, 30),
    missing=st.sampled_from(["zero", "agnostic"]),
)
def test_fusion_output_in_unit_interval(data: st.DataObject, m: int, n: int, missing: str) -> None:
    unit = arrays(np.float64, (m, n), elements=st.floats(0.0, 1.0))
    g_s, g_a, g_d = data.draw(unit), data.draw(unit), data.draw(unit)
    mask = data.draw(arrays(np.bool_, (n,)))
    fused = granular_fusion(g_s, g_a, mask, g_detailed_agnostic=g_d, aware_missing=missing)  # type: ignore[arg-type]
    assert fused.shape == (n,)
    assert np.all((fused >= 0.0) & (fused <= 1.0))
    curves = variant_scores(g_s, g_a, mask, g_detailed_agnostic=g_d, aware_missing=missing)  # type: ignore[arg-type]
    np.testing.assert_allclose(curves.mean(axis=0), fused)


# ----------------------------------------------------------------------------------------------
# proposals

ONE_PER_BIN = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])


def test_dynamic_threshold_by_hand() -> None:
    assert dynamic_threshold(ONE_PER_BIN, num_bins=10, top_k=3) == pytest.approx(0.7)
    assert dynamic_threshold(ONE_PER_BIN, num_bins=10, top_k=1) == pytest.approx(0.9)
    assert dynamic_threshold(ONE_PER_BIN, num_bins=5, top_k=3) == pytest.approx(0.6)
    # fewer clips than top_k in all bins together: threshold 0
    assert dynamic_threshold(ONE_PER_BIN, num_bins=10, top_k=11) == 0.0
    assert list(high_score_clips(ONE_PER_BIN, 0.7)) == [7, 8, 9]


def test_high_score_is_strictly_above() -> None:
    assert list(high_score_clips(np.array([0.0, 0.5, 0.2]), 0.2)) == [1]
    assert high_score_clips(np.zeros(5), 0.0).size == 0


def test_merge_clips_with_gap() -> None:
    ids = np.array([1, 2, 5, 12, 13, 30])
    assert merge_clips(ids, gap=3).tolist() == [[1, 5], [12, 13], [30, 30]]
    assert merge_clips(ids, gap=1).tolist() == [[1, 2], [5, 5], [12, 13], [30, 30]]
    assert merge_clips(ids, gap=100).tolist() == [[1, 30]]
    assert merge_clips(np.array([], dtype=np.int64), gap=6).shape == (0, 2)
    with pytest.raises(ConfigError, match="gap"):
        merge_clips(ids, gap=0)


def test_lambda_scoring_by_hand() -> None:
    scores = np.array([0.8, 0.6, 0.0, 0.0, 1.0])
    spans = np.array([[0, 1], [4, 4]])
    # lengths 2 and 1 (total 3); μ = 0.7 and 1.0
    np.testing.assert_allclose(
        score_proposals(scores, spans, lam=0.3), [0.7 * 0.7 + 0.3 * 2 / 3, 0.7 * 1.0 + 0.3 * 1 / 3]
    )
    np.testing.assert_allclose(score_proposals(scores, spans, lam=0.0), [0.7, 1.0])
    np.testing.assert_allclose(score_proposals(scores, spans, lam=1.0), [2 / 3, 1 / 3])


def test_members_mask_excludes_bridged_clips() -> None:
    scores = np.array([0.8, 0.1, 0.6])
    spans = np.array([[0, 2]])
    members = np.array([True, False, True])
    np.testing.assert_allclose(proposal_means(scores, spans), [0.5])
    np.testing.assert_allclose(proposal_means(scores, spans, members=members), [0.7])


def test_drop_pct_by_hand() -> None:
    scores = np.array([0.9, 0.0, 0.2, 0.0, 0.5, 0.0, 0.2])
    spans = np.array([[0, 0], [2, 2], [4, 4], [6, 6]])  # means 0.9, 0.2, 0.5, 0.2
    assert drop_bottom_proposals(scores, spans, 0.0).tolist() == spans.tolist()
    assert drop_bottom_proposals(scores, spans, 30.0).tolist() == [[0, 0], [4, 4], [6, 6]]  # earlier tie
    assert drop_bottom_proposals(scores, spans, 50.0).tolist() == [[0, 0], [4, 4]]
    assert drop_bottom_proposals(scores, spans, 100.0).tolist() == [[0, 0]]  # never all of them


def test_generate_proposals_by_hand() -> None:
    scores = np.zeros(20)
    scores[[2, 3, 5, 15]] = [0.92, 0.85, 1.0, 0.95]
    # top_k=3: bin [0.9, 1] holds 0.92, 1.0, 0.95 -> threshold 0.9; clips 2, 5, 15 are high and
    # 2, 5 merge (gap 3); μ over member clips, ρ over member counts (2 and 1 of 3)
    out = generate_proposals(scores, ProposalParams(top_k=3, gap=3, lam=0.3))
    assert out[:, :2].tolist() == [[2, 5], [15, 15]]
    np.testing.assert_allclose(out[:, 2], [0.7 * 0.96 + 0.3 * 2 / 3, 0.7 * 0.95 + 0.3 * 1 / 3])
    # top_k=4: bins from 0.8 up hold 4 clips -> threshold 0.8; clip 3 joins the first proposal
    out = generate_proposals(scores, ProposalParams(top_k=4, gap=3, lam=0.3))
    assert out[:, :2].tolist() == [[2, 5], [15, 15]]
    np.testing.assert_allclose(out[:, 2], [0.7 * (0.92 + 0.85 + 1.0) / 3 + 0.3 * 3 / 4, 0.7 * 0.95 + 0.3 / 4])
    # gap 1 merges only touching clips: 2-3 and 5 split
    out = generate_proposals(scores, ProposalParams(top_k=4, gap=1, lam=0.0))
    assert sorted(out[:, :2].tolist()) == [[2, 3], [5, 5], [15, 15]]


def test_generate_proposals_empty_on_constant_curve() -> None:
    assert generate_proposals(np.zeros(50)).shape == (0, 3)
    assert generate_proposals(np.full(50, 0.5)).shape == (0, 3)
    assert generate_proposals(np.full(50, 0.45)).shape == (0, 3)  # not on a bin edge either
    assert generate_proposals(np.array([0.7])).shape == (0, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_bins", 0),
        ("top_k", 0),
        ("gap", 0),
        ("drop_pct", -1.0),
        ("drop_pct", 100.5),
        ("lam", 1.5),
        ("lam", float("nan")),
        ("top_k", 2.5),
        ("gap", True),
    ],
)
def test_proposal_params_validation_names_parameter(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        ProposalParams(**{field: value})  # type: ignore[arg-type]
    assert "[" in str(info.value)  # the allowed range is part of the message
    assert isinstance(info.value, InputError)


def test_proposals_reject_bad_curves() -> None:
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        generate_proposals(np.array([0.2, 1.5]))
    with pytest.raises(InputError, match="NaN"):
        generate_proposals(np.array([0.2, np.nan]))
    with pytest.raises(InputError, match="at least one"):
        generate_proposals(np.array([]))


def test_contrast_windows_find_the_plateau() -> None:
    scores = np.full(60, 0.2)
    scores[20:32] = 0.6  # a moderate but consistent plateau of 12 clips
    out = contrast_windows(scores, min_len=8)
    assert out.shape[1] == 3 and 1 <= out.shape[0] <= 10
    assert out[0, :2].tolist() == [20, 31]
    expected = ((0.6 - 0.2) + 1.0) / 2.0  # contrast 0.4 mapped to (c + 1) / 2
    assert out[0, 2] == pytest.approx(expected)
    assert np.all(np.diff(out[:, 2]) <= 0)
    assert np.all((out[:, 2] > 0.5) & (out[:, 2] <= 1.0))
    assert np.all(out[:, 1] - out[:, 0] + 1 >= 8)
    assert np.all(out[:, 1] - out[:, 0] + 1 < 60)  # never the whole video


def test_contrast_windows_trivial_cases() -> None:
    assert contrast_windows(np.full(40, 0.3)).shape == (0, 3)  # nothing stands out
    assert contrast_windows(np.linspace(0, 1, 8), min_len=8).shape == (0, 3)  # no outside
    assert contrast_windows(np.array([1.0])).shape == (0, 3)


def test_contrast_windows_long_video_is_bounded() -> None:
    rng = np.random.default_rng(3)
    scores = 0.1 + 0.01 * rng.random(18_000)
    scores[9_000:9_300] = 0.9  # a 10-minute moment in a 10-hour video
    out = contrast_windows(scores)  # 18-clip grid: must still land on it
    assert out.shape[0] >= 1
    start, end = out[0, :2]
    inter = min(end, 9_299) - max(start, 9_000) + 1
    assert inter / ((end - start + 1) + 300 - inter) > 0.8  # found the planted moment


# ----------------------------------------------------------------------------------------------
# NMS


def test_temporal_iou_matrix() -> None:
    a = np.array([[0.0, 10.0], [5.0, 5.0]])
    b = np.array([[5.0, 15.0], [0.0, 10.0], [20.0, 30.0]])
    iou = temporal_iou(a, b)
    np.testing.assert_allclose(iou, [[5 / 15, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert temporal_iou(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]]))[0, 0] == 0.0  # no NaN


def test_nms_three_windows_by_hand() -> None:
    windows = np.array([[1.0, 10.0, 0.8], [0.0, 10.0, 0.9], [20.0, 30.0, 0.7]])  # IoU(0,1) = 0.9
    assert temporal_nms(windows, 0.5, 10).tolist() == [[0.0, 10.0, 0.9], [20.0, 30.0, 0.7]]
    assert temporal_nms(windows, 0.95, 10).tolist() == [
        [0.0, 10.0, 0.9],
        [1.0, 10.0, 0.8],
        [20.0, 30.0, 0.7],
    ]
    assert temporal_nms(windows, 0.9, 10).shape == (2, 3)  # IoU ≥ threshold is suppressed
    assert temporal_nms(windows, 0.95, 1).tolist() == [[0.0, 10.0, 0.9]]
    assert temporal_nms(np.empty((0, 3)), 0.5, 3).shape == (0, 3)


def test_nms_ties_keep_input_order() -> None:
    windows = np.array([[0.0, 1.0, 0.5], [5.0, 6.0, 0.5], [2.0, 3.0, 0.5]])
    assert temporal_nms(windows, 0.5, 10)[:, 0].tolist() == [0.0, 5.0, 2.0]
    assert greedy_nms_indices(windows[:, :2], windows[:, 2], 0.5, 2).tolist() == [0, 1]


def test_nms_validation() -> None:
    windows = np.array([[0.0, 1.0, 0.5]])
    with pytest.raises(ConfigError, match="iou_threshold"):
        temporal_nms(windows, 0.0, 3)
    with pytest.raises(ConfigError, match="top_n"):
        temporal_nms(windows, 0.5, 0)
    with pytest.raises(InputError, match="end is before"):
        temporal_nms(np.array([[2.0, 1.0, 0.5]]), 0.5, 3)
    with pytest.raises(InputError, match="NaN"):
        temporal_nms(np.array([[0.0, 1.0, np.nan]]), 0.5, 3)


# ----------------------------------------------------------------------------------------------
# moments


def test_clips_to_seconds() -> None:
    windows = np.array([[0, 4, 0.9], [70, 74, 0.5]])
    out = clips_to_seconds(windows, clip_len=2.0, duration=149.0)
    assert out.tolist() == [[0.0, 10.0, 0.9], [140.0, 149.0, 0.5]]


def test_localize_one_clip_and_flat_curves_return_whole_video() -> None:
    assert localize_moments(np.zeros((3, 1)), np.zeros(1), clip_len=2.0, duration=1.5) == [[0.0, 1.5, 0.0]]
    flat = np.full(75, 0.4)
    out = localize_moments(np.tile(flat, (2, 1)), flat, clip_len=2.0, duration=150.0, contrast=True)
    assert out == [[0.0, 150.0, 0.4]]
    out = localize_moments(np.empty((0, 75)), np.zeros(75), clip_len=2.0, duration=150.0, mode="fused")
    assert out == [[0.0, 150.0, 0.0]]


def test_localize_single_informative_clip() -> None:
    out = localize_moments(np.zeros((0, 1)), np.array([0.7]), clip_len=2.0, duration=1.5)
    assert out == [[0.0, 1.5, 0.7]]  # one clip is a flat curve: the whole video, its mean score


def test_localize_pooled_adds_variant_windows() -> None:
    n = 75
    a = np.zeros(n)
    a[10:14] = 1.0
    b = np.zeros(n)
    b[50:55] = 1.0
    fused = (a + b) / 2
    fused_only = localize_moments(np.stack([a, b]), fused, clip_len=2.0, duration=150.0, mode="fused")
    pooled = localize_moments(np.stack([a, b]), fused, clip_len=2.0, duration=150.0, mode="pooled")
    assert len(pooled) >= len(fused_only)
    spans = {(w[0], w[1]) for w in pooled}
    assert (20.0, 28.0) in spans and (100.0, 110.0) in spans


def test_localize_rounding_and_duration_clamp() -> None:
    fused = np.zeros(76)
    fused[70:] = 1.0
    out = localize_moments(np.zeros((0, 76)), fused, clip_len=2.0, duration=150.123456)
    for start, end, score in out:
        assert end <= 150.123456 and start < end
        for x in (start, end, score):
            assert x == round(x, 4)


def test_localize_rejects_bad_input() -> None:
    fused = np.linspace(0, 1, 10)
    with pytest.raises(InputError, match="fused"):
        localize_moments(np.zeros((0, 10)), np.array([np.nan] * 10), clip_len=2.0, duration=20.0)
    with pytest.raises(InputError, match="variant_scores"):
        localize_moments(np.full((1, 10), np.nan), fused, clip_len=2.0, duration=20.0)
    with pytest.raises(InputError, match="variant_scores"):
        localize_moments(np.zeros((2, 9)), fused, clip_len=2.0, duration=20.0)
    with pytest.raises(InputError, match="clip_len"):
        localize_moments(np.zeros((0, 10)), fused, clip_len=0.0, duration=20.0)
    with pytest.raises(InputError, match="duration"):
        localize_moments(np.zeros((0, 10)), fused, clip_len=2.0, duration=float("nan"))
    with pytest.raises(ConfigError, match="mode"):
        localize_moments(np.zeros((0, 10)), fused, clip_len=2.0, duration=20.0, mode="x")  # type: ignore[arg-type]


def test_saliency_plain_floats() -> None:
    out = saliency(np.array([0.0, 0.25, 1.0], dtype=np.float32))
    assert out == [0.0, 0.25, 1.0]
    assert all(type(x) is float for x in out)
    with pytest.raises(InputError, match="fused"):
        saliency(np.array([0.1, np.inf]))


@pytest.mark.parametrize("sigma", [None, np.array([1.0, 2.0])])
def test_saliency_refuses_a_sigma_that_is_no_number_of_clips(sigma: object) -> None:
    """None used to pass as 'no smoothing' and an array failed inside numpy ('truth value of an
    array is ambiguous'): both are one ConfigError naming sigma now, like gaussian_smooth's."""
    with pytest.raises(ConfigError, match="sigma"):
        saliency(np.array([0.0, 0.5, 1.0]), sigma=sigma)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("curves", "what"),
    [
        (np.array([[0.1, np.nan, 0.3]]), "NaN"),
        (np.zeros((0, 4)), "non-empty"),
        (np.zeros(4), "2-D"),
        ([[0.1, 0.2], [0.3]], "numeric"),
        (np.array([[0.2, 1.7]]), r"\[0, 1\]"),
    ],
)
def test_fuse_variants_refuses_curves_it_cannot_average(curves: object, what: str) -> None:
    """A NaN or empty matrix came back as a NaN curve, a 1-D curve as one number and a ragged
    list as an AttributeError; a researcher calling it with their own curves gets one line."""
    with pytest.raises(InputError, match=f"curves.*{what}"):
        fuse_variants(curves)  # type: ignore[arg-type]


def test_fuse_variants_takes_plain_lists() -> None:
    assert fuse_variants([[0.0, 0.5], [1.0, 0.5]]).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("threshold", [np.array([0.1, 0.2]), None, "0.5", float("nan"), 1.5])
def test_high_score_clips_refuses_a_threshold_that_is_no_level(threshold: object) -> None:
    """An array threshold was broadcast against the curve (a numpy shape error, or silently a
    per-clip mask when the lengths matched) and None failed inside the comparison."""
    with pytest.raises(ConfigError, match="threshold"):
        high_score_clips(np.array([0.1, 0.9]), threshold)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# properties of the output contract


@st.composite
def retrieval_inputs(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 120))
    v = draw(st.integers(0, 3))
    unit = st.floats(0.0, 1.0)
    curves = draw(arrays(np.float64, (v, n), elements=unit))
    fused = draw(arrays(np.float64, (n,), elements=unit))
    clip_len = draw(st.sampled_from([1.0, 2.0, 2.5]))
    # durations a bit shorter or longer than the clips cover (real videos do both)
    duration = draw(st.floats(max(0.1, (n - 1.5) * clip_len), (n + 1.5) * clip_len))
    params = ProposalParams(
        top_k=draw(st.integers(1, 12)),
        gap=draw(st.integers(1, 8)),
        drop_pct=draw(st.sampled_from([0.0, 25.0, 100.0])),
        lam=draw(st.sampled_from([0.0, 0.3, 1.0])),
    )
    return {
        "variant_scores": curves,
        "fused": fused,
        "clip_len": clip_len,
        "duration": duration,
        "params": params,
        "mode": draw(st.sampled_from(["pooled", "fused"])),
        "contrast": draw(st.booleans()),
        "nms_iou": draw(st.sampled_from([0.3, 0.7, DEFAULT_NMS_IOU, 1.0])),
        "top_n": draw(st.integers(1, 12)),
    }


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=retrieval_inputs())
def test_localize_output_contract(inputs: dict[str, object]) -> None:
    args = dict(inputs)
    curves, fused = args.pop("variant_scores"), args.pop("fused")
    out = localize_moments(curves, fused, **args)  # type: ignore[arg-type]
    duration = float(args["duration"])  # type: ignore[arg-type]
    assert 1 <= len(out) <= int(args["top_n"])  # type: ignore[call-overload]
    for window in out:
        assert len(window) == 3 and all(type(x) is float for x in window)
        start, end, score = window
        assert 0.0 <= start < end <= duration
        assert 0.0 <= score <= 1.0
        assert all(x == round(x, 4) for x in window)
    scores = [w[2] for w in out]
    assert scores == sorted(scores, reverse=True)
    if len(out) > 1:
        iou = temporal_iou(np.array(out)[:, :2], np.array(out)[:, :2])
        np.fill_diagonal(iou, 0.0)
        assert np.all(iou < float(args["nms_iou"]))  # type: ignore[arg-type]
    assert localize_moments(curves, fused, **args) == out  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, database=None)
@given(
    scores=arrays(np.float64, st.integers(1, 80), elements=st.floats(0.0, 1.0)),
    top_k=st.integers(1, 10),
    gap=st.integers(1, 6),
)
def test_generate_proposals_properties(scores: np.ndarray, top_k: int, gap: int) -> None:
    out = generate_proposals(scores, ProposalParams(top_k=top_k, gap=gap))
    n = scores.size
    assert out.ndim == 2 and out.shape[1] == 3
    assert np.all((out[:, 0] >= 0) & (out[:, 0] <= out[:, 1]) & (out[:, 1] < n))
    assert np.all(np.diff(out[:, 2]) <= 0)
    assert np.all((out[:, 2] >= 0) & (out[:, 2] <= 1))
    if np.ptp(scores) <= 1e-9:
        assert out.shape == (0, 3)  # a flat curve has no evidence of where the moment is
        return
    # every clip strictly above the threshold lies in exactly one proposal
    high = high_score_clips(scores, dynamic_threshold(scores, 10, top_k))
    covered = np.zeros(n, dtype=int)
    for start, end in out[:, :2].astype(int):
        covered[start : end + 1] += 1
    assert np.all(covered[high] == 1) and covered.max(initial=0) <= 1


@settings(max_examples=60, deadline=None, database=None)
@given(
    windows=arrays(np.float64, st.tuples(st.integers(0, 25), st.just(3)), elements=st.floats(0.0, 100.0)),
    threshold=st.floats(0.05, 1.0),
    top_n=st.integers(1, 30),
)
def test_nms_properties(windows: np.ndarray, threshold: float, top_n: int) -> None:
    windows = windows.copy()
    windows[:, :2] = np.sort(windows[:, :2], axis=1)
    kept = temporal_nms(windows, threshold, top_n)
    assert kept.shape[0] <= min(top_n, windows.shape[0])
    assert np.all(np.diff(kept[:, 2]) <= 0)
    if kept.shape[0] > 1:
        iou = temporal_iou(kept[:, :2], kept[:, :2])
        np.fill_diagonal(iou, 0.0)
        assert np.all(iou < threshold)
    assert np.array_equal(temporal_nms(windows, threshold, top_n), kept)


# ----------------------------------------------------------------------------------------------
# temporal smoothing and query feedback


def _reference_smooth(row: np.ndarray, sigma: float) -> np.ndarray:
    """Edge-normalised Gaussian by np.convolve: the rule the research sweep measured."""
    radius = math.ceil(3 * sigma)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    ones = np.ones(row.size)
    centre = slice(radius, radius + row.size)  # "full" then the centre: also for kernels longer than row
    smoothed: np.ndarray = np.convolve(row, kernel)[centre] / np.convolve(ones, kernel)[centre]
    return smoothed


def test_gaussian_smooth_hand_case() -> None:
    # an impulse in the middle of 3 clips with sigma 1: weights e^-2, e^-1/2, 1, e^-1/2, e^-2
    w, w2 = math.exp(-0.5), math.exp(-2.0)
    out = gaussian_smooth(np.array([0.0, 1.0, 0.0]), 1.0)
    # edge-normalised: the first clip divides by the weights of the clips that exist (0, 1, 2)
    np.testing.assert_allclose(out, [w / (1 + w + w2), 1 / (1 + 2 * w), w / (1 + w + w2)], atol=1e-12)


def test_gaussian_smooth_identity_cases_and_errors() -> None:
    curve = np.array([0.1, 0.9, 0.3, 0.5])
    assert np.array_equal(gaussian_smooth(curve, 0.0), curve)
    assert np.array_equal(gaussian_smooth(np.array([0.7]), 2.0), [0.7])  # one clip: nothing to mix
    np.testing.assert_allclose(gaussian_smooth(np.full(9, 0.4), 3.0), np.full(9, 0.4))
    for bad in (-1.0, math.nan, math.inf, True, "1"):
        with pytest.raises(ConfigError):
            gaussian_smooth(curve, bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        gaussian_smooth(np.array([0.1, math.nan]), 1.0)


@settings(max_examples=60, deadline=None, database=None)
@given(
    rows=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 60)), elements=st.floats(0.0, 1.0)),
    sigma=st.sampled_from([0.5, 1.0, 1.5, 2.0, 7.0, 40.0]),
)
def test_gaussian_smooth_properties(rows: np.ndarray, sigma: float) -> None:
    out = gaussian_smooth(rows, sigma)
    assert out.shape == rows.shape
    # convex combinations: bounds kept per row, so a [0, 1] curve stays a valid score curve
    assert np.all(out >= rows.min(axis=1, keepdims=True) - 1e-12)
    assert np.all(out <= rows.max(axis=1, keepdims=True) + 1e-12)
    for row, smoothed in zip(rows, out, strict=True):  # rows are independent, as in the reference
        np.testing.assert_allclose(gaussian_smooth(row, sigma), smoothed, atol=1e-12)
        if row.size > 1:
            np.testing.assert_allclose(smoothed, _reference_smooth(row, sigma), atol=1e-12)


def test_smoothed_similarity() -> None:
    rng = np.random.default_rng(3)
    queries, captions = rng.normal(size=(2, 8)), rng.normal(size=(30, 8))
    np.testing.assert_array_equal(
        smoothed_similarity(queries, captions, 0.0), normalised_similarity(queries, captions)
    )
    g = smoothed_similarity(queries, captions, 1.0)
    np.testing.assert_allclose(g.min(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(g.max(axis=1), 1.0, atol=1e-12)
    expected = minmax_normalise(gaussian_smooth(cosine_similarity(queries, captions), 1.0))
    np.testing.assert_array_equal(g, expected)


def test_feedback_hand_case() -> None:
    queries = np.array([[2.0, 0.0, 0.0]])  # scale must not matter
    captions = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    # top-2 captions of q are clips 0 and 1; their unit mean is (0.9, 0.3, 0) / |..|
    centroid = np.array([0.9, 0.3, 0.0]) / math.hypot(0.9, 0.3)
    moved = np.array([1.0, 0.0, 0.0]) + 0.5 * centroid
    out = feedback_queries(queries, captions, k=2, weight=0.5)
    np.testing.assert_allclose(out, [moved / np.linalg.norm(moved)], atol=1e-12)
    # k past the number of captions uses them all
    everything = feedback_queries(queries, captions, k=99, weight=1.0)
    np.testing.assert_allclose(everything, feedback_queries(queries, captions, k=4, weight=1.0))


def test_feedback_off_is_identity_and_errors() -> None:
    rng = np.random.default_rng(5)
    queries, captions = rng.normal(size=(3, 6)), rng.normal(size=(10, 6))
    assert np.array_equal(feedback_queries(queries, captions, k=0), queries)
    assert np.array_equal(feedback_queries(queries, captions, k=3, weight=0.0), queries)
    out = feedback_queries(queries, captions, k=3, weight=0.5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0)
    bad: list[dict[str, object]] = [
        {"k": -1},
        {"k": 1.5},
        {"k": True},
        {"weight": -0.1},
        {"weight": math.nan},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            feedback_queries(queries, captions, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        feedback_queries(queries, captions[:, :5])
    with pytest.raises(InputError):
        feedback_queries(np.empty((0, 6)), captions)


def test_feedback_lifts_clips_like_the_best_match() -> None:
    # the query matches clip 0 best; clip 2 resembles clip 0 more than clip 1 does, and after
    # feedback clip 2 must gain on clip 1 (the point of the step)
    queries = np.array([[1.0, 0.2, 0.0]])
    captions = np.array([[1.0, 0.0, 0.3], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])
    before = cosine_similarity(queries, captions)[0]
    after = cosine_similarity(feedback_queries(queries, captions, k=1, weight=1.0), captions)[0]
    assert (after[2] - after[1]) > (before[2] - before[1])


def test_saliency_sigma() -> None:
    curve = np.array([0.0, 1.0, 0.0, 0.2, 0.4])
    assert saliency(curve) == saliency(curve, sigma=0.0) == curve.tolist()
    smoothed = saliency(curve, sigma=1.0)
    assert len(smoothed) == curve.size and all(type(x) is float for x in smoothed)
    np.testing.assert_allclose(smoothed, gaussian_smooth(curve, 1.0))
    assert all(0.0 <= x <= 1.0 for x in smoothed)


def test_one_caption_embedded_in_other_batches_is_a_flat_curve() -> None:
    """A static shot captioned alike in every clip: the ingest embeds each batch of 16 captions
    in one call, and the batch's padding moves float32 embeddings by ~1e-7 (MiniLM: 9e-8 for
    "a man stands in a kitchen" beside a longer caption).  Min–max stretched the 1e-8 cosine
    differences to [0, 1], so the answer picked batches by float noise with confident scores;
    such a curve is now flat and the answer is the whole video with the flat score 0."""
    from granalign.stages.fusion import FusionSettings, fuse

    rng = np.random.default_rng(11)
    caption = rng.standard_normal(32).astype(np.float32)
    caption /= np.linalg.norm(caption)
    noise = (rng.standard_normal((48, 32)) * 1e-7).astype(np.float32)
    noise[:16] = 0.0  # the first batch as embedded; two more batches with other padding
    captions = caption[None, :] + noise
    queries = rng.standard_normal((2, 32)).astype(np.float32)
    spread = np.ptp(cosine_similarity(queries, captions), axis=1)
    assert np.all(spread > 1e-9)  # not constant to float64 rounding
    assert np.all(normalised_similarity(queries, captions) == 0.0)
    assert np.all(smoothed_similarity(queries, captions, 1.0) == 0.0)
    settings = FusionSettings(3, 0.5, 1.0, "zero", True, 0.5)
    scores = fuse(queries, queries, captions, settings)
    assert set(scores.fused) == {0.0}
    curves, fused = scores.variant_scores, scores.fused
    assert localize_moments(curves, fused, clip_len=2.0, duration=96.0, contrast=True) == [[0.0, 96.0, 0.0]]


@pytest.mark.parametrize("shape", [(), (0,), (2, 0), (2, 3, 4)], ids=str)
def test_minmax_and_smoothing_refuse_what_is_no_curve_nor_stack_of_curves(shape: tuple[int, ...]) -> None:
    """A 3-D array was normalised and smoothed along its last axis as if each slice were a video,
    and gaussian_smooth handed an empty or scalar array back unchanged: callers pass curves."""
    x = np.full(shape, 0.5)
    with pytest.raises(InputError, match=r"^scores must .*got shape"):
        minmax_normalise(x)
    with pytest.raises(InputError, match=r"^values must .*got shape"):
        gaussian_smooth(x, 1.0)
