"""An absolute match signal: does the video show the query at all?

Every score the graph answers with (the fused curve S_f, the saliency, the windows' scores) is
min–max normalised over the clips of one video, so a query the video never shows ("a rocket
launches into space" asked of a dog video) still gets windows scored like real ones, and a
video-QA agent cannot tell "the video does not show this" from them.  ``caption_match`` is the
signal that can: the raw cosine between the user's query and the video's query-agnostic captions,
before any normalisation, so it is comparable across queries and videos for one embedder.

Measured with all-MiniLM-L6-v2 and MiniGPT-v2 captions on QVHighlights val, each query against its
own video and against a random other video of the same half (seeded), on videos of 15 to 1,800
captions (``granalign shift`` crops and concatenations, README "Does the video show it at all?").
Below 0.30 the video rarely shows the query at any length (1–6 % of true pairs).  The level above
which it usually does rises with the number of captions, because the best of many unrelated
captions is higher: the 95th percentile of unrelated videos' ``match`` follows
``0.20 + 0.059·ln(captions)`` (fitted on the tune half; 0.36 at 15 captions, 0.45 at 75, 0.58 at
600, 0.64 at 1,800), and on the report half 4.6–6.5 % of unrelated videos reach it at every
length while 28–89 % of true pairs do (long recordings hold the weaker signal).  A fixed level
fitted to 150-s videos (0.44) would have said "usually shows it" of 62 % of unrelated 1-h
recordings.  Other embedders put cosines on other scales: their value is uncalibrated.

numpy only; the embeddings come from the caller (the fusion stage already holds both).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from granalign.core.similarity import CaptionMatrix, as_finite_array, cosine_similarity
from granalign.errors import ConfigError, InputError

__all__ = [
    "CALIBRATED_EMBEDDER",
    "LIKELY_BASE",
    "LIKELY_PER_LOG_CAPTION",
    "MATCH_TOP_K",
    "UNLIKELY_BELOW",
    "caption_match",
    "likely_from",
    "match_reading",
]

MATCH_TOP_K = 3
"""Captions averaged: the best one alone can match by accident (a generic caption, one word)."""
CALIBRATED_EMBEDDER = "all-MiniLM-L6-v2"
"""The embedder (by its name, ``TextEmbedder.name``) the thresholds below were measured with."""
UNLIKELY_BELOW = 0.30
"""Below this the video rarely shows the query, at every length measured (1–6 % of true pairs)."""
LIKELY_BASE, LIKELY_PER_LOG_CAPTION = 0.20, 0.059
"""``likely_from(n) = 0.20 + 0.059·ln n``: the 95th percentile of unrelated videos' match at n
captions (see the module docstring)."""


def caption_match(
    query_emb: ArrayLike, captions: ArrayLike | CaptionMatrix, *, k: int = MATCH_TOP_K
) -> float:
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


def likely_from(captions: int) -> float:
    """The match at or above which a video of ``captions`` captions usually shows the query
    (all-MiniLM-L6-v2), to 2 decimals, as the reading prints it.

    Why it grows with the video: ``match`` is the best of n captions, and the best of many
    unrelated ones is higher, so one level for every length either misses short clips or calls
    most long recordings a match (see the module docstring for the measurement)."""
    if isinstance(captions, bool) or not isinstance(captions, int | np.integer) or captions < 1:
        raise InputError(f"captions must be an integer >= 1 (the video's caption count), got {captions!r}")
    return round(LIKELY_BASE + LIKELY_PER_LOG_CAPTION * math.log(int(captions)), 2)


def match_reading(match: float, embedder: str | None, captions: int | None = None) -> str:
    """``match`` as one short phrase a calling model can act on.

    Only the embedder the levels were measured with gets a reading; for any other the value
    comes with the warning that it is uncalibrated (its cosines live on another scale).  The
    upper level depends on the video's caption count (:func:`likely_from`); without it (an
    answer with no saliency curve) only the lower one is said.
    """
    if isinstance(match, bool) or not isinstance(match, int | float) or not math.isfinite(match):
        raise InputError(f"match must be a finite number, got {match!r}")
    value = f"{float(match):g}"  # as given (4 decimals): "0.30" for 0.2996 would contradict "below 0.30"
    if embedder != CALIBRATED_EMBEDDER:
        # the other embedder is not named: a model reads this, and a local model's name is a folder's
        return f"match {value} (uncalibrated: the text embedder is not {CALIBRATED_EMBEDDER})"
    low = f"match {value} ({CALIBRATED_EMBEDDER}: below {UNLIKELY_BELOW:.2f} the video rarely shows it"
    if not captions:
        return low + ")"
    upper = f"at or above {likely_from(captions):.2f}, for a video of {int(captions)} captions"
    return f"{low}; {upper}, it usually does)"
