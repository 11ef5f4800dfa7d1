"""Stage 5: granular fusion, S_f over a video's clips from both channels.

Per variant i: g(Q_s^i, C_agn) and g(Q_d^i, C_awr), each a min–max normalised cosine curve.
Before the cosine, pseudo-relevance feedback moves each query towards its best-matching
captions (:mod:`granalign.core.feedback`) and the agnostic curves are smoothed over time
(:mod:`granalign.core.smoothing`); both were measured on QVHighlights val (README).  The aware
channel exists only at the key clips with aware captions; elsewhere ``aware_missing`` says
what stands in (0, or g(Q_d, C_agn)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from granalign.core.feedback import feedback_queries
from granalign.core.fusion import AwareMissing, fuse_variants, variant_scores
from granalign.core.match import caption_match
from granalign.core.similarity import (
    COSINE_NOISE,
    CaptionMatrix,
    caption_matrix,
    cosine_similarity,
    minmax_normalise,
)
from granalign.core.smoothing import smoothed_similarity
from granalign.core.validation import ImitationGuard
from granalign.stages.aware_captions import AwareCaptions

__all__ = ["FusedScores", "FusionSettings", "aware_channel", "fuse"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class FusionSettings:
    """The fusion's settings (the graph's Context has them under the same names)."""

    feedback_k: int
    feedback_weight: float
    smooth_sigma: float
    aware_missing: AwareMissing
    imitation_guard: bool
    imitation_max_penalty: float

    @classmethod
    def of(cls, settings: Any) -> FusionSettings:
        """The fusion settings of any object that has them as attributes (a Context)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def _agnostic_curves(queries: NDArray[np.float32], captions: CaptionMatrix, s: FusionSettings) -> FloatArray:
    """g(Q, C_agn) with pseudo-relevance feedback and temporal smoothing, shape (v, n)."""
    fed = feedback_queries(queries, captions, k=s.feedback_k, weight=s.feedback_weight)
    return smoothed_similarity(fed, captions, s.smooth_sigma)


def aware_channel(
    q_d: NDArray[np.float32],
    n: int,
    aware: AwareCaptions | None,
    settings: FusionSettings,
    *,
    agnostic_captions: Sequence[str] = (),
    agnostic_emb: NDArray[np.floating[Any]] | None = None,
    query: str = "",
    query_emb: NDArray[np.float32] | None = None,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """g(Q_d, C_awr) over the clips that have aware captions, and the mask of those clips.

    The cosine is min–max normalised over the key clips with aware captions only (the only
    clips where C_awr exists), so the aware channel spans [0, 1] like the agnostic one and a
    query whose aware captions all look alike lifts no clip.  Other clips are NaN (ignored).
    With ``imitation_guard`` each clip's aware score is then damped by how much its caption
    copies the query beyond what its agnostic caption supports (:class:`ImitationGuard`), which
    needs the agnostic captions and embeddings and the query's text and embedding.
    """
    mask = np.zeros(n, dtype=bool)
    g = np.full((q_d.shape[0], n), np.nan)
    if aware is None or not aware.clips:
        return g, mask
    scores = minmax_normalise(cosine_similarity(q_d, aware.embeddings), noise=COSINE_NOISE)
    if settings.imitation_guard and agnostic_emb is not None and query_emb is not None:
        guard = ImitationGuard(max_penalty=settings.imitation_max_penalty)
        scores = (
            scores
            * guard.weights(
                aware.captions,
                [agnostic_captions[c] for c in aware.clips],
                query,
                aware.embeddings,
                agnostic_emb[aware.clips],
                query_emb,
            )[None, :]
        )
    g[:, aware.clips] = scores
    mask[aware.clips] = True
    return g, mask


@dataclass(frozen=True)
class FusedScores:
    """Per-variant curves and S_f, rounded to 6 decimals as plain lists (graph state holds no
    numpy, and every caller, graph or benchmark, then proposes on the very same numbers)."""

    variant_scores: list[list[float]]
    fused: list[float]
    aware_clips: int
    match: float | None = None
    """How well the video matches the query at all (:func:`~granalign.core.match.caption_match`:
    raw cosines, unlike the curves); None when no query embedding was given."""


def fuse(
    q_s: NDArray[np.float32],
    q_d: NDArray[np.float32],
    captions: NDArray[np.float32] | CaptionMatrix,
    settings: FusionSettings,
    *,
    aware: AwareCaptions | None = None,
    agnostic_captions: Sequence[str] = (),
    query: str = "",
    query_emb: NDArray[np.float32] | None = None,
) -> FusedScores:
    """S_f of the variants (rows of ``q_s``/``q_d``) over the clips (rows of ``captions``).

    g(Q_d, C_agn) is computed only when ``aware_missing="agnostic"`` uses it.  With ``query_emb``
    (the original query's embedding) the result also carries the video's ``match``.
    ``captions`` may be a :class:`~granalign.core.similarity.CaptionMatrix`, checked once per
    video for all of its queries (``graphs.resources.VideoCaptions.checked``).
    """
    checked = caption_matrix(captions)  # converted and checked once for every read below
    g_s = _agnostic_curves(q_s, checked, settings)
    g_d_agn = _agnostic_curves(q_d, checked, settings) if settings.aware_missing == "agnostic" else None
    g_d_aware, mask = aware_channel(
        q_d,
        g_s.shape[1],
        aware,
        settings,
        agnostic_captions=agnostic_captions,
        agnostic_emb=checked.values,
        query=query,
        query_emb=query_emb,
    )
    curves = variant_scores(
        g_s, g_d_aware, mask, g_detailed_agnostic=g_d_agn, aware_missing=settings.aware_missing
    )
    fused = fuse_variants(curves)
    match = caption_match(query_emb, checked) if query_emb is not None else None
    return FusedScores(np.round(curves, 6).tolist(), np.round(fused, 6).tolist(), int(mask.sum()), match)
