"""VTG-GPT's published proposal rule, reimplemented as the peer baseline (issue 13).

VTG-GPT (Xu et al., 2024; github.com/YoucanBaby/VTG-GPT, ``infer_qvhighlights.py``) turns
each query variant's min–max normalised caption similarities into windows with ``get_span``
and ranks the pooled windows with one NMS.  Running that rule on *our* curves (same captions,
embedder and query variants) in the same run is the fair peer for every table: a difference
then comes from what we do after fusion, not from the inputs.

The rule, per variant curve s (n clips, in [0, 1]):

1. histogram of s over [0, 1] in 10 bins; the threshold is the lower edge of the highest bin
   ``i`` with at least ``top_k = 8`` clips in bins ``i..9`` (0 when no bin qualifies);
2. clips with s strictly above it, merged while consecutive ones are at most ``gap = 6``
   clips apart (their ``moment - last <= gap``);
3. score of a run = ``λ · len / Σ len + (1 − λ) · mean`` with λ = 0.5, where len counts and
   mean averages the run's *above-threshold* clips only (bridged clips count for neither);
4. windows of all variants pooled (original query first), sorted by score (stable), then
   greedy NMS at IoU ≥ 0.95 where IoU is taken on the *clip indices* ``[start, end]`` with
   length ``end − start``: a one-clip window has length 0, so one-clip windows never suppress
   anything (their quirk, kept: it decides which duplicates survive);
5. clip ``i`` ↦ ``[i·clip_len, (e + 1)·clip_len]`` seconds (their ``[s*2, (e+1)*2]``).

Differences, all for curves their code cannot handle: a constant curve (min–max gives NaN
there) and a curve whose top clips all sit exactly on the threshold (no clip strictly above:
an IndexError there) propose nothing; no windows at all leaves the caller's fallback.  The code is
self-contained on purpose: our own rule in :mod:`granalign.core.proposals` is tuned, the peer must
not move with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from granalign.core.moments import clips_to_seconds, rounded_end
from granalign.core.nms import greedy_nms_all_indices
from granalign.core.proposals import as_score_curve
from granalign.core.similarity import as_finite_array, minmax_normalise
from granalign.errors import InputError

FloatArray = NDArray[np.float64]

_DECIMALS = 4  # the answer's precision (moments.rounded_answer)


@dataclass(frozen=True)
class VtgGptRule:
    """VTG-GPT's published constants (``VTG_GPT.__init__`` and ``get_span``); not tunable here."""

    num_bins: int = 10
    top_k: int = 8
    gap: int = 6
    lam: float = 0.5
    nms_iou: float = 0.95


VTG_GPT = VtgGptRule()


def _threshold(curve: FloatArray, rule: VtgGptRule) -> float:
    """Step 1: lower edge of the highest bin with ≥ ``top_k`` clips at or above it, else 0."""
    counts, edges = np.histogram(curve, bins=rule.num_bins, range=(0.0, 1.0))
    at_or_above = np.cumsum(counts[::-1])[::-1]
    qualifying = np.flatnonzero(at_or_above >= rule.top_k)
    return float(edges[qualifying[-1]]) if qualifying.size else 0.0


def vtg_gpt_spans(scores: ArrayLike, rule: VtgGptRule = VTG_GPT) -> FloatArray:
    """``get_span`` on one normalised curve: (k, 3) ``[start_clip, end_clip, score]``, best first.

    Ties keep clip order (a stable sort, as Python's ``sort(reverse=True)``).  Empty for a
    constant curve, which carries no evidence of where the moment is.
    """
    curve = as_score_curve(scores)
    if curve.max() == curve.min():
        return np.empty((0, 3))
    members = np.flatnonzero(curve > _threshold(curve, rule))
    if members.size == 0:  # the top clips sit exactly on the threshold edge (their code crashes)
        return np.empty((0, 3))
    runs = np.split(members, np.flatnonzero(np.diff(members) > rule.gap) + 1)
    lengths = np.array([run.size for run in runs], dtype=np.float64)
    means = np.array([curve[run].mean() for run in runs])
    span_scores = rule.lam * lengths / lengths.sum() + (1.0 - rule.lam) * means
    spans = np.array([[run[0], run[-1], score] for run, score in zip(runs, span_scores, strict=True)])
    return spans[np.argsort(-span_scores, kind="stable")]


def vtg_gpt_nms(spans: ArrayLike, rule: VtgGptRule = VTG_GPT) -> FloatArray:
    """Their ``nms`` on pooled clip-index spans (k, 3): greedy, best first, all survivors kept.

    IoU on ``[start_clip, end_clip]`` with length ``end − start`` (see the module docstring);
    ties in score keep the pooled order.
    """
    rows = as_finite_array(spans, "spans")
    if rows.size == 0:
        return np.empty((0, 3))
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise InputError(f"spans must have shape (k, 3) [start_clip, end_clip, score], got {rows.shape}")
    kept = greedy_nms_all_indices(rows[:, :2], rows[:, 2], rule.nms_iou)
    return rows[kept]


def vtg_gpt_windows(
    variant_scores: ArrayLike,
    *,
    clip_len: float,
    duration: float,
    top_n: int | None = None,
    rule: VtgGptRule = VTG_GPT,
) -> list[list[float]]:
    """The peer's answer from per-variant curves (v, n): ``[[start_s, end_s, score], ...]``.

    Each row is min–max normalised first (their ``normalize``; our per-variant curves are
    already in [0, 1] but, e.g. half-weighted by the fusion, need not span it), proposed on,
    pooled in row order, NMS'd, converted to seconds (clamped to ``duration``; empty windows
    dropped) and cut to ``top_n``.  Empty when no curve proposes anything.
    """
    curves = as_finite_array(variant_scores, "variant_scores")
    if curves.ndim != 2:
        raise InputError(f"variant_scores must have shape (v, n) (one curve per variant), got {curves.shape}")
    if curves.size == 0:
        return []
    pooled = [vtg_gpt_spans(curve, rule) for curve in minmax_normalise(curves)]
    kept = vtg_gpt_nms(np.concatenate(pooled, axis=0), rule)
    seconds = np.round(clips_to_seconds(kept, clip_len, duration), _DECIMALS)
    if seconds.size:  # a duration with more decimals must not round up past itself
        seconds[:, :2] = np.minimum(seconds[:, :2], rounded_end(duration))
        seconds = seconds[seconds[:, 1] > seconds[:, 0]]
    return [[float(a), float(b), float(c)] for a, b, c in seconds[:top_n]]
