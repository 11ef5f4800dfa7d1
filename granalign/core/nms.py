"""Temporal IoU and greedy non-maximum suppression (GranAlign §3.4, last step).

Several generators (every query variant, the fused curve, contrast windows) propose nearly the
same window; without suppression the top-N list would be N copies of one moment and the
ranking metrics (mAP over IoU 0.5–0.95) would see no alternatives.
"""

from __future__ import annotations

import math

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


# Coordinates the grid of greedy_nms_all_indices handles: every window length, threshold ratio
# and start scaled by a power of two stays a normal float there, so its bounds are exact.
_GRID_MAX = 2.0**300
_GRID_MIN = 2.0**-300
_GRID_MIN_IOU = 2.0**-100
_GRID_SLACK = 1e-6  # relative: covers the few roundings of the IoU formula (about 5 ulp)


_Grid = dict[int, dict[int, list[tuple[float, float, float]]]]
"""length class -> start cell -> kept windows (start, end, length) filed there"""


def greedy_nms_all_indices(intervals: ArrayLike, scores: ArrayLike, iou_threshold: float) -> IntArray:
    """Every index :func:`greedy_nms_indices` keeps with no ``top_n`` cut, in the same order.

    Why not ``greedy_nms_indices(..., top_n=k)``: each round is O(k), and with no cut every
    survivor is a round, O(k²) when most windows survive, as in VTG-GPT's peer (noise curves
    give ~1,000 windows per query variant and lose few; seconds for 17 variants of an
    18,000-clip video).  IoU ≥ t needs lengths within a factor t and overlapping extents, so
    kept windows are filed by power-of-two length class and by start cell one class length
    wide, and a window is compared only with those in the classes and cells it could reach;
    kept windows overlap each other by less than t, so few share a cell.  The visiting order
    (score, then index) and the IoU float operations are those of ``greedy_nms_indices``, so
    the kept windows are the same.  Zero-length windows have IoU 0 with everything.  Beyond
    2^±300 (or below a threshold of 2^-100) the power-of-two scaling could round, so those
    inputs go through ``greedy_nms_indices`` itself.
    """
    _check_nms_args(iou_threshold, 1)
    spans = _as_intervals(intervals, "intervals")
    values = as_finite_array(scores, "scores", ndim=1)
    if values.shape[0] != spans.shape[0]:
        raise InputError(f"scores must have one value per window ({spans.shape[0]}), got {values.shape[0]}")
    k = spans.shape[0]
    if k == 0:
        return np.empty(0, dtype=np.int64)
    size = np.abs(spans)
    if float(iou_threshold) < _GRID_MIN_IOU or np.any((size > _GRID_MAX) | ((size > 0) & (size < _GRID_MIN))):
        return greedy_nms_indices(spans, values, iou_threshold, k)
    t = float(iou_threshold)
    t_low = t * (1.0 - _GRID_SLACK)
    starts: list[float] = spans[:, 0].tolist()
    ends: list[float] = spans[:, 1].tolist()
    grid: _Grid = {}
    kept: list[int] = []
    for i in np.argsort(-values, kind="stable").tolist():  # argmax order: best first, ties by index
        s, e = starts[i], ends[i]
        length = e - s
        if length > 0 and _suppressed(grid, s, e, length, t, t_low):
            continue
        kept.append(i)
        if length > 0:
            level = math.frexp(length)[1]  # length < 2**level
            cell = math.floor(math.ldexp(s, -level))
            grid.setdefault(level, {}).setdefault(cell, []).append((s, e, length))
    return np.asarray(kept, dtype=np.int64)


def _suppressed(grid: _Grid, s: float, e: float, length: float, t: float, t_low: float) -> bool:
    """Whether a kept window that can reach IoU ≥ ``t`` with ``[s, e]`` does.

    Its length is within [t·length, length/t] (``t_low`` adds rounding slack), so its class
    lies between those of the two bounds; it overlaps ``[s, e]``, so with a length below its
    class's 2**level its start lies in (s − 2**level, e): cells floor(s/2**level) − 1 to
    floor(e/2**level).  At a low threshold that range holds many cells, and a class's filed
    cells are scanned instead when they are fewer.
    """
    for level in range(math.frexp(length * t_low)[1], math.frexp(length / t_low)[1] + 1):
        filed = grid.get(level)
        if not filed:
            continue
        first = math.floor(math.ldexp(s, -level)) - 1
        last = math.floor(math.ldexp(e, -level))
        if last - first + 1 <= len(filed):
            near = [filed[c] for c in range(first, last + 1) if c in filed]
        else:
            near = [windows for c, windows in filed.items() if first <= c <= last]
        for windows in near:
            for ks, ke, klen in windows:
                # greedy_nms_indices' IoU, operation for operation
                inter = min(ke, e) - max(ks, s)
                inter = inter if inter > 0 else 0.0
                union = (klen + length) - inter
                if union > 0 and inter / union >= t:
                    return True
    return False


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
