"""Similarity g between query variants and clip captions (GranAlign §3, the ``g`` of the fusion).

The paper scores a clip by the cosine similarity of two sentence embeddings and min–max
normalises it over the clips of one video.  The normalisation matters: raw cosines of different
query variants live on different scales (a short simplified query is close to *every* caption),
and only after mapping each query's curve to [0, 1] can the curves of several variants be
averaged and thresholded with one histogram.

numpy only, no model: the embeddings are computed elsewhere and handed in as arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from granalign.errors import InputError

FloatArray = NDArray[np.float64]

# A row whose spread is below this fraction of its magnitude is treated as constant: such
# differences come from float rounding (the same caption embedded twice), not from the model
# preferring one clip, and stretching them to [0, 1] would invent a preference.
_CONSTANT_RTOL = 1e-12
#: Cosines of float32 embeddings are good to about 1e-7: the same caption embedded in another
#: batch (other padding) moves its cosine by ~1e-8.  A curve of cosines whose spread is below
#: this carries no preference (a static shot captioned alike in every clip), so the min–max of
#: ``normalised_similarity`` (and of the smoothed and query-aware curves) treats it as constant.
COSINE_NOISE = 1e-6


def as_finite_array(values: ArrayLike, name: str, *, ndim: int | None = None) -> FloatArray:
    """Return ``values`` as a float64 array, or raise ``InputError`` naming ``name``.

    Shared by every math module so that a NaN from a failed embedding or an empty caption is
    reported at the boundary with the argument's name, instead of silently turning a whole
    ranking into NaN several stages later.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from exc
    if ndim is not None and array.ndim != ndim:
        raise InputError(f"{name} must be a {ndim}-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{name} contains {bad} NaN or infinite value(s)")
    return array


def _unit_rows(vectors: FloatArray) -> FloatArray:
    """Scale every row to unit length; a zero row stays zero.

    A zero vector has no direction, so it is treated as similar to nothing (cosine 0) rather
    than producing 0/0 = NaN that would poison the min–max normalisation of the whole video.
    """
    return unit_rows_exact(vectors, axis=1)


def unit_rows_exact(vectors: FloatArray, axis: int = -1) -> FloatArray:
    """Unit rows along ``axis``, also for magnitudes whose squares over- or underflow.

    ``np.linalg.norm`` squares the entries, so a row beyond ~1e154 gets an infinite norm and one
    below ~1e-154 a zero norm (cosine 0 for parallel vectors).  Only such rows are first scaled
    by their largest entry (direction is scale-free); every ordinary row takes the plain path,
    so ordinary results are unchanged bit for bit.
    """
    norms = np.linalg.norm(vectors, axis=axis, keepdims=True)
    odd = ~np.isfinite(norms) | (norms < 1e-150)
    if np.any(odd):  # only then the peaks (a full extra pass over a long video's captions)
        peak = np.max(np.abs(vectors), axis=axis, keepdims=True) if vectors.size else norms
        odd = ~np.isfinite(norms) | ((norms < 1e-150) & (peak > 0.0))
    if np.any(odd):
        scaled = vectors / np.where(odd & (peak > 0.0), peak, 1.0)
        norms = np.where(odd, np.linalg.norm(scaled, axis=axis, keepdims=True), norms)
        vectors = np.where(odd, scaled, vectors)
    pointless = ~(norms > 0.0)
    out: FloatArray = vectors / np.where(pointless, 1.0, norms)
    if np.any(pointless):
        out[np.broadcast_to(pointless, out.shape)] = 0.0
    return out


@dataclass(frozen=True, eq=False)
class CaptionMatrix:
    """A video's caption embeddings (n, d), checked and converted once, with their norms.

    One query's fuse stage reads the same captions three times (feedback, the cosines, the
    match); each read used to convert a float32 matrix to float64, check it for NaN and take
    its norms again, about a third of the stage's time at 18,000 clips.  Build it with
    :func:`caption_matrix`; every function that takes captions accepts it and skips that work.
    """

    values: FloatArray
    norms: FloatArray

    @property
    def plain_norms(self) -> bool:
        """Whether every norm is 0 or far from under/overflow (the fast cosine path applies)."""
        return bool(np.all(np.isfinite(self.norms) & ((self.norms == 0.0) | (self.norms > 1e-150))))


def caption_matrix(captions: ArrayLike | CaptionMatrix, name: str = "captions") -> CaptionMatrix:
    """``captions`` as a :class:`CaptionMatrix` (2-D, finite, float64), or ``InputError`` naming
    ``name``; one already built is returned as it is."""
    if isinstance(captions, CaptionMatrix):
        return captions
    values = as_finite_array(captions, name, ndim=2)
    return CaptionMatrix(values, np.sqrt(np.einsum("ij,ij->i", values, values)))


def unit_cosines(unit_queries: FloatArray, captions: CaptionMatrix) -> FloatArray:
    """Cosines (q, n) of unit-length query rows with checked captions, not clipped.

    cos = (unit(q) · c) / |c|: the (n, d) captions are not copied to unit length (a 10-h
    video: 18,000 rows); magnitudes whose squares over- or underflow take the exact path.
    """
    c = captions.values
    if captions.plain_norms:
        norms = captions.norms
        sims: FloatArray = np.divide(
            unit_queries @ c.T, norms, out=np.zeros((unit_queries.shape[0], c.shape[0])), where=norms > 0
        )
        return sims
    exact: FloatArray = unit_queries @ _unit_rows(c).T
    return exact


def cosine_similarity(queries: ArrayLike, captions: ArrayLike | CaptionMatrix) -> FloatArray:
    """Cosine similarity of every query embedding (q, d) with every caption embedding (n, d).

    Returns a (q, n) array in [-1, 1].  Zero-norm vectors give similarity 0 (see
    ``_unit_rows``).  One matrix product, so 18,000 captions cost a few milliseconds.
    ``captions`` may be a :class:`CaptionMatrix` (checked once for several calls).
    """
    q = as_finite_array(queries, "queries", ndim=2)
    checked = caption_matrix(captions)
    c = checked.values
    if q.shape[0] == 0:
        raise InputError("queries must hold at least one embedding (shape (q, d) with q >= 1)")
    if c.shape[0] == 0:
        raise InputError("captions must hold at least one embedding (shape (n, d) with n >= 1)")
    if q.shape[1] != c.shape[1]:
        raise InputError(
            f"queries and captions must have the same embedding size, got {q.shape[1]} and {c.shape[1]}"
        )
    # Rounding can push |cos| a hair past 1; clip so downstream range checks stay exact.
    return np.clip(unit_cosines(_unit_rows(q), checked), -1.0, 1.0)


def minmax_normalise(scores: ArrayLike, *, noise: float = 0.0) -> FloatArray:
    """Min–max normalise over the last axis (the clips), row by row, into [0, 1].

    A constant row (max == min, up to float rounding, or a spread of at most ``noise``)
    becomes all zeros: no clip is preferred over another, so no clip may look like a perfect
    match (1.0) and win the proposal stage; zeros also keep such a query variant from lifting
    any clip in the averaged fusion.  Cosine curves pass ``noise=COSINE_NOISE``.
    """
    s = as_finite_array(scores, "scores")
    if s.ndim not in (1, 2):  # a curve or a stack of curves; 3-D would normalise some other axis
        raise InputError(f"scores must be a 1-D curve or a 2-D stack of curves, got shape {s.shape}")
    if s.shape[-1] == 0:
        raise InputError(f"scores must have at least one clip on its last axis, got shape {s.shape}")
    low = s.min(axis=-1, keepdims=True)
    high = s.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):
        spread = high - low
    if not np.all(np.isfinite(spread)):  # a row spans more than the float range: halve it first
        return minmax_normalise(s / 2.0, noise=noise / 2.0)
    scale = np.maximum(np.abs(high), np.abs(low))
    constant = spread <= np.maximum(_CONSTANT_RTOL * np.maximum(scale, 1.0), noise)
    safe = np.where(constant, 1.0, spread)
    out = np.where(constant, 0.0, (s - low) / safe)
    return np.clip(out, 0.0, 1.0)


def normalised_similarity(queries: ArrayLike, captions: ArrayLike | CaptionMatrix) -> FloatArray:
    """The paper's g: cosine similarity min–max normalised over the clips of the video, (q, n)."""
    return minmax_normalise(cosine_similarity(queries, captions), noise=COSINE_NOISE)
