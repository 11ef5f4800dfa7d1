"""Tests for granalign.evaluation.metrics: parity with the official QVHighlights numbers, hand-computed
cases for each scoring rule, input validation, and property tests of the vectorised kernels
against plain-loop references written from the rules (not from the official code)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granalign.errors import InputError
from granalign.evaluation import metrics as ev
from granalign.evaluation.metrics import (
    evaluate_files,
    evaluate_submission,
    metrics_table_rows,
    recall_and_miou,
)
from tests.conftest import fixture_path

# --------------------------------------------------------------------------- parity data


def _qvh(name: str) -> Path:
    """A committed QVHighlights fixture (tests/fixtures/qvhighlights); missing fails the test."""
    return fixture_path("qvhighlights", name)


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}/{key}")
    else:
        yield prefix, tree


def _same_metrics(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal structure and values, NaN equal to NaN (empty length ranges report NaN)."""
    if _key_structure(a) != _key_structure(b):
        return False
    return all(
        (isinstance(x, float) and math.isnan(x) and math.isnan(y)) or x == y
        for (_, x), (_, y) in zip(_leaves(a), _leaves(b), strict=True)
    )


def _key_structure(tree: Any) -> Any:
    if isinstance(tree, dict):
        return [(key, _key_structure(value)) for key, value in tree.items()]
    return None


@pytest.fixture(scope="module")
def val_ground_truth() -> list[dict[str, Any]]:
    from granalign.io.jsonl import read_jsonl

    return read_jsonl(_qvh("highlight_val_release.jsonl"))


@pytest.mark.parametrize("name", ["sample_val_preds", "vtg_gpt_val_preds"])
def test_parity_with_official_metrics(name: str, val_ground_truth: list[dict[str, Any]]) -> None:
    """Every number of the official evaluator's JSON, and its exact key structure and order.

    The VTG-GPT file carries extra keys per line (relevant_windows, span_index_list) that must
    be ignored, and 13 queries of each file have one saliency score fewer than the GT's clips.
    """
    from granalign.io.jsonl import read_jsonl

    submission = read_jsonl(_qvh(f"{name}.jsonl"))
    expected = json.loads(_qvh(f"{name}_metrics.json").read_text())
    got = evaluate_submission(submission, val_ground_truth)
    assert _key_structure(got) == _key_structure(expected)
    reference = dict(_leaves(expected))
    mismatches = [
        (path, value, reference[path])
        for path, value in _leaves(got)
        if not abs(value - reference[path]) < 0.005 + 1e-9
    ]
    assert not mismatches
    assert all(type(value) is float for _, value in _leaves(got))


def test_evaluate_files_matches_in_memory() -> None:
    sub = _qvh("sample_val_preds.jsonl")
    expected = json.loads(_qvh("sample_val_preds_metrics.json").read_text())
    got = evaluate_files(sub, _qvh("highlight_val_release.jsonl"))
    assert got["brief"] == expected["brief"]


def test_full_val_allow_subset_matches_full_when_complete(val_ground_truth: list[dict[str, Any]]) -> None:
    from granalign.io.jsonl import read_jsonl

    submission = read_jsonl(_qvh("vtg_gpt_val_preds.jsonl"))
    assert evaluate_submission(submission, val_ground_truth, allow_subset=True) == evaluate_submission(
        submission, val_ground_truth
    )


# --------------------------------------------------------------------------- toy data


def _gt(
    qid: int,
    windows: list[list[float]],
    *,
    duration: float = 40,
    ratings: dict[int, int] | None = None,
) -> dict[str, Any]:
    """A GT line; ``ratings`` maps clip id -> rating given identically by all three annotators."""
    ratings = ratings if ratings is not None else {0: 4}
    clip_ids = sorted(ratings)
    return {
        "qid": qid,
        "query": f"query {qid}",
        "duration": duration,
        "vid": f"vid{qid}",
        "relevant_windows": windows,
        "relevant_clip_ids": clip_ids,
        "saliency_scores": [[ratings[c]] * 3 for c in clip_ids],
    }


def _pred(qid: int, windows: list[list[float]], saliency: list[float] | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "qid": qid,
        "query": f"query {qid}",
        "vid": f"vid{qid}",
        "pred_relevant_windows": windows,
    }
    if saliency is not None:
        line["pred_saliency_scores"] = saliency
    return line


def _three_range_truth() -> list[dict[str, Any]]:
    """One query per length range: short (8 s), middle (20 s), long (two 40 s windows)."""
    return [
        _gt(1, [[0, 8]], ratings={0: 4, 1: 4, 2: 3, 3: 2}),
        _gt(2, [[10, 30]], ratings={5: 4, 6: 3, 7: 1}),
        _gt(3, [[20, 60], [70, 110]], duration=120, ratings={10: 4, 11: 4, 50: 2}),
    ]


def _saliency_from_ratings(gt: dict[str, Any]) -> list[float]:
    clips = int(gt["duration"] / 2)
    scores = [0.0] * clips
    for clip, row in zip(gt["relevant_clip_ids"], gt["saliency_scores"], strict=True):
        scores[clip] = float(row[0])
    return scores


def test_perfect_predictions_score_100_everywhere() -> None:
    truth = _three_range_truth()
    submission = [
        _pred(
            g["qid"],
            [[*w, 0.9 - 0.1 * i] for i, w in enumerate(g["relevant_windows"])],
            _saliency_from_ratings(g),
        )
        for g in truth
    ]
    metrics = evaluate_submission(submission, truth)
    assert list(metrics) == [
        "brief",
        "HL-min-Fair",
        "HL-min-Good",
        "HL-min-VeryGood",
        "full",
        "long",
        "middle",
        "short",
    ]
    assert all(value == 100.0 for _, value in _leaves(metrics))


def test_disjoint_predictions_score_0() -> None:
    truth = _three_range_truth()
    far = [[140.0, 150.0, 0.9], [130.0, 139.0, 0.8]]
    # the top saliency goes to the last clip, which no annotator rated
    submission = [_pred(g["qid"], far, [0.0] * (int(g["duration"] / 2) - 1) + [1.0]) for g in truth]
    metrics = evaluate_submission(submission, truth)
    for name in ("full", "short", "middle", "long"):
        assert all(v == 0.0 for _, v in _leaves(metrics[name]))
    assert [metrics[f"HL-min-{lvl}"]["HL-Hit1"] for lvl in ("Fair", "Good", "VeryGood")] == [0.0, 0.0, 0.0]


def test_interpolated_ap_with_duplicate_detection_by_hand() -> None:
    """GT [0,10], [20,30]; predictions hit, duplicate (GT taken -> FP), hit.

    precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 0.8333.
    Both GT windows are 10 s long: (0, 10] is "short", so middle/long have no query (NaN).
    """
    truth = [_gt(1, [[0, 10], [20, 30]])]
    submission = [_pred(1, [[0, 10, 0.9], [0, 10, 0.8], [20, 30, 0.7]])]
    metrics = evaluate_submission(submission, truth)
    assert set(metrics["full"]["MR-mAP"].values()) == {83.33}
    assert set(metrics["full"]["MR-R1"].values()) == {100.0}
    assert metrics["short"] == metrics["full"]
    assert all(math.isnan(v) for _, v in _leaves(metrics["middle"]))
    assert all(math.isnan(v) for _, v in _leaves(metrics["long"]))
    assert math.isnan(metrics["brief"]["MR-long-mAP"])


def test_tied_scores_keep_submission_order() -> None:
    """Python's stable sort: with equal scores the first-listed (wrong) window ranks first -> AP 1/2."""
    truth = [_gt(1, [[0, 10]])]
    metrics = evaluate_submission([_pred(1, [[20, 30, 0.5], [0, 10, 0.5]])], truth)
    assert metrics["full"]["MR-mAP"]["0.5"] == 50.0
    assert metrics["full"]["MR-R1"]["0.5"] == 0.0  # R1 = first listed window


def test_r1_uses_first_listed_window_not_highest_score() -> None:
    truth = [_gt(1, [[0, 10]])]
    metrics = evaluate_submission([_pred(1, [[20, 30, 0.1], [0, 10, 0.9]])], truth)
    assert metrics["full"]["MR-mAP"]["average"] == 100.0  # mAP re-ranks by score
    assert metrics["full"]["MR-R1"]["0.5"] == 0.0


def test_only_first_ten_windows_count_for_map() -> None:
    truth = [_gt(1, [[0, 10]])]
    misses = [[100.0 + 2 * i, 101.0 + 2 * i, 0.5] for i in range(10)]
    metrics = evaluate_submission([_pred(1, [*misses, [0, 10, 0.99]])], truth)
    assert metrics["full"]["MR-mAP"]["average"] == 0.0


def test_equal_iou_gt_tie_goes_to_later_gt_window() -> None:
    """[0,20] has IoU 0.5 with both abutting GT windows; the official walk gives it GT #2, so the
    following [0,10] still matches GT #1 at IoU 0.5 (AP 1).  Above 0.5 only [0,10] hits (AP 1/4)."""
    truth = [_gt(1, [[0, 10], [10, 20]])]
    metrics = evaluate_submission([_pred(1, [[0, 20, 0.9], [0, 10, 0.8]])], truth)
    assert metrics["full"]["MR-mAP"]["0.5"] == 100.0
    assert metrics["full"]["MR-mAP"]["0.55"] == 25.0


def test_length_ranges_filter_gt_windows_not_predictions() -> None:
    """Query 3 has a 40 s (long) and a 4 s (short) GT window; in "short" only the 4 s one is GT,
    but both predictions still compete there, so even a perfect submission is not 100 per range."""
    truth = [_gt(3, [[20, 60], [100, 104]], duration=120)]
    metrics = evaluate_submission([_pred(3, [[20, 60, 0.9]])], truth)
    assert metrics["long"]["MR-mAP"]["average"] == 100.0
    assert metrics["short"]["MR-mAP"]["average"] == 0.0
    assert metrics["full"]["MR-mAP"]["average"] == 50.0  # 1 of 2 GT windows found at precision 1
    assert metrics["full"]["MR-R1"]["0.95"] == 100.0
    assert all(math.isnan(v) for _, v in _leaves(metrics["middle"]))
    both = evaluate_submission([_pred(3, [[20, 60, 0.9], [100, 104, 0.8]])], truth)
    assert both["full"]["MR-mAP"]["average"] == 100.0
    assert both["short"]["MR-mAP"]["average"] == 50.0  # [20, 60] is a false positive there
    assert both["short"]["MR-R1"]["0.5"] == 0.0  # R1's first window is the long one


def test_highlight_ap_counts_a_tie_as_one_recall_level() -> None:
    """Clips rated [4, 0, 4, 0] and scores [.9, .8, .8, .1]: thresholds .9 (P=1, R=1/2) and .8
    (P=2/3, R=1); AP = (1 + 2/3) / 2 = 83.33 for every annotator and rating level."""
    truth = [_gt(1, [[0, 2]], duration=8, ratings={0: 4, 2: 4})]
    metrics = evaluate_submission([_pred(1, [[0, 2, 1.0]], [0.9, 0.8, 0.8, 0.1])], truth)
    for level in ("Fair", "Good", "VeryGood"):
        assert metrics[f"HL-min-{level}"] == {"HL-mAP": 83.33, "HL-Hit1": 100.0}


def test_highlight_rating_levels_and_annotator_mean() -> None:
    """Ratings per clip (annotators a,b,c): clip0 (4,2,0), clip1 (0,0,0).  Scores favour clip0.

    Fair (>=2): a, b all-correct -> 1, c all-negative -> 0 => mAP 66.67; Hit1: any annotator -> 100.
    VeryGood (>=4): only a positive => 33.33.
    """
    truth = [
        {
            "qid": 9,
            "duration": 4,
            "relevant_windows": [[0, 2]],
            "relevant_clip_ids": [0],
            "saliency_scores": [[4, 2, 0]],
        }
    ]
    metrics = evaluate_submission([_pred(9, [[0, 2, 1.0]], [0.7, 0.1])], truth)
    assert metrics["HL-min-Fair"] == {"HL-mAP": 66.67, "HL-Hit1": 100.0}
    assert metrics["HL-min-Good"] == {"HL-mAP": 33.33, "HL-Hit1": 100.0}
    assert metrics["HL-min-VeryGood"] == {"HL-mAP": 33.33, "HL-Hit1": 100.0}


def test_short_saliency_is_zero_padded_and_long_top_clip_is_a_miss() -> None:
    truth = [_gt(1, [[0, 2]], duration=8, ratings={0: 4, 2: 4})]
    short = evaluate_submission([_pred(1, [[0, 2, 1.0]], [0.9, 0.8, 0.8])], truth)
    assert short["HL-min-Fair"] == {"HL-mAP": 83.33, "HL-Hit1": 100.0}
    extra_top = evaluate_submission([_pred(1, [[0, 2, 1.0]], [0.9, 0.8, 0.8, 0.1, 5.0])], truth)
    assert extra_top["HL-min-Fair"]["HL-Hit1"] == 0.0
    assert extra_top["HL-min-Fair"]["HL-mAP"] == 83.33  # the 5th score is truncated for AP


def test_hit1_takes_first_of_tied_maxima() -> None:
    truth = [_gt(1, [[2, 4]], duration=8, ratings={1: 4})]
    first_wins = evaluate_submission([_pred(1, [[0, 2, 1.0]], [0.5, 0.5, 0.0, 0.0])], truth)
    assert first_wins["HL-min-Fair"]["HL-Hit1"] == 0.0
    second_first = evaluate_submission([_pred(1, [[0, 2, 1.0]], [0.4, 0.5, 0.5, 0.0])], truth)
    assert second_first["HL-min-Fair"]["HL-Hit1"] == 100.0


def test_no_saliency_omits_highlight_sections() -> None:
    truth = _three_range_truth()
    metrics = evaluate_submission([_pred(g["qid"], [[0, 8, 1.0]]) for g in truth], truth)
    assert list(metrics) == ["brief", "full", "long", "middle", "short"]
    assert list(metrics["brief"]) == [
        "MR-full-R1@0.5",
        "MR-full-R1@0.7",
        "MR-full-mAP",
        "MR-full-mAP@0.5",
        "MR-full-mAP@0.75",
        "MR-long-mAP",
        "MR-middle-mAP",
        "MR-short-mAP",
    ]


def test_unknown_keys_are_ignored() -> None:
    truth = _three_range_truth()
    plain = [_pred(g["qid"], [[0, 8, 1.0]], _saliency_from_ratings(g)) for g in truth]
    noisy = [
        {**p, "relevant_windows": [[1, 2]], "span_index_list": [[0, 3, 1.0]], "extra": None} for p in plain
    ]
    assert evaluate_submission(noisy, truth) == evaluate_submission(plain, truth)


def test_empty_window_list_is_ap_0_and_r1_miss() -> None:
    truth = [_gt(1, [[0, 10]]), _gt(2, [[0, 10]])]
    metrics = evaluate_submission([_pred(1, []), _pred(2, [[0, 10, 0.3]])], truth)
    assert metrics["full"]["MR-mAP"]["average"] == 50.0
    assert metrics["full"]["MR-R1"]["0.5"] == 50.0


def test_windows_without_scores_are_ranked_by_list_order() -> None:
    truth = [_gt(1, [[0, 10]])]
    metrics = evaluate_submission([_pred(1, [[20, 30], [0, 10]])], truth)
    assert metrics["full"]["MR-mAP"]["average"] == 50.0


# --------------------------------------------------------------------------- R1 / mIoU


def test_recall_and_miou_by_hand() -> None:
    """q1: first window [22,30] vs GT {[0,10],[20,30]} -> best IoU 8/10 = 0.8.
    q2: first window [10,30] vs GT [0,20] -> 10/30 = 1/3.
    R1@0.3 = 100, R1@0.5 = R1@0.7 = 50, mIoU = (0.8 + 1/3) / 2 = 56.67."""
    truth = [_gt(1, [[0, 10], [20, 30]]), _gt(2, [[0, 20]])]
    submission = [_pred(1, [[22, 30], [0, 10]]), _pred(2, [[10, 30, 0.2], [0, 20, 0.9]])]
    assert recall_and_miou(submission, truth) == {
        "R1@0.3": 100.0,
        "R1@0.5": 50.0,
        "R1@0.7": 50.0,
        "mIoU": 56.67,
    }


def test_recall_and_miou_custom_thresholds_and_errors() -> None:
    truth = [_gt(1, [[0, 10]])]
    submission = [_pred(1, [[0, 5]])]
    assert recall_and_miou(submission, truth, thresholds=(0.5, 0.6)) == {
        "R1@0.5": 100.0,
        "R1@0.6": 0.0,
        "mIoU": 50.0,
    }
    with pytest.raises(InputError, match="threshold"):
        recall_and_miou(submission, truth, thresholds=(1.5,))
    with pytest.raises(InputError, match="missing from the submission"):
        recall_and_miou(submission, [*truth, _gt(2, [[0, 1]])])
    assert recall_and_miou(submission, [*truth, _gt(2, [[0, 1]])], allow_subset=True)["mIoU"] == 50.0


# --------------------------------------------------------------------------- subsets


def test_allow_subset_restricts_ground_truth() -> None:
    truth = _three_range_truth()
    submission = [_pred(2, [[10, 30, 0.9]], _saliency_from_ratings(truth[1]))]
    with pytest.raises(InputError) as info:
        evaluate_submission(submission, truth)
    message = str(info.value)
    assert "2 ground truth qids missing from the submission" in message
    assert "1, 3" in message and "allow_subset=True" in message
    subset = evaluate_submission(submission, truth, allow_subset=True)
    assert _same_metrics(subset, evaluate_submission(submission, [truth[1]]))
    assert math.isnan(subset["brief"]["MR-short-mAP"])  # no query of the subset has a short window
    assert subset["middle"]["MR-mAP"]["average"] == 100.0


def test_unknown_submission_qid_is_an_error_even_with_allow_subset() -> None:
    truth = _three_range_truth()
    submission = [_pred(2, [[10, 30, 0.9]]), _pred(77, [[10, 30, 0.9]])]
    with pytest.raises(InputError, match=r"1 submission qids not in the ground truth \(e\.g\. 77\)"):
        evaluate_submission(submission, truth, allow_subset=True)


def test_qid_type_mismatch_gets_a_hint() -> None:
    truth = [_gt(1, [[0, 10]])]
    with pytest.raises(InputError, match="differ only in type"):
        evaluate_submission([{"qid": "1", "pred_relevant_windows": [[0, 10, 1.0]]}], truth)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("windows", "fragment"),
    [
        ([[0, "a", 0.5]], "pred_relevant_windows[0] must be [start, end, score] or [start, end] numbers"),
        ([[0, 10, 0.5], [1]], "pred_relevant_windows[1] must be"),
        ([[0, 10, 0.5, 1, 2]], "pred_relevant_windows[0] must be"),
        ([[True, 10, 0.5]], "pred_relevant_windows[0] must be"),
        ("0,10", "'pred_relevant_windows' must be a list of windows"),
        ([[10, 2, 0.5]], "pred_relevant_windows[0] has start > end"),
        ([[0, float("nan"), 0.5]], "pred_relevant_windows[0] has a NaN or infinite value"),
        ([[0, 10, 0.5], [0, 10, float("inf")]], "pred_relevant_windows[1] has a NaN or infinite value"),
        ([[0, 10, 0.5], [0, 10]], "mixes windows with and without a score"),
    ],
)
def test_bad_windows_name_qid_and_problem(windows: Any, fragment: str) -> None:
    truth = [_gt(42, [[0, 10]])]
    with pytest.raises(InputError) as info:
        evaluate_submission([_pred(42, windows)], truth)
    assert "qid 42" in str(info.value)
    assert fragment in str(info.value)


def test_missing_qid_and_missing_windows() -> None:
    truth = [_gt(1, [[0, 10]])]
    with pytest.raises(InputError, match=r"submission: record #2 has no 'qid'"):
        evaluate_submission([_pred(1, [[0, 10, 1.0]]), {"pred_relevant_windows": []}], truth)
    with pytest.raises(InputError, match=r"qid 1: missing 'pred_relevant_windows'"):
        evaluate_submission([{"qid": 1, "pred_saliency_scores": [0.0] * 20}], truth)
    with pytest.raises(InputError, match=r"record #1 has qid 1.5"):
        evaluate_submission([{"qid": 1.5, "pred_relevant_windows": []}], truth)
    with pytest.raises(InputError, match=r"record #1 is a list"):
        evaluate_submission([[1, 2]], truth)  # type: ignore[list-item]


def test_duplicate_qids() -> None:
    truth = [_gt(1, [[0, 10]])]
    with pytest.raises(InputError, match=r"submission: qid 1: duplicate qid \(records #1 and #2\)"):
        evaluate_submission([_pred(1, [[0, 10, 1.0]]), _pred(1, [[0, 10, 1.0]])], truth)
    with pytest.raises(InputError, match=r"ground truth: qid 1: duplicate qid"):
        evaluate_submission([_pred(1, [[0, 10, 1.0]])], [*truth, *truth])


def test_saliency_errors_name_qid() -> None:
    truth = [_gt(5, [[0, 10]], duration=20)]  # 10 clips
    with pytest.raises(
        InputError, match=r"^submission: qid 5: 7 pred_saliency_scores but the ground truth implies 10 clips"
    ):
        evaluate_submission([_pred(5, [[0, 10, 1.0]], [0.0] * 7)], truth)
    with pytest.raises(InputError, match=r"qid 5: pred_saliency_scores\[3\] must be a number"):
        evaluate_submission([_pred(5, [[0, 10, 1.0]], [0.0, 0.0, 0.0, None, *[0.0] * 6])], truth)  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"qid 5: pred_saliency_scores\[1\] is NaN or infinite"):
        evaluate_submission([_pred(5, [[0, 10, 1.0]], [0.0, float("nan"), *[0.0] * 8])], truth)
    second_bad = [_pred(5, [[0, 10, 1.0]], [0.0] * 10), _pred(6, [[0, 10, 1.0]], [0.0] * 12)]
    with pytest.raises(InputError, match=r"^submission: qid 6: 12 pred_saliency_scores"):
        evaluate_submission(second_bad, [*truth, _gt(6, [[0, 10]], duration=20)])
    mixed_truth = [*truth, _gt(6, [[0, 10]], duration=20)]
    mixed = [_pred(5, [[0, 10, 1.0]], [0.0] * 10), _pred(6, [[0, 10, 1.0]])]
    with pytest.raises(InputError, match=r"qid 6: missing 'pred_saliency_scores' while other lines have it"):
        evaluate_submission(mixed, mixed_truth)


def test_empty_saliency_is_an_input_error_even_for_a_one_clip_video() -> None:
    """A 2-3 s video has one evaluator clip, so an empty list is within the length tolerance;
    it then reached np.argmax and crashed with a bare ValueError instead of naming the query."""
    truth = [_gt(5, [[0, 2]], duration=3)]
    with pytest.raises(InputError, match=r"^submission: qid 5: 'pred_saliency_scores' is empty"):
        evaluate_submission([_pred(5, [[0, 2, 1.0]], [])], truth)


def test_ground_truth_errors_name_qid() -> None:
    sub = [_pred(3, [[0, 10, 1.0]], [0.0] * 20)]
    no_windows = {"qid": 3, "duration": 40}
    with pytest.raises(InputError, match=r"ground truth: qid 3: missing 'relevant_windows'"):
        evaluate_submission(sub, [no_windows])
    with pytest.raises(InputError, match=r"qid 3: 'relevant_windows' is empty"):
        evaluate_submission(sub, [_gt(3, [])])
    bad_clip = _gt(3, [[0, 10]], ratings={25: 4})
    with pytest.raises(
        InputError,
        match=r"^ground truth: qid 3: relevant_clip_ids\[0\] = 25 is not a clip index in \[0, 20\)",
    ):
        evaluate_submission(sub, [bad_clip])
    with pytest.raises(InputError, match=r"qid 3: 'duration' must be a finite number"):
        evaluate_submission(sub, [{**_gt(3, [[0, 10]]), "duration": "40"}])


def test_errors_are_value_errors_and_empty_inputs() -> None:
    with pytest.raises(ValueError, match="submission: no records"):
        evaluate_submission([], [_gt(1, [[0, 1]])])
    with pytest.raises(InputError, match="expected a list of records"):
        evaluate_submission({"qid": 1}, [_gt(1, [[0, 1]])])  # type: ignore[arg-type]


def test_evaluate_files_errors_name_the_file(tmp_path: Path) -> None:
    gt_path = tmp_path / "gt.jsonl"
    gt_path.write_text(json.dumps(_gt(1, [[0, 10]])) + "\n")
    sub_path = tmp_path / "sub.jsonl"
    sub_path.write_text(json.dumps(_pred(1, [[10, 0, 1.0]])) + "\n")
    with pytest.raises(InputError, match=rf"{sub_path}: qid 1: pred_relevant_windows\[0\] has start > end"):
        evaluate_files(sub_path, gt_path)
    sub_path.write_text('{"qid": 1,\n')
    with pytest.raises(InputError, match=rf"{sub_path}:1: malformed JSON"):
        evaluate_files(sub_path, gt_path)
    sub_path.write_text(json.dumps(_pred(1, [[0, 10, 1.0]])) + "\n")
    assert evaluate_files(sub_path, gt_path)["full"]["MR-mAP"]["average"] == 100.0


def test_metrics_table_rows() -> None:
    truth = _three_range_truth()
    metrics = evaluate_submission(
        [_pred(g["qid"], [[0, 8, 1.0]], _saliency_from_ratings(g)) for g in truth], truth
    )
    rows = metrics_table_rows(metrics)
    assert rows == list(metrics["brief"].items())
    assert rows[0][0] == "MR-full-R1@0.5" and rows[-1][0] == "HL-min-VeryGood-Hit1"
    with pytest.raises(InputError, match="no 'brief'"):
        metrics_table_rows({"full": {}})


# --------------------------------------------------------------------------- property tests


def _iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _reference_ap(preds: list[list[float]], gts: list[list[float]], threshold: float) -> float:
    """Plain-loop ActivityNet AP written from the rules in the module docstring."""
    ranked = sorted(preds[: ev.MAX_PRED_WINDOWS], key=lambda w: -w[2])
    taken = [False] * len(gts)
    hits = []
    for window in ranked:
        ious = [_iou(window, g) for g in gts]
        hit = False
        for j in sorted(range(len(gts)), key=lambda j: (-ious[j], -j)):
            if ious[j] < threshold:
                break
            if not taken[j]:
                taken[j] = hit = True
                break
        hits.append(hit)
    ap, prev_recall, found = 0.0, 0.0, 0
    precisions = [sum(hits[: k + 1]) / (k + 1) for k in range(len(hits))]
    for k, hit in enumerate(hits):
        found += hit
        recall = found / len(gts)
        ap += (recall - prev_recall) * max(precisions[k:])
        prev_recall = recall
    return ap


def _reference_saliency_ap(labels: list[int], scores: list[float]) -> float:
    """One operating point per distinct score; mean of interpolated precision at each new recall."""
    positives = sum(labels)
    if positives in (0, len(labels)):
        return float(positives == len(labels))
    points = []
    for cut in sorted(set(scores), reverse=True):
        chosen = [y for y, s in zip(labels, scores, strict=True) if s >= cut]
        points.append((sum(chosen) / positives, sum(chosen) / len(chosen)))
    terms, prev = [], 0.0
    for i, (recall, _) in enumerate(points):
        if recall != prev:
            terms.append(max(p for _, p in points[i:]))
        prev = recall
    return sum(terms) / len(terms)


_coord = st.integers(min_value=0, max_value=30).map(float)
_window = st.tuples(_coord, st.integers(min_value=0, max_value=12).map(float)).map(
    lambda t: [t[0], t[0] + t[1]]
)
_scored = st.tuples(_window, st.sampled_from([0.1, 0.5, 0.9])).map(lambda t: [*t[0], t[1]])
_query = st.tuples(
    st.lists(_scored, max_size=13), st.lists(_window.filter(lambda w: w[1] > w[0]), min_size=1, max_size=5)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_query, min_size=1, max_size=5))
def test_batched_ap_matches_plain_loop_reference(
    queries: list[tuple[list[list[float]], list[list[float]]]],
) -> None:
    predictions = [
        ev._Prediction(
            qid=i,
            windows=np.array([w[:2] for w in preds], dtype=np.float64).reshape(-1, 2),
            scores=np.array([w[2] for w in preds], dtype=np.float64),
            saliency=None,
        )
        for i, (preds, _) in enumerate(queries)
    ]
    gts = [np.array(g, dtype=np.float64) for _, g in queries]
    got = ev._average_precisions(predictions, gts)
    expected = [[_reference_ap(p, g, t) for t in ev.MR_IOU_THRESHOLDS] for p, g in queries]
    np.testing.assert_allclose(got, np.array(expected), atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=1), st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0])),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=1, max_value=3),
)
def test_saliency_ap_matches_reference(pairs: list[tuple[int, float]], columns: int) -> None:
    labels = [y for y, _ in pairs]
    scores = [s for _, s in pairs]
    label_matrix = np.array([[y ^ (c % 2) for c in range(columns)] for y in labels], dtype=bool)
    got = ev._saliency_average_precision(label_matrix, np.array(scores))
    expected = [_reference_saliency_ap([int(v) for v in label_matrix[:, c]], scores) for c in range(columns)]
    np.testing.assert_allclose(got, expected, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(_query, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_query_order_does_not_change_metrics(
    queries: list[tuple[list[list[float]], list[list[float]]]], rng: Any
) -> None:
    truth = [{"qid": i, "relevant_windows": g} for i, (_, g) in enumerate(queries)]
    submission = [_pred(i, p) for i, (p, _) in enumerate(queries)]
    shuffled = list(submission)
    rng.shuffle(shuffled)
    a = evaluate_submission(submission, truth)
    b = evaluate_submission(shuffled, truth)
    flat_a, flat_b = dict(_leaves(a)), dict(_leaves(b))
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        assert (math.isnan(value) and math.isnan(flat_b[key])) or abs(value - flat_b[key]) < 0.01 + 1e-9
