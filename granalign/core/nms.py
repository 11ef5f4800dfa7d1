"""Temporal IoU and greedy non-maximum suppression (GranAlign §3.4, last step).

Several generators (every query variant, the fused curve, contrast windows) propose nearly the
same window; without suppression the top-N list would be N copies of one moment and the
ranking metrics (mAP over IoU 0.5–0.95) would see no alternatives.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from granalign.core.similarity import as_finite_array
from granalign.errors import ConfigError, InputError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _as_intervals(values: ArrayLike, name: str) -> FloatArray:
    array = as_finite_array(values, name)
    if array.ndim != 2 or array.shape[1] < 2:
        raise InputError(f"{name} must have shape (k, 2) [start, end], got {array.shape}")
    intervals = array[:, :2]
    if np.any(intervals[:, 1] < intervals[:, 0]):
        raise InputError(f"{name} has a window whose end is before its start")
    return intervals


def temporal_iou(a: ArrayLike, b: ArrayLike) -> FloatArray:
    """IoU of every interval of ``a`` (k, 2) with every interval of ``b`` (l, 2): (k, l).

    Intervals are continuous ``[start, end]``.  Two zero-length intervals have no union; their
    IoU is defined as 0 so that the ratio never becomes NaN.
    """
    x = _as_intervals(a, "a")
    y = _as_intervals(b, "b")
    inter = np.clip(
        np.minimum(x[:, None, 1], y[None, :, 1]) - np.maximum(x[:, None, 0], y[None, :, 0]), 0.0, None
    )
    union = (x[:, 1] - x[:, 0])[:, None] + (y[:, 1] - y[:, 0])[None, :] - inter
    iou: FloatArray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def greedy_nms_indices(intervals: ArrayLike, scores: ArrayLike, iou_threshold: float, top_n: int) -> IntArray:
    """Indices kept by greedy NMS, best first: the best remaining window is kept and every
    window with IoU ≥ ``iou_threshold`` against it is suppressed, until ``top_n`` are kept.

    Each round is one ``argmax`` (first index on ties, i.e. a stable order) and one vectorised
    IoU row, so the cost is O(top_n · k) with no sort: it stays
    fast on the hundreds of thousands of candidate windows of ``contrast_windows``.
    """
    _check_nms_args(iou_threshold, top_n)
    spans = _as_intervals(intervals, "intervals")
    values = as_finite_array(scores, "scores", ndim=1)
    if values.shape[0] != spans.shape[0]:
        raise InputError(f"scores must have one value per window ({spans.shape[0]}), got {values.shape[0]}")
    starts, ends = spans[:, 0], spans[:, 1]
    work = values.copy()
    kept: list[int] = []
    while len(kept) < top_n and work.size:
        best = int(np.argmax(work))  # first maximum: ties keep input order
        if work[best] == -np.inf:
            break
        kept.append(best)
        inter = np.clip(np.minimum(ends[best], ends) - np.maximum(starts[best], starts), 0.0, None)
        union = (ends[best] - starts[best]) + (ends - starts) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)  # as temporal_iou
        # Masking beats compacting the arrays: one round suppresses only a small share.
        work[iou >= iou_threshold] = -np.inf
        work[best] = -np.inf
    return np.asarray(kept, dtype=np.int64)


def _check_nms_args(iou_threshold: float, top_n: int) -> None:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, int | float | np.floating):
        raise ConfigError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if isinstance(top_n, bool) or not isinstance(top_n, int | np.integer) or top_n < 1:
        raise ConfigError(f"top_n must be an integer in [1, inf], got {top_n!r}")


def temporal_nms(windows: ArrayLike, iou_threshold: float, top_n: int) -> FloatArray:
    """Greedy NMS on (k, 3) ``[start, end, score]`` rows: at most ``top_n`` rows, best first.

    A window is suppressed if its IoU with an already kept window is ≥ ``iou_threshold``; ties
    in score keep input order, so the same input always gives the same output.
    """
    _check_nms_args(iou_threshold, top_n)
    rows = as_finite_array(windows, "windows")
    if rows.size == 0:
        return np.empty((0, 3))
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise InputError(f"windows must have shape (k, 3) [start, end, score], got {rows.shape}")
    keep = greedy_nms_indices(rows[:, :2], rows[:, 2], iou_threshold, top_n)
    return rows[keep] if keep.size else np.empty((0, 3))
