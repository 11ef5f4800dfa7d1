"""An absolute match signal: does the video show the query at all?

Every score the graph answers with (the fused curve S_f, the saliency, the windows' scores) is
min–max normalised over the clips of one video, so a query the video never shows ("a rocket
launches into space" asked of a dog video) still gets windows scored like real ones, and a
video-QA agent cannot tell "the video does not show this" from them.  ``caption_match`` is the
signal that can: the raw cosine between the user's query and the video's query-agnostic captions,
before any normalisation, so it is comparable across queries and videos for one embedder.

Measured with all-MiniLM-L6-v2 and MiniGPT-v2 captions on QVHighlights val, each query against its
own video and against a random other video of the same half (seeded): AUC 0.940 on the tune half,
0.936 on the report half.  At or above 0.30 (chosen on the tune half): 96.0 % of true pairs and
35.8 % of false ones (report half 95.3 % / 34.8 %); at or above 0.44: 77.7 % / 6.9 % (report
76.9 % / 4.9 %).  Other embedders put cosines on other scales: their value is uncalibrated.

numpy only; the embeddings come from the caller (the fusion stage already holds both).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from granalign.core.similarity import as_finite_array, cosine_similarity
from granalign.errors import ConfigError, InputError

__all__ = [
    "CALIBRATED_EMBEDDER",
    "LIKELY_FROM",
    "MATCH_TOP_K",
    "UNLIKELY_BELOW",
    "caption_match",
    "match_reading",
]

MATCH_TOP_K = 3
"""Captions averaged: the best one alone can match by accident (a generic caption, one word)."""
CALIBRATED_EMBEDDER = "all-MiniLM-L6-v2"
"""The embedder (by its name, ``TextEmbedder.name``) the thresholds below were measured with."""
UNLIKELY_BELOW = 0.30
"""Below this the video rarely shows the query (4–5 % of true pairs fall there)."""
LIKELY_FROM = 0.44
"""At or above this the video usually shows the query (5–7 % of false pairs reach it)."""


def caption_match(query_emb: ArrayLike, captions: ArrayLike, *, k: int = MATCH_TOP_K) -> float:
    """Mean of the ``k`` highest raw cosines between one query embedding (d,) and the video's
    agnostic caption embeddings (n, d) (all n when n < k), rounded to 4 decimals, in [-1, 1].

    Why the top-k mean: one caption can match by accident, while a moment the video shows is
    usually captioned alike over several clips.  Why the raw cosine: the curves the windows are
    scored on are min–max normalised per video, which erases how well the video matches at all.
    It is a caption match: what the captions do not mention cannot match.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be an integer >= 1 (captions averaged), got {k!r}")
    q = as_finite_array(query_emb, "query_emb", ndim=1)
    sims = cosine_similarity(q[None, :], captions)[0]  # validates captions: 2-D, n >= 1, same d
    top = min(int(k), sims.size)
    best = np.partition(sims, sims.size - top)[sims.size - top :]
    return round(float(np.clip(best.mean(), -1.0, 1.0)), 4)


def match_reading(match: float, embedder: str | None) -> str:
    """``match`` as one short phrase a calling model can act on.

    Only the embedder the thresholds were measured with gets a reading; for any other the value
    comes with the warning that it is uncalibrated (its cosines live on another scale).
    """
    if isinstance(match, bool) or not isinstance(match, int | float) or not math.isfinite(match):
        raise InputError(f"match must be a finite number, got {match!r}")
    value = f"{float(match):g}"  # as given (4 decimals): "0.30" for 0.2996 would contradict "below 0.30"
    if embedder == CALIBRATED_EMBEDDER:
        return (
            f"match {value} ({CALIBRATED_EMBEDDER}: below {UNLIKELY_BELOW:.2f} the video rarely "
            f"shows it, at or above {LIKELY_FROM:.2f} it usually does)"
        )
    # the other embedder is not named: a model reads this, and a local model's name is a folder's
    return f"match {value} (uncalibrated: the text embedder is not {CALIBRATED_EMBEDDER})"
