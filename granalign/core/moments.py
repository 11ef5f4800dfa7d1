"""From score curves to the answer: ranked moments in seconds and a saliency curve.

The glue a graph node calls after fusion.  Two orders of the proposal stage are offered:

* ``"pooled"`` (default): propose on every variant pair's curve *and* on the fused curve, pool
  all windows, then NMS.  Each variant contributes the windows it is sure of, so the top-10 list
  covers more plausible extents; it measured better (R1@0.5 54.26 / mAP 32.93 against
  52.26 / 27.92, DESIGN.md §1).
* ``"fused"``: the paper's order, propose once on the fused curve S_f.

``contrast=True`` adds ``contrast_windows`` of the fused curve to the pool (mAP 32.93 → 34.61
in DESIGN.md §1).  Re-measured with this code on QVHighlights val, using VTG-GPT's published
fused saliency curves (6 query variants, MiniGPT-v2 captions) in ``"fused"`` mode: R1@0.5 / mAP
57.42 / 29.77 without, 58.13 / 37.65 with contrast windows.  It stays off by default here only
because callers choose it explicitly (a graph ``Context`` setting); the numbers favour turning
it on.

Best measured setting with this code (QVHighlights val, shared MiniGPT-v2 captions,
all-MiniLM-L6-v2, original query + 5 Baichuan2 paraphrases, caption-only with
``aware_missing="zero"``): query feedback (``feedback.feedback_queries``, k = 3, w = 0.5), σ = 1
temporal smoothing of each variant's cosines (``smoothing.smoothed_similarity``), ``"pooled"``
with ``contrast=True, contrast_min_len=10`` and ``ProposalParams(top_k=12, gap=3, lam=0.5)``,
NMS 0.95, ``saliency(..., sigma=2)``: R1@0.5 57.81, R1@0.7 41.61, mAP 38.41, HL-min-VeryGood
mAP 39.05 / HIT@1 63.87 (library defaults: 54.13 / 35.03 / 33.96, 33.53 / 60.00).

Issue 13 re-decided the contrast windows on the *tune* half of val and every duration-shifted
set built from it (README "Quality that generalises"): :class:`MomentSettings` adds the
scale-free window grid (``contrast_step`` 0.1), short windows (``contrast_short_prior`` 4
clips) and edges moved to the curve's own midpoint level (``contrast_refine``,
``proposals.refine_boundaries``); fractions-of-the-video priors lost there on every set and were
not adopted.  The length priors are counted in 2-s clips and converted to a video's own caption
grid (:func:`priors_at_clip_length`): on 1-, 4- and 6-s grids that gained R1@0.5 +6 to +17.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from granalign.core.nms import temporal_nms
from granalign.core.proposals import (
    PROPOSAL_BOUNDS,
    ProposalParams,
    as_score_curve,
    check_param,
    contrast_windows,
    generate_proposals,
)
from granalign.core.similarity import as_finite_array
from granalign.core.smoothing import check_sigma, gaussian_smooth
from granalign.errors import ConfigError, InputError

FloatArray = NDArray[np.float64]
Mode = Literal["pooled", "fused"]

DEFAULT_PARAMS = ProposalParams()
#: Every proposal stage order a run may pick (``MomentSettings.proposal_mode``).
PROPOSAL_MODES = ("pooled", "fused", "vtg-gpt")
#: NMS IoU of VTG-GPT, whose proposal rule gave the measured numbers.  Suppressing only
#: near-duplicates (IoU ≥ 0.95) keeps windows that nest or overlap a lot; mAP over IoU
#: 0.5–0.95 rewards such alternative extents of the same moment, and the pooled generators
#: emit many exact duplicates that this still removes.  Measured (QVHighlights val, fused
#: curve + contrast windows): mAP 37.65 at 0.95, 37.18 at 0.7, 35.93 at 0.5; R1 unchanged.
DEFAULT_NMS_IOU = 0.95
DEFAULT_TOP_N = 10
#: NMS IoU of the "distinct" answer profile (tool, CLI retrieve, MCP): an agent reading the top
#: 5 wants different moments, not the benchmark's nested near-duplicates.  Chosen on the tune
#: half of QVHighlights val by R5@0.5 over distinct windows (README "Quality that generalises").
DISTINCT_NMS_IOU = 0.5
_DECIMALS = 4
#: The clip length (seconds) in which the length priors ``top_k``, ``gap``, ``contrast_min_len``
#: and ``contrast_short_prior`` are counted: QVHighlights' grid, on which they were measured.
#: On another grid :func:`priors_at_clip_length` converts them to the same seconds.
PRIOR_CLIP_S = 2.0


@dataclass(frozen=True)
class MomentSettings:
    """Every setting of the proposal, NMS and saliency stages, with the measured-best defaults.

    The one source of these settings' defaults and bounds: ``graphs.context.Context`` takes
    both from here (its fields of the same names), so the graph, the CLI and a library caller
    who writes ``MomentSettings()`` get the same numbers, and a value the graph accepts is one
    the math accepts.  The values are the best measured setting of the module docstring; the
    keyword defaults of :func:`localize_moments` and :class:`ProposalParams` stay the paper's
    rule (the baseline of those measurements).  ``top_k``, ``gap``, ``contrast_min_len`` and
    ``contrast_short_prior`` are counted in :data:`PRIOR_CLIP_S`-second clips; the proposal
    stage converts them to the video's clip grid (:func:`priors_at_clip_length`).
    """

    proposal_mode: Mode | Literal["vtg-gpt"] = "pooled"  # vtg-gpt: the peer's rule (granalign.core.peer)
    num_bins: int = DEFAULT_PARAMS.num_bins
    top_k: int = 12
    gap: int = 3
    drop_pct: float = DEFAULT_PARAMS.drop_pct
    lam: float = 0.5
    contrast: bool = True
    contrast_min_len: int = 10
    contrast_step: float = 0.1
    contrast_short_prior: float = 4.0
    contrast_refine: bool = True
    nms_iou: float = DEFAULT_NMS_IOU
    top_n: int = DEFAULT_TOP_N
    saliency_sigma: float = 2.0

    def __post_init__(self) -> None:
        if self.proposal_mode not in PROPOSAL_MODES:
            modes = ", ".join(repr(mode) for mode in PROPOSAL_MODES)
            raise ConfigError(f"proposal_mode must be one of {modes}, got {self.proposal_mode!r}")
        if not isinstance(self.contrast, bool):
            raise ConfigError(f"contrast must be true or false, got {self.contrast!r}")
        for name, bounds in MOMENT_BOUNDS.items():
            check_param(name, getattr(self, name), bounds)
        _ = self.params  # the proposal fields' own checks (contrast_refine) run at construction
        if self.nms_iou == 0.0:
            raise ConfigError("nms_iou must be in (0, 1]: 0 would suppress every overlapping window")

    @property
    def params(self) -> ProposalParams:
        """The proposal rule's part of these settings (every :class:`ProposalParams` field has
        a field of the same name here, so a new one needs no second list)."""
        return ProposalParams(**{f.name: getattr(self, f.name) for f in fields(ProposalParams)})


MOMENT_BOUNDS: dict[str, tuple[int, int] | tuple[float, float]] = {
    **PROPOSAL_BOUNDS,
    "contrast_min_len": (1, 100_000),
    "nms_iou": (0.0, 1.0),
    "top_n": (1, 1000),
    "saliency_sigma": (0.0, 200.0),
}
"""Inclusive ranges of the numeric :class:`MomentSettings` fields (``nms_iou`` also excludes 0)."""


MIN_SECONDS = 1e-3
"""Shortest duration/clip length: times are rounded to 4 decimals, so less would round to 0."""
MAX_SECONDS = 1e7
"""Longest (~115 days): far past any video, and far from where float rounding breaks."""


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a float number of seconds in [:data:`MIN_SECONDS`, :data:`MAX_SECONDS`].

    Durations and clip lengths arrive from caption files, CLI flags and tool callers; one check
    names the bad input before numpy turns it into NaN windows or an empty grid.
    """
    shown = repr(value)[:40]  # a caller's 400-digit int must not fill the message
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{name} must be a positive number of seconds, got {shown}")
    try:  # an int past float's range (JSON allows any) is a bad input, not an OverflowError
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not MIN_SECONDS <= number <= MAX_SECONDS:
        raise InputError(
            f"{name} must be a number of seconds in [{MIN_SECONDS:g}, {MAX_SECONDS:g}], got {shown}"
        )
    return number


def clips_to_seconds(windows: ArrayLike, clip_len: float, duration: float) -> FloatArray:
    """Clip-unit rows ``[start_clip, end_clip_inclusive, score]`` to seconds, (k, 3).

    Clip i covers [i·clip_len, (i+1)·clip_len), so start = s·clip_len and end =
    (e+1)·clip_len; both are clamped to ``duration`` because the last clip of a video is
    usually shorter than ``clip_len``.  A window may come out empty (start == end) when its
    clips lie past the duration; ``localize_moments`` drops those.
    """
    length = positive_seconds("clip_len", clip_len)
    total = positive_seconds("duration", duration)
    rows = as_finite_array(windows, "windows")
    if rows.size == 0:
        return np.empty((0, 3))
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise InputError(f"windows must have shape (k, 3) [start_clip, end_clip, score], got {rows.shape}")
    if np.any(rows[:, 0] < 0) or np.any(rows[:, 1] < rows[:, 0]):
        raise InputError("windows must satisfy 0 <= start_clip <= end_clip")
    starts = np.minimum(rows[:, 0] * length, total)
    ends = np.minimum((rows[:, 1] + 1.0) * length, total)
    return np.column_stack((starts, ends, rows[:, 2]))


def saliency(fused: ArrayLike, *, sigma: float = 0.0) -> list[float]:
    """The fused curve S_f as plain Python floats, one per clip (highlight detection output).

    Plain floats because the graph's state and the JSONL output must not hold numpy objects.
    ``sigma`` > 0 smooths the curve over time with a Gaussian of σ clips first
    (``smoothing.gaussian_smooth``; the result stays in [0, 1]).  Annotators rate whole
    moments, so a curve smooth over a moment ranks its clips together: on QVHighlights val
    (MiniLM, original + 5 paraphrases) σ = 2 raised HL-min-VeryGood mAP 33.53 → 38.64 and
    HIT@1 60.00 → 64.90.  The default 0 keeps S_f unchanged.
    """
    curve = as_score_curve(fused, "fused")
    if check_sigma(sigma):  # checked even when 0-like: None or an array is no σ
        curve = np.clip(gaussian_smooth(curve, sigma), 0.0, 1.0)
    values: list[float] = curve.tolist()
    return values


def rounded_answer(moments: ArrayLike, curve: ArrayLike) -> tuple[list[list[float]], list[float]]:
    """The numbers that leave the graph (moments and saliency), rounded to 4 decimals here only.

    The graph's ``nms`` node calls this, so the library, CLI, LangChain tool, MCP server and a
    served ``langgraph dev`` graph all return the same values: the last digits of a float sum
    depend on the process (BLAS threads, summation order), and 4 decimals is far finer than a
    2-s clip or a relevance score needs.  Plain lists, because the result goes into graph state.
    """
    # finite first: np.round keeps NaN, and json.dumps would write it as NaN, which is no JSON
    rows = np.round(as_finite_array(moments, "moments").reshape(-1, 3), _DECIMALS)
    values = np.round(as_finite_array(curve, "curve").reshape(-1), _DECIMALS)
    rounded_moments: list[list[float]] = rows.tolist()
    rounded_curve: list[float] = values.tolist()
    return rounded_moments, rounded_curve


def _half_up(value: float) -> int:
    """Round half up: Python's ``round`` halves to even, so 1.5 and 2.5 clips would both give 2."""
    return math.floor(value + 0.5)


def priors_at_clip_length(
    params: ProposalParams, contrast_min_len: int, clip_len: float
) -> tuple[ProposalParams, int]:
    """The length priors converted from :data:`PRIOR_CLIP_S`-second clips to ``clip_len``-second ones.

    ``top_k`` (clips above the threshold), ``gap`` (τ), ``contrast_min_len`` and
    ``contrast_short_prior`` (L₀) describe how long moments are, in seconds, not how many
    captions they hold: on a 4-s caption grid, 12 clips above the threshold and a 10-clip
    length prior would ask for twice the moment.  Measured on QVHighlights val with every 2nd or
    3rd caption kept (a 4-s or 6-s grid) or each caption twice (1 s): priors in seconds beat the
    same numbers in clips by R1@0.5 +6.8 / +14.8 / +7.7 and mAP +2.4 / +4.1 / +6.2 on the report
    half (none; Baichuan2 +10.1 / +17.0 / +6.0), and in clips our rule fell behind the peer's
    at 4 and 6 s (README "Quality that generalises").  The smoothing σ and the saliency σ stay
    in clips: they smooth caption-to-caption flicker, which comes per caption.  So does the
    2-clip floor of short contrast windows and of refined edges
    (``proposals.SHORT_WINDOW_CLIPS``): one clip has no extent to contrast, whatever its length.
    Counts are rounded half up and kept inside :data:`MOMENT_BOUNDS`; at 2-s clips nothing
    changes.  The keyword defaults of :func:`propose_windows` (the paper's rule) are converted
    too: the paper's constants were also measured on QVHighlights' 2-s clips.
    """
    scale = PRIOR_CLIP_S / positive_seconds("clip_len", clip_len)
    if scale == 1.0:
        return params, contrast_min_len

    def count(name: str, value: int) -> int:
        low, high = MOMENT_BOUNDS[name]
        return int(min(max(_half_up(value * scale), low), high))

    short_high = float(MOMENT_BOUNDS["contrast_short_prior"][1])
    scaled = replace(
        params,
        top_k=count("top_k", params.top_k),
        gap=count("gap", params.gap),
        contrast_short_prior=min(params.contrast_short_prior * scale, short_high),
    )
    return scaled, count("contrast_min_len", contrast_min_len)


def _as_variant_curves(variant_scores: ArrayLike, n: int) -> FloatArray:
    curves = as_finite_array(variant_scores, "variant_scores")
    if curves.size == 0:
        return np.empty((0, n))
    if curves.ndim != 2 or curves.shape[1] != n:
        raise InputError(
            f"variant_scores must have shape (v, {n}) (one curve per variant, like fused), got {curves.shape}"
        )
    return np.stack([as_score_curve(row, f"variant_scores[{i}]") for i, row in enumerate(curves)])


def _candidate_windows(
    curves: FloatArray,
    fused: FloatArray,
    params: ProposalParams,
    mode: Mode,
    contrast: bool,
    contrast_min_len: int = 8,
) -> FloatArray:
    """Pool of clip-unit windows: fused curve first, then each variant, then contrast windows.

    The order only decides exact score ties (NMS is stable): the consensus curve goes first.
    """
    pool = [generate_proposals(fused, params)]
    if mode == "pooled":
        pool.extend(generate_proposals(curve, params) for curve in curves)
    if contrast:
        pool.append(
            contrast_windows(
                fused,
                min_len=min(contrast_min_len, fused.size),
                relative_step=params.contrast_step,
                short_prior=params.contrast_short_prior,
                refine=params.contrast_refine,
            )
        )
    return np.concatenate(pool, axis=0)


def rounded_end(duration: float) -> float:
    """The latest 4-decimal time not after ``duration``, so rounding never leaves the video
    (the end every answer's windows are clamped to, ours and the peer's)."""
    end = float(np.round(duration, _DECIMALS))
    return end if end <= duration else float(np.round(end - 10.0**-_DECIMALS, _DECIMALS))


def _whole_video(fused: FloatArray, end_s: float) -> list[list[float]]:
    """Fallback when no generator proposes anything (constant or all-zero curves, one clip).

    The whole video, scored with the mean of S_f: a flat curve prefers no clip, and the whole
    video is the only window that does not invent a preference; its low score says so.
    """
    return [[0.0, end_s, float(np.round(fused.mean(), _DECIMALS))]]


def propose_windows(
    variant_scores: ArrayLike,
    fused: ArrayLike,
    *,
    clip_len: float,
    duration: float,
    params: ProposalParams = DEFAULT_PARAMS,
    mode: Mode = "pooled",
    contrast: bool = False,
    contrast_min_len: int = 8,
) -> list[list[float]]:
    """The proposal stage (the graph's ``propose`` node): candidate windows in seconds.

    ``variant_scores`` (v, n) are the per-pair curves of ``fusion.variant_scores`` (v may be 0),
    ``fused`` (n,) is S_f.  The length priors of ``params`` and ``contrast_min_len`` are counted
    in :data:`PRIOR_CLIP_S`-second clips and converted to ``clip_len`` first
    (:func:`priors_at_clip_length`).  Times and scores are rounded to 4 decimals here, before NMS, so the
    final list is exactly what NMS checked; windows that end up empty are dropped.  Plain lists,
    because the result goes into graph state.
    """
    if mode not in ("pooled", "fused"):
        raise ConfigError(f"mode must be 'pooled' or 'fused', got {mode!r}")
    if not isinstance(params, ProposalParams):
        raise ConfigError(f"params must be a ProposalParams, got {type(params).__name__}")
    length = positive_seconds("clip_len", clip_len)
    total = positive_seconds("duration", duration)
    curve = as_score_curve(fused, "fused")
    curves = _as_variant_curves(variant_scores, curve.size)
    end_s = rounded_end(total)
    params, contrast_min_len = priors_at_clip_length(params, contrast_min_len, length)
    pool = _candidate_windows(curves, curve, params, mode, contrast, contrast_min_len)
    windows = np.round(clips_to_seconds(pool, length, total), _DECIMALS)
    windows[:, :2] = np.minimum(windows[:, :2], end_s)
    windows = windows[windows[:, 1] > windows[:, 0]]
    return [[float(a), float(b), float(c)] for a, b, c in windows]


def select_moments(
    candidates: ArrayLike,
    fused: ArrayLike,
    *,
    duration: float,
    nms_iou: float = DEFAULT_NMS_IOU,
    top_n: int = DEFAULT_TOP_N,
) -> list[list[float]]:
    """The NMS stage (the graph's ``nms`` node): ranked moments, never none.

    Returns moment_detr's ``[[start_s, end_s, score], ...]`` best first, at most ``top_n``;
    when no generator proposed anything, the whole video (see ``_whole_video``).
    """
    curve = as_score_curve(fused, "fused")
    end_s = rounded_end(positive_seconds("duration", duration))
    rows = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
    kept = temporal_nms(rows, nms_iou, top_n)
    if kept.shape[0] == 0:
        return _whole_video(curve, end_s)
    return [[float(start), float(end), float(score)] for start, end, score in kept]


def localize_moments(
    variant_scores: ArrayLike,
    fused: ArrayLike,
    *,
    clip_len: float,
    duration: float,
    params: ProposalParams = DEFAULT_PARAMS,
    mode: Mode = "pooled",
    contrast: bool = False,
    contrast_min_len: int = 8,
    nms_iou: float = DEFAULT_NMS_IOU,
    top_n: int = DEFAULT_TOP_N,
) -> list[list[float]]:
    """Ranked moments from score curves: :func:`propose_windows` then :func:`select_moments`.

    Windows lie inside [0, duration] with start < end, at most ``top_n``, never none.
    """
    candidates = propose_windows(
        variant_scores,
        fused,
        clip_len=clip_len,
        duration=duration,
        params=params,
        mode=mode,
        contrast=contrast,
        contrast_min_len=contrast_min_len,
    )
    return select_moments(candidates, fused, duration=duration, nms_iou=nms_iou, top_n=top_n)
