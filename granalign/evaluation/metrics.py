"""Moment-retrieval and highlight-detection metrics at parity with the official QVHighlights evaluator.

The numbers papers report on QVHighlights come from ``standalone_eval/eval.py`` of
jayleicn/moment_detr (copied verbatim into VTG-GPT and most follow-ups).  Comparing against
those papers is only meaningful if every rule of that script is reproduced, including the
ones that look accidental, so this module is a clean reimplementation (vectorised numpy, no
multiprocessing, no sklearn) whose output matches the official JSON number for number.  The
rules, and why each one is kept:

Moment retrieval (MR), per length range:

* IoU thresholds are ``0.5, 0.55, ..., 0.95`` written as two-decimal literals: the official
  script rounds ``np.linspace`` to two decimals before comparing, so ``0.55`` here is the
  double nearest 0.55, not ``linspace``'s ``0.5499999999999999``.
* mAP keeps the *first* ten windows in submission order, then ranks those by score with a
  stable sort (Python's ``list.sort``), so tied scores keep submission order.  Each window is
  matched greedily, per threshold, to the unmatched GT window of highest IoU; ties in IoU go
  to the GT window listed *later* (the official code walks ``argsort()[::-1]``).  AP is the
  ActivityNet/VOC-2011 interpolated AP; mAP is the mean over queries, then thresholds.
* R1 uses the *first* window of the submission (list order, not the highest score), and the
  GT window with the highest IoU to it (the first one on ties).  Its IoU divides by the convex
  hull of the two windows, as the official paired IoU does; the hull equals the union whenever
  the windows overlap, and the IoU is 0 otherwise, so this only matters at the last bit.
* Ranges ``short`` (0, 10], ``middle`` (10, 30], ``long`` (30, 150] keep only the GT windows
  whose length falls in the range; a query left with none is skipped in that range (it counts
  neither as a hit nor as a miss).  Predicted windows are never filtered.  ``full`` keeps
  every GT window whatever its length.

Highlight detection (HL), for each minimum rating ``Fair`` (2), ``Good`` (3), ``VeryGood`` (4):

* The GT has ``int(duration / 2)`` two-second clips; unannotated clips are rated 0; a clip is
  positive for an annotator when that annotator rated it at least the minimum.
* HL-mAP: for each query and each of the 3 annotators, the VOC "interpolated precision at
  every new recall level" AP of the saliency scores (sklearn's ``precision_recall_curve``
  semantics: tied scores form one threshold, so a tie that recalls several clips at once is
  one recall level).  An all-positive annotator scores 1 and an all-negative one 0.  The mean
  is over queries x annotators.
* HL-Hit1: the clip with the highest saliency (the first on ties, ``np.argmax``) is a hit when
  any annotator rated it at least the minimum.
* Saliency lists are truncated or zero-padded to the GT clip count, as the official script
  does; this matters because real feature extractors often yield one clip fewer than
  ``int(duration / 2)`` (13 queries of the official sample submission do).  A length that
  differs by more than :data:`SALIENCY_LENGTH_TOLERANCE` clips is rejected instead, since it
  almost always means scores for the wrong video or the wrong clip length.

All reported values are percentages rounded to two decimals (``float(f"{x:.2f}")``, exactly as
the official script formats them).

Deliberate departures, all in cases where the official script crashes or is undefined rather
than in cases it scores: malformed input raises :class:`InputError` naming the query; a query
with an empty window list scores AP 0 and an R1 miss (official: ``IndexError``); a length range
with no query reports NaN (official: ``TypeError``); the IoU of two zero-length windows is 0
(official: NaN, which its matcher then counts as a hit).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from granalign.core.moments import positive_seconds
from granalign.errors import InputError
from granalign.io.jsonl import read_jsonl

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
Qid = int | str
Record = Mapping[str, Any]

MR_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
"""Two-decimal literals, as the official script compares against (see the module docstring)."""

MAX_PRED_WINDOWS = 10
"""The official mAP only looks at the first ten predicted windows of a query."""

LENGTH_RANGES: tuple[tuple[str, float, float], ...] = (
    ("short", 0.0, 10.0),
    ("middle", 10.0, 30.0),
    ("long", 30.0, 150.0),
)
"""GT window length ranges ``(low, high]`` in seconds; ``full`` is everything, unfiltered."""

HL_MIN_RATINGS: tuple[tuple[str, int], ...] = (("Fair", 2), ("Good", 3), ("VeryGood", 4))
"""Minimum annotator rating (0..4) for a clip to count as a highlight."""

CLIP_SECONDS = 2
NUM_ANNOTATORS = 3

SALIENCY_LENGTH_TOLERANCE = 1
"""How many clips a saliency list may differ from ``int(duration / 2)`` before it is an error."""

DEFAULT_RECALL_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)


# --------------------------------------------------------------------------- parsed inputs


@dataclass(frozen=True)
class _Prediction:
    """One submission line, validated: windows in submission order and their scores."""

    qid: Qid
    windows: FloatArray  # (n, 2)
    scores: FloatArray  # (n,)
    saliency: FloatArray | None  # (clips,) or None when the line has no saliency


@dataclass(frozen=True)
class _Padded:
    """Ragged per-query window lists packed into one array so numpy can batch over queries."""

    windows: FloatArray  # (Q, N, 2); padding rows are 0
    mask: BoolArray  # (Q, N); True for real windows


# --------------------------------------------------------------------------- validation


def _is_number(value: object) -> bool:
    """JSON numbers only: ``bool`` is an ``int`` subclass but never a valid time or score."""
    kind = type(value)
    if kind is float or kind is int:  # fast path: the ABC check below dominates validation time
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _all_numbers(values: Iterable[object]) -> bool:
    """Whether every element passes :func:`_is_number` (checked by type set first, for speed)."""
    values = list(values)
    return set(map(type, values)) <= {int, float} or all(_is_number(v) for v in values)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(label: str, qid: Qid) -> str:
    return f"{label}: qid {qid!r}"


def _record_qid(record: object, label: str, position: int) -> Qid:
    """The ``qid`` of the ``position``-th record (1-based), which must be an int or a string."""
    if not isinstance(record, Mapping):
        raise InputError(f"{label}: record #{position} is a {type(record).__name__}, expected an object")
    if "qid" not in record:
        raise InputError(f"{label}: record #{position} has no 'qid'")
    qid = record["qid"]
    if isinstance(qid, bool) or not isinstance(qid, int | str):
        raise InputError(
            f"{label}: record #{position} has qid {_short_repr(qid)}, expected an int or a string"
        )
    return qid


def _index_by_qid(records: Iterable[object], label: str) -> dict[Qid, Record]:
    """Map qid -> record in input order; a repeated qid is an error (the official dict keeps the last)."""
    if isinstance(records, str | bytes | Mapping):
        raise InputError(f"{label}: expected a list of records, got {type(records).__name__}")
    indexed: dict[Qid, Record] = {}
    first_seen: dict[Qid, int] = {}
    for position, record in enumerate(records, start=1):
        qid = _record_qid(record, label, position)
        if qid in indexed:
            raise InputError(
                f"{_where(label, qid)}: duplicate qid (records #{first_seen[qid]} and #{position})"
            )
        assert isinstance(record, Mapping)
        indexed[qid] = record
        first_seen[qid] = position
    if not indexed:
        raise InputError(f"{label}: no records")
    return indexed


def _window_list(
    raw: object, where: str, field: str, *, allow_score: bool
) -> tuple[FloatArray, FloatArray | None]:
    """Validate a list of ``[start, end]`` (or ``[start, end, score]``) windows.

    Returns the ``(n, 2)`` windows and the ``(n,)`` scores, or ``None`` when no window carries a
    score; a list mixing both forms is rejected because its ranking would be ambiguous.
    """
    if not isinstance(raw, list | tuple):
        raise InputError(f"{where}: '{field}' must be a list of windows, got {type(raw).__name__}")
    shape = "[start, end, score] or [start, end]" if allow_score else "[start, end]"
    lengths = {3, 2} if allow_score else {2}
    for i, window in enumerate(raw):
        if not (isinstance(window, list | tuple) and len(window) in lengths and _all_numbers(window)):
            raise InputError(f"{where}: {field}[{i}] must be {shape} numbers, got {_short_repr(window)}")
    if not raw:
        return np.zeros((0, 2), dtype=np.float64), None
    if len({len(window) for window in raw}) > 1:
        raise InputError(f"{where}: '{field}' mixes windows with and without a score")
    values = np.array(raw, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{where}: {field}[{i}] has a NaN or infinite value: {_short_repr(raw[i])}")
    backwards = np.flatnonzero(values[:, 0] > values[:, 1])
    if backwards.size:
        i = int(backwards[0])
        raise InputError(f"{where}: {field}[{i}] has start > end: {_short_repr(raw[i])}")
    scores = values[:, 2].copy() if values.shape[1] == 3 else None
    return np.ascontiguousarray(values[:, :2]), scores


def _number_list(raw: object, where: str, field: str) -> FloatArray:
    """Validate a flat list of finite numbers (saliency scores)."""
    if not isinstance(raw, list | tuple):
        raise InputError(f"{where}: '{field}' must be a list of numbers, got {type(raw).__name__}")
    if not _all_numbers(raw):
        i, value = next((i, v) for i, v in enumerate(raw) if not _is_number(v))
        raise InputError(f"{where}: {field}[{i}] must be a number, got {_short_repr(value)}")
    values = np.array(raw, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(f"{where}: {field}[{int(bad[0])}] is NaN or infinite")
    return values


def _prediction(record: Record, label: str, qid: Qid) -> _Prediction:
    """Parse one submission line; windows without scores are ranked by list order."""
    where = _where(label, qid)
    if "pred_relevant_windows" not in record:
        raise InputError(f"{where}: missing 'pred_relevant_windows'")
    windows, scores = _window_list(
        record["pred_relevant_windows"], where, "pred_relevant_windows", allow_score=True
    )
    if scores is None:
        scores = np.arange(len(windows), 0, -1, dtype=np.float64)
    saliency = None
    if "pred_saliency_scores" in record:
        saliency = _number_list(record["pred_saliency_scores"], where, "pred_saliency_scores")
        if not saliency.size:  # no top clip for Hit@1 (the official np.argmax raises too)
            raise InputError(f"{where}: 'pred_saliency_scores' is empty")
    return _Prediction(qid=qid, windows=windows, scores=scores, saliency=saliency)


def _gt_windows(record: Record, label: str, qid: Qid) -> FloatArray:
    """The GT windows of a query; an empty list has no defined AP or R1, so it is an error."""
    where = _where(label, qid)
    if "relevant_windows" not in record:
        raise InputError(f"{where}: missing 'relevant_windows' (test-split annotations cannot be scored)")
    windows, _ = _window_list(record["relevant_windows"], where, "relevant_windows", allow_score=False)
    if len(windows) == 0:
        raise InputError(f"{where}: 'relevant_windows' is empty")
    return windows


def _clip_count(record: Record, where: str) -> int:
    """``int(duration / 2)``: the official clip count, truncating a trailing partial clip."""
    duration = record.get("duration")
    seconds = float(duration) if isinstance(duration, numbers.Real) and _is_number(duration) else np.nan
    if not np.isfinite(seconds):
        raise InputError(f"{where}: 'duration' must be a finite number, got {_short_repr(duration)}")
    clips = int(seconds / CLIP_SECONDS)
    if clips <= 0:
        raise InputError(f"{where}: duration {duration!r} is shorter than one {CLIP_SECONDS}s clip")
    return clips


def _clip_ratings(record: Record, label: str, qid: Qid) -> FloatArray:
    """``(clips, 3)`` annotator ratings for every clip of the video; unannotated clips are 0."""
    where = _where(label, qid)
    clips = _clip_count(record, where)
    clip_ids = record.get("relevant_clip_ids")
    ratings = record.get("saliency_scores")
    if not isinstance(clip_ids, list | tuple) or not isinstance(ratings, list | tuple):
        raise InputError(f"{where}: highlight metrics need 'relevant_clip_ids' and 'saliency_scores' lists")
    if len(clip_ids) != len(ratings):
        raise InputError(
            f"{where}: {len(clip_ids)} relevant_clip_ids but {len(ratings)} saliency_scores rows"
        )
    for i, clip in enumerate(clip_ids):
        if isinstance(clip, bool) or not isinstance(clip, int) or not 0 <= clip < clips:
            raise InputError(
                f"{where}: relevant_clip_ids[{i}] = {_short_repr(clip)} is not a clip index in [0, {clips})"
            )
    for i, row in enumerate(ratings):
        if not (isinstance(row, list | tuple) and len(row) == NUM_ANNOTATORS and _all_numbers(row)):
            raise InputError(
                f"{where}: saliency_scores[{i}] must be {NUM_ANNOTATORS} numbers, got {_short_repr(row)}"
            )
    full = np.zeros((clips, NUM_ANNOTATORS), dtype=np.float64)
    if clip_ids:
        full[np.asarray(clip_ids, dtype=np.intp)] = np.asarray(ratings, dtype=np.float64)
    return full


# --------------------------------------------------------------------------- query matching


def _qid_examples(qids: Sequence[Qid], count: int = 5) -> str:
    shown = ", ".join(repr(q) for q in qids[:count])
    return shown + (", ..." if len(qids) > count else "")


def _type_hint(missing: Sequence[Qid], extra: Sequence[Qid]) -> str:
    """Point out the common int-vs-string qid mix-up, which otherwise looks like total mismatch."""
    if {str(q) for q in missing} & {str(q) for q in extra}:
        return " (some qids differ only in type, e.g. 12 vs '12': write qids as in the ground truth)"
    return ""


def _matched_ground_truth(
    pred_qids: Sequence[Qid],
    truth: Mapping[Qid, Record],
    *,
    allow_subset: bool,
    labels: tuple[str, str],
) -> dict[Qid, Record]:
    """The GT records of the submission's queries, in submission order.

    A submission qid unknown to the GT is always an error (it cannot be scored).  GT queries the
    submission lacks are an error too unless ``allow_subset`` (a ``--limit`` run), because
    silently scoring a subset would report a number not comparable with the literature.
    """
    submission_label, truth_label = labels
    pred_set = set(pred_qids)
    extra = [q for q in pred_qids if q not in truth]
    missing = [] if allow_subset else [q for q in truth if q not in pred_set]
    if extra or missing:
        parts = []
        if missing:
            examples = _qid_examples(missing)
            parts.append(f"{len(missing)} ground truth qids missing from the submission (e.g. {examples})")
        if extra:
            parts.append(
                f"{len(extra)} submission qids not in the ground truth (e.g. {_qid_examples(extra)})"
            )
        advice = "" if allow_subset else "; pass allow_subset=True to score a subset of the queries"
        # the error is about both inputs, so it names both (labels may be file names)
        where = submission_label if truth_label == "ground truth" else f"{submission_label} vs {truth_label}"
        raise InputError(
            f"{where}: query sets differ: {'; '.join(parts)}{_type_hint(missing, extra)}{advice}"
        )
    return {q: truth[q] for q in pred_qids}


def _predictions_and_truth(
    submission: Iterable[object],
    ground_truth: Iterable[object],
    *,
    allow_subset: bool,
    labels: tuple[str, str],
) -> tuple[list[_Prediction], dict[Qid, Record]]:
    submission_label, truth_label = labels
    sub_records = _index_by_qid(submission, submission_label)
    truth = _matched_ground_truth(
        list(sub_records), _index_by_qid(ground_truth, truth_label), allow_subset=allow_subset, labels=labels
    )
    predictions = [_prediction(record, submission_label, qid) for qid, record in sub_records.items()]
    return predictions, truth


# --------------------------------------------------------------------------- IoU


def _pad(window_lists: Sequence[FloatArray]) -> _Padded:
    """Stack ragged ``(n_i, 2)`` arrays into ``(Q, max n, 2)`` plus a validity mask."""
    width = max([1, *(len(w) for w in window_lists)])
    windows = np.zeros((len(window_lists), width, 2), dtype=np.float64)
    mask = np.zeros((len(window_lists), width), dtype=bool)
    for i, w in enumerate(window_lists):
        windows[i, : len(w)] = w
        mask[i, : len(w)] = True
    return _Padded(windows=windows, mask=mask)


def _cross_iou(a: _Padded, b: _Padded) -> FloatArray:
    """``(Q, Na, Nb)`` IoU of every window of ``a`` with every window of ``b`` of the same query.

    Union is ``len_a + len_b - intersection`` (the official cross IoU, same operation order).
    A pair involving padding is ``-inf`` so it never passes a threshold and sorts last.  Two
    zero-length windows have IoU 0 (the official gives NaN, which its matcher counts as a hit).
    """
    a_start, a_end = a.windows[:, :, None, 0], a.windows[:, :, None, 1]
    b_start, b_end = b.windows[:, None, :, 0], b.windows[:, None, :, 1]
    inter = np.clip(np.minimum(a_end, b_end) - np.maximum(a_start, b_start), 0.0, None)
    union = (a_end - a_start) + (b_end - b_start) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    real = a.mask[:, :, None] & b.mask[:, None, :]
    return np.where(real, iou, -np.inf)


def _hull_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """Paired ``(Q, 2)`` x ``(Q, 2)`` IoU over the convex hull, as the official R1 computes it.

    Equal to the true IoU when the windows overlap; both are 0 when they do not.
    """
    inter = np.maximum(0.0, np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]))
    hull = np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 0], b[:, 0])
    iou: FloatArray = np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)
    return iou


def _first_windows(predictions: Sequence[_Prediction]) -> tuple[FloatArray, BoolArray]:
    """``(Q, 2)`` first-listed window of each query (the official "top-1") and whether it exists."""
    present = np.array([len(p.windows) > 0 for p in predictions], dtype=bool)
    first = np.array([p.windows[0] if len(p.windows) else (0.0, 0.0) for p in predictions], dtype=np.float64)
    return first.reshape(len(predictions), 2), present


# --------------------------------------------------------------------------- moment retrieval


def _ranked_top_windows(prediction: _Prediction) -> FloatArray:
    """The first :data:`MAX_PRED_WINDOWS` windows, re-ranked by score (stable: ties keep list order).

    Truncation happens *before* sorting because that is what the official script does; for
    submissions already sorted by score (the norm) the order of the two steps is irrelevant.
    """
    windows = prediction.windows[:MAX_PRED_WINDOWS]
    order = np.argsort(-prediction.scores[:MAX_PRED_WINDOWS], kind="stable")
    return windows[order]


def _gt_rank_by_iou(iou: FloatArray) -> IntArray:
    """GT indices per prediction, by decreasing IoU; ties go to the *later* GT window.

    The official matcher walks ``tiou.argsort()[::-1]``; numpy's argsort keeps ties in index order
    on short arrays (up to 16 elements; longer ones use an unstable introsort/SIMD path, so there
    the official tie order is platform-dependent), so reversing it visits equal-IoU GT windows from
    the last to the first.  Ties only matter in rare adjacent-GT cases (a window covering two
    abutting GT windows of equal length has IoU 0.5 with both).
    """
    gt_index = np.broadcast_to(np.arange(iou.shape[-1]), iou.shape)
    return np.lexsort((-gt_index, -iou), axis=-1).astype(np.intp)


def _greedy_true_positives(iou: FloatArray, thresholds: FloatArray) -> BoolArray:
    """``(Q, T, P)``: is the p-th ranked prediction a true positive at threshold t?

    ActivityNet matching: predictions in rank order each take the unmatched GT window of highest
    IoU if that IoU reaches the threshold.  Because GT windows are visited by decreasing IoU,
    "first unmatched GT with IoU >= t" is the official walk; it is computed for all queries and
    thresholds at once, leaving only the inherently sequential loop over prediction ranks.
    """
    n_queries, n_preds, n_gt = iou.shape
    ranks = _gt_rank_by_iou(iou)
    matched = np.zeros((n_queries, thresholds.size, n_gt), dtype=bool)
    true_pos = np.zeros((n_queries, thresholds.size, n_preds), dtype=bool)
    for p in range(n_preds):
        rank = ranks[:, p, :]  # (Q, G)
        ranked_iou = np.take_along_axis(iou[:, p, :], rank, axis=1)  # (Q, G)
        ranked_free = ~np.take_along_axis(matched, rank[:, None, :], axis=2)  # (Q, T, G)
        eligible = ranked_free & (ranked_iou[:, None, :] >= thresholds[None, :, None])
        hit = eligible.any(axis=2)  # (Q, T)
        chosen = np.take_along_axis(rank, eligible.argmax(axis=2), axis=1)  # (Q, T) GT index
        q_idx, t_idx = np.nonzero(hit)
        matched[q_idx, t_idx, chosen[q_idx, t_idx]] = True
        true_pos[:, :, p] = hit
    return true_pos


def _interpolated_ap(true_pos: BoolArray, valid: BoolArray, num_gt: FloatArray) -> FloatArray:
    """``(Q, T)`` VOC-2011 / ActivityNet interpolated AP from ``(Q, T, P)`` true positives.

    Precision is made monotone from the right (with sentinels: precision 0 at recall 0 and 1)
    and integrated over recall steps.  Padding ranks get precision 0 and no recall step, which
    leaves each query's AP exactly as if its list had never been padded.
    """
    n_queries, n_thresholds, n_preds = true_pos.shape
    tp_count = np.cumsum(true_pos, axis=2, dtype=np.float64)
    precision = np.where(valid[:, None, :], tp_count / np.arange(1, n_preds + 1), 0.0)
    recall = tp_count / num_gt[:, None, None]
    edge = np.zeros((n_queries, n_thresholds, 1))
    precision = np.concatenate([edge, precision, edge], axis=2)
    recall = np.concatenate([edge, recall, edge + 1.0], axis=2)
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=2), axis=2), axis=2)
    ap: FloatArray = np.sum(np.diff(recall, axis=2) * envelope[:, :, 1:], axis=2)
    return ap


def _average_precisions(predictions: Sequence[_Prediction], gt_windows: Sequence[FloatArray]) -> FloatArray:
    """``(Q, T)`` AP of each query at each :data:`MR_IOU_THRESHOLDS` threshold."""
    preds = _pad([_ranked_top_windows(p) for p in predictions])
    gts = _pad(gt_windows)
    iou = _cross_iou(preds, gts)
    thresholds = np.array(MR_IOU_THRESHOLDS, dtype=np.float64)
    true_pos = _greedy_true_positives(iou, thresholds)
    return _interpolated_ap(true_pos, preds.mask, gts.mask.sum(axis=1).astype(np.float64))


def _official_top1_iou(predictions: Sequence[_Prediction], gt_windows: Sequence[FloatArray]) -> FloatArray:
    """``(Q,)`` IoU of the first-listed window with its best GT window (official R1 rule)."""
    first, present = _first_windows(predictions)
    gts = _pad(gt_windows)
    cross = _cross_iou(_Padded(first[:, None, :], present[:, None]), gts)[:, 0, :]
    # A query without windows has an all -inf row; argmax then picks GT 0 and the IoU is zeroed below.
    best = np.argmax(cross, axis=1)
    best_gt = gts.windows[np.arange(len(predictions)), best]
    return np.where(present, _hull_iou(first, best_gt), 0.0)


def _percent(value: float | np.floating[Any]) -> float:
    """The official formatting: ``float(f"{100 * v:.2f}")`` (NaN stays NaN)."""
    return float(f"{100 * float(value):.2f}")


def _threshold_key(threshold: float) -> str:
    return str(threshold)


def _moment_retrieval_section(
    predictions: Sequence[_Prediction], gt_windows: Sequence[FloatArray]
) -> dict[str, dict[str, float]]:
    """``{"MR-mAP": {...}, "MR-R1": {...}}`` for one length range (NaN when it has no query)."""
    keys = [_threshold_key(t) for t in MR_IOU_THRESHOLDS]
    if not predictions:
        nan = float("nan")
        return {"MR-mAP": {**dict.fromkeys(keys, nan), "average": nan}, "MR-R1": dict.fromkeys(keys, nan)}
    ap_per_threshold = _average_precisions(predictions, gt_windows).mean(axis=0)
    top1_iou = _official_top1_iou(predictions, gt_windows)
    thresholds = np.array(MR_IOU_THRESHOLDS, dtype=np.float64)
    recall = (top1_iou[:, None] >= thresholds[None, :]).mean(axis=0)
    mean_ap = {k: _percent(v) for k, v in zip(keys, ap_per_threshold, strict=True)}
    mean_ap["average"] = _percent(np.mean(ap_per_threshold))
    return {"MR-mAP": mean_ap, "MR-R1": {k: _percent(v) for k, v in zip(keys, recall, strict=True)}}


def _windows_in_range(windows: FloatArray, low: float, high: float) -> FloatArray:
    lengths = windows[:, 1] - windows[:, 0]
    return windows[(lengths > low) & (lengths <= high)]


def _moment_retrieval_metrics(
    predictions: Sequence[_Prediction], gt_windows: Mapping[Qid, FloatArray]
) -> dict[str, dict[str, dict[str, float]]]:
    """MR sections for ``short``/``middle``/``long`` and ``full`` (GT windows unfiltered)."""
    sections: dict[str, dict[str, dict[str, float]]] = {}
    for name, low, high in LENGTH_RANGES:
        kept = [(p, _windows_in_range(gt_windows[p.qid], low, high)) for p in predictions]
        kept = [(p, w) for p, w in kept if len(w)]
        sections[name] = _moment_retrieval_section([p for p, _ in kept], [w for _, w in kept])
    sections["full"] = _moment_retrieval_section(predictions, [gt_windows[p.qid] for p in predictions])
    return sections


# --------------------------------------------------------------------------- highlight detection


def _aligned_saliency(saliency: FloatArray, clips: int, where: str) -> FloatArray:
    """Truncate or zero-pad ``saliency`` to ``clips`` entries, as the official AP does."""
    if abs(len(saliency) - clips) > SALIENCY_LENGTH_TOLERANCE:
        raise InputError(
            f"{where}: {len(saliency)} pred_saliency_scores but the ground truth implies {clips} clips "
            f"(int(duration / {CLIP_SECONDS})); at most {SALIENCY_LENGTH_TOLERANCE} clip of difference "
            "is tolerated"
        )
    aligned = np.zeros(clips, dtype=np.float64)
    n = min(clips, len(saliency))
    aligned[:n] = saliency[:n]
    return aligned


def saliency_on_official_grid(saliency: Sequence[float], clip_len: float, duration: float) -> list[float]:
    """A per-clip saliency curve on another clip grid, averaged onto the evaluator's 2-s clips.

    The submission format (moment_detr's) has no clip length: ``pred_saliency_scores`` are
    :data:`CLIP_SECONDS`-second clips, ``int(duration / 2)`` of them.  A video captioned every
    4 s (or 1 s) yields one score per 4-s (1-s) clip; each 2-s clip gets the mean of the curve
    over its own 2 s (each source clip weighted by its overlap), so the highlight metrics rank
    the same moments and no fine clip is dropped.  On the 2-s grid the list is returned as it
    is (the graph already gives one score per evaluator clip).
    """
    values = np.asarray(saliency, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise InputError(f"saliency must be a non-empty list of finite clip scores, got {values.size} values")
    clip_len = positive_seconds("clip_len", clip_len)
    duration = positive_seconds("duration", duration)
    if clip_len == CLIP_SECONDS:
        return [float(v) for v in values]
    edges = np.arange(max(1, int(duration / CLIP_SECONDS)) + 1, dtype=np.float64) * CLIP_SECONDS
    means = np.diff(_step_integral(values, clip_len, edges)) / CLIP_SECONDS
    return [float(v) for v in np.round(means, 9)]  # cumulative sums differ in the last bits: equal means tie


def _step_integral(values: FloatArray, clip_len: float, times: FloatArray) -> FloatArray:
    """∫₀ᵗ of the step curve ``values[i]`` on ``[i·clip_len, (i+1)·clip_len)`` at each time t
    (the last clip's value continues past the end, as a partial last clip's score would)."""
    cumulative = np.concatenate(([0.0], np.cumsum(values))) * clip_len
    index = np.minimum((times // clip_len).astype(np.int64), values.size - 1)
    area: FloatArray = cumulative[index] + values[index] * (times - index * clip_len)
    return area


def _saliency_average_precision(labels: BoolArray, scores: FloatArray) -> FloatArray:
    """``(K,)`` AP of ``scores`` for each column of ``(C, K)`` binary ``labels``.

    Reproduces the official ``get_ap`` on sklearn's ``precision_recall_curve``: one operating
    point per distinct score (ties enter together), precision made monotone towards higher
    recall, then the *unweighted* mean over the points where recall grows.  Because the mean is
    unweighted, a tie that recalls two clips at once counts once, not twice.
    """
    n_clips = labels.shape[0]
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_labels = scores[order], labels[order].astype(np.float64)
    group_end = np.append(np.flatnonzero(ranked_scores[1:] != ranked_scores[:-1]), n_clips - 1)
    tp = np.cumsum(ranked_labels, axis=0)[group_end]  # (G, K)
    precision = tp / (group_end + 1)[:, None]
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=0), axis=0), axis=0)
    gained = np.diff(tp, axis=0, prepend=0.0) > 0
    steps = gained.sum(axis=0)
    ap: FloatArray = np.divide(
        (envelope * gained).sum(axis=0), steps, out=np.zeros(labels.shape[1]), where=steps > 0
    )
    positives = ranked_labels.sum(axis=0)
    # get_ap's special case: a single-valued label column scores 1 if all positive, else 0.
    return np.where(positives == n_clips, 1.0, np.where(positives == 0, 0.0, ap))


def _top_clip_hits(saliency: FloatArray, labels: BoolArray) -> FloatArray:
    """``(L,)`` Hit@1 per rating level: is the top-scored clip positive for any annotator?

    ``argmax`` takes the first maximum and runs on the *unaligned* list, as the official does,
    so a top clip beyond the GT's clip count is a miss.
    """
    top = int(np.argmax(saliency))
    if top >= labels.shape[0]:
        return np.zeros(labels.shape[1], dtype=np.float64)
    hits: FloatArray = labels[top].any(axis=-1).astype(np.float64)
    return hits


def _highlight_metrics(
    predictions: Sequence[_Prediction], truth: Mapping[Qid, Record], labels: tuple[str, str]
) -> dict[str, dict[str, float]]:
    """``HL-min-<level>`` sections: HL-mAP (mean over queries x annotators) and HL-Hit1."""
    minimums = np.array([level for _, level in HL_MIN_RATINGS], dtype=np.float64)
    n_levels = len(HL_MIN_RATINGS)
    ap = np.zeros((n_levels, len(predictions), NUM_ANNOTATORS))
    hits = np.zeros((n_levels, len(predictions)))
    for i, pred in enumerate(predictions):
        assert pred.saliency is not None
        ratings = _clip_ratings(truth[pred.qid], labels[1], pred.qid)  # (C, 3)
        positive = ratings[:, None, :] >= minimums[None, :, None]  # (C, L, 3)
        scores = _aligned_saliency(pred.saliency, len(ratings), _where(labels[0], pred.qid))
        flat_ap = _saliency_average_precision(positive.reshape(len(ratings), -1), scores)
        ap[:, i, :] = flat_ap.reshape(n_levels, NUM_ANNOTATORS)
        hits[:, i] = _top_clip_hits(pred.saliency, positive)
    return {
        f"HL-min-{name}": {"HL-mAP": _percent(np.mean(ap[k])), "HL-Hit1": _percent(np.mean(hits[k]))}
        for k, (name, _) in enumerate(HL_MIN_RATINGS)
    }


def _has_saliency(predictions: Sequence[_Prediction], label: str) -> bool:
    """Whether to score highlights: all lines carry saliency, or none (mixed is an error)."""
    without = [p.qid for p in predictions if p.saliency is None]
    if len(without) not in (0, len(predictions)):
        raise InputError(
            f"{_where(label, without[0])}: missing 'pred_saliency_scores' while other lines have it "
            f"({len(without)} of {len(predictions)} lines lack it)"
        )
    return not without


# --------------------------------------------------------------------------- assembly


def _brief(
    moment: Mapping[str, Mapping[str, Mapping[str, float]]], highlight: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """The official ``brief`` block.

    MR entries are sorted by key, as the official script sorts them (hence ``R1`` before
    ``mAP``: uppercase sorts first); HL entries follow in Fair/Good/VeryGood order, mAP then Hit1.
    """
    mr = {
        "MR-full-mAP": moment["full"]["MR-mAP"]["average"],
        "MR-full-mAP@0.5": moment["full"]["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": moment["full"]["MR-mAP"]["0.75"],
        "MR-full-R1@0.5": moment["full"]["MR-R1"]["0.5"],
        "MR-full-R1@0.7": moment["full"]["MR-R1"]["0.7"],
        "MR-short-mAP": moment["short"]["MR-mAP"]["average"],
        "MR-middle-mAP": moment["middle"]["MR-mAP"]["average"],
        "MR-long-mAP": moment["long"]["MR-mAP"]["average"],
    }
    brief = dict(sorted(mr.items()))
    for section, values in highlight.items():
        brief[f"{section}-mAP"] = values["HL-mAP"]
        brief[f"{section}-Hit1"] = values["HL-Hit1"]
    return brief


def _evaluate(
    submission: Iterable[object],
    ground_truth: Iterable[object],
    *,
    allow_subset: bool,
    labels: tuple[str, str],
) -> dict[str, Any]:
    predictions, truth = _predictions_and_truth(
        submission, ground_truth, allow_subset=allow_subset, labels=labels
    )
    gt_windows = {qid: _gt_windows(record, labels[1], qid) for qid, record in truth.items()}
    moment = _moment_retrieval_metrics(predictions, gt_windows)
    highlight = (
        _highlight_metrics(predictions, truth, labels) if _has_saliency(predictions, labels[0]) else {}
    )
    sections: dict[str, Any] = {**moment, **highlight}
    return {"brief": _brief(moment, highlight), **dict(sorted(sections.items()))}


# --------------------------------------------------------------------------- public API


def evaluate_submission(
    submission: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    allow_subset: bool = False,
    labels: tuple[str, str] = ("submission", "ground truth"),
) -> dict[str, Any]:
    """Score a QVHighlights submission exactly as the official ``standalone_eval/eval.py``.

    Returns ``{"brief", "HL-min-Fair", "HL-min-Good", "HL-min-VeryGood", "full", "long",
    "middle", "short"}`` in that order (the official output, keys sorted after ``brief``), every
    value a percentage rounded to two decimals.  The HL sections are omitted when the submission
    carries no ``pred_saliency_scores``, as the official script does.  Unknown keys in either
    input are ignored.

    ``allow_subset=True`` scores only the submission's queries (a ``--limit`` run); the numbers
    are then not comparable with full-split results.  See the module docstring for every rule.
    ``labels`` name the submission and the ground truth in errors (a CLI passes its files).
    """
    return _evaluate(submission, ground_truth, allow_subset=allow_subset, labels=labels)


def evaluate_files(
    submission_path: str | os.PathLike[str],
    gt_path: str | os.PathLike[str],
    *,
    allow_subset: bool = False,
) -> dict[str, Any]:
    """:func:`evaluate_submission` on two JSONL files; errors name the offending file."""
    submission = read_jsonl(submission_path)
    ground_truth = read_jsonl(gt_path)
    labels = (str(submission_path), str(gt_path))
    return _evaluate(submission, ground_truth, allow_subset=allow_subset, labels=labels)


def recall_and_miou(
    submission: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    thresholds: Sequence[float] = DEFAULT_RECALL_THRESHOLDS,
    allow_subset: bool = False,
    labels: tuple[str, str] = ("submission", "ground truth"),
) -> dict[str, float]:
    """Charades-STA / ActivityNet-Captions style ``R1@t`` and ``mIoU``, in percent (2 decimals).

    Convention: the top-1 window is the *first* window of ``pred_relevant_windows`` (submissions
    list windows best first; this is also the official QVHighlights R1 rule), and its IoU is
    taken with the GT window it overlaps best, so a query with several GT moments is answered
    correctly by finding any one of them.  IoU is the standard intersection over union (0 for two
    zero-length windows).  ``R1@t`` counts IoU ``>= t``; ``mIoU`` is the mean of those IoUs; a
    query with no predicted window counts as IoU 0.  Keys are ``"R1@<t>"`` then ``"mIoU"``.
    ``labels`` name the submission and the ground truth in errors, as in :func:`evaluate_submission`.
    """
    for t in thresholds:
        if not _is_number(t) or not 0.0 < float(t) <= 1.0:
            raise InputError(f"recall threshold {t!r} must be a number in (0, 1]")
    predictions, truth = _predictions_and_truth(
        submission, ground_truth, allow_subset=allow_subset, labels=labels
    )
    gts = _pad([_gt_windows(truth[p.qid], labels[1], p.qid) for p in predictions])
    first, present = _first_windows(predictions)
    best_iou = _cross_iou(_Padded(first[:, None, :], present[:, None]), gts)[:, 0, :].max(axis=1)
    best_iou = np.where(present, best_iou, 0.0)
    cutoffs = np.array([float(t) for t in thresholds], dtype=np.float64)
    recall = (best_iou[:, None] >= cutoffs[None, :]).mean(axis=0)
    result = {f"R1@{t}": _percent(r) for t, r in zip(thresholds, recall, strict=True)}
    result["mIoU"] = _percent(np.mean(best_iou))
    return result


@dataclass(frozen=True)
class PerQueryMetrics:
    """Per-query moment-retrieval values, in submission order, for paired comparisons.

    ``r1_05`` / ``r1_07``: 1.0 when the first-listed window reaches IoU 0.5 / 0.7 with a GT
    window (the official R1 rule), else 0.0.  ``ap``: the query's AP averaged over
    :data:`MR_IOU_THRESHOLDS` (the official rule).  ``100 · mean`` of each vector is the
    official ``MR-full-R1@0.5`` / ``MR-full-R1@0.7`` / ``MR-full-mAP`` before its two-decimal
    rounding, so a paired bootstrap over queries resamples exactly the reported numbers.
    ``longest_gt_s``: the query's longest ground-truth window in seconds, to break a comparison
    down by moment length (``granalign.evaluation.breakdown``).
    """

    qids: tuple[Qid, ...]
    r1_05: FloatArray
    r1_07: FloatArray
    ap: FloatArray
    longest_gt_s: FloatArray

    def metric(self, name: str) -> FloatArray:
        """One vector by its report name: ``R1@0.5``, ``R1@0.7`` or ``mAP``."""
        vectors = {"R1@0.5": self.r1_05, "R1@0.7": self.r1_07, "mAP": self.ap}
        if name not in vectors:
            raise InputError(f"unknown per-query metric {name!r}; choose one of {sorted(vectors)}")
        return vectors[name]


def per_query_metrics(
    submission: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    allow_subset: bool = False,
    label: str = "submission",
    gt_label: str = "ground truth",
) -> PerQueryMetrics:
    """The ``full`` moment-retrieval metrics of :func:`evaluate_submission`, one value per query.

    Same parsing, validation and matching code as the aggregate (so the means agree with it);
    a confidence interval needs the per-query values, which the official script never exposes.
    ``label`` names the submission in errors (a baseline file is not "the submission"),
    ``gt_label`` the ground truth.
    """
    labels = (label, gt_label)
    predictions, truth = _predictions_and_truth(
        submission, ground_truth, allow_subset=allow_subset, labels=labels
    )
    gt_windows = [_gt_windows(truth[p.qid], labels[1], p.qid) for p in predictions]
    if not predictions:
        raise InputError("per-query metrics need at least one query in the submission")
    top1_iou = _official_top1_iou(predictions, gt_windows)
    ap = _average_precisions(predictions, gt_windows).mean(axis=1)
    return PerQueryMetrics(
        qids=tuple(p.qid for p in predictions),
        r1_05=(top1_iou >= 0.5).astype(np.float64),
        r1_07=(top1_iou >= 0.7).astype(np.float64),
        ap=ap.astype(np.float64),
        longest_gt_s=np.array([float(np.max(w[:, 1] - w[:, 0])) for w in gt_windows], dtype=np.float64),
    )


def metrics_table_rows(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The ``brief`` entries of an :func:`evaluate_submission` result, in order, for a CLI table."""
    brief = metrics.get("brief")
    if not isinstance(brief, Mapping):
        raise InputError("metrics have no 'brief' section (expected the output of evaluate_submission)")
    return [(str(name), float(value)) for name, value in brief.items()]


__all__ = [
    "HL_MIN_RATINGS",
    "LENGTH_RANGES",
    "MAX_PRED_WINDOWS",
    "MR_IOU_THRESHOLDS",
    "SALIENCY_LENGTH_TOLERANCE",
    "PerQueryMetrics",
    "evaluate_files",
    "evaluate_submission",
    "metrics_table_rows",
    "per_query_metrics",
    "recall_and_miou",
    "saliency_on_official_grid",
]
