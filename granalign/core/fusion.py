"""Granular fusion (GranAlign §3.3): one relevance score per clip from m query-variant pairs.

    S_f = 1/(2m) * sum_i [ g(Q_s^i, C_agn,f) + g(Q_d^i, C_awr,f) ]

Each pair i contributes a *simplified* query matched against the query-agnostic captions
(recall: common words, every clip has such a caption) and a *detailed* query matched against the
query-aware captions (precision: fine-grained words, but only key clips have such a caption).
Averaging the two channels lets each cover the other's failure mode.

Clips without an aware caption (outside the CLIP filter's key clips) need a rule:

* ``"zero"`` (default): the aware term is 0 there, so the aware channel only *lifts* key clips.
* ``"agnostic"``: match the detailed query against the agnostic caption there instead, so a
  clip missed by the CLIP filter is not penalised by half its score.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from granalign.core.similarity import as_finite_array
from granalign.errors import InputError

FloatArray = NDArray[np.float64]
AwareMissing = Literal["zero", "agnostic"]

_RANGE_TOL = 1e-9


def _normalised_matrix(
    values: ArrayLike,
    name: str,
    *,
    shape: tuple[int, ...] | None = None,
    finite_where: NDArray[np.bool_] | None = None,
) -> FloatArray:
    """Check a (m, n) matrix of normalised similarities g in [0, 1].

    g is min–max normalised by construction; a value outside [0, 1] means the caller passed raw
    cosines, and the fused curve would then fall outside the histogram range the proposal stage
    assumes.  ``finite_where`` limits the finiteness check to the clips whose value is used
    (NaN may mark "no aware caption here").
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from exc
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(
            f"{name} must be a non-empty 2-D array (m variants, n clips), got shape {array.shape}"
        )
    if shape is not None and array.shape != shape:
        raise InputError(f"{name} must have shape {shape} like g_simplified, got {array.shape}")
    used = array if finite_where is None else array[:, finite_where]
    if finite_where is None:
        as_finite_array(array, name)
    else:
        as_finite_array(used, f"{name} (at clips where aware_mask is True)")
    if used.size and (used.min() < -_RANGE_TOL or used.max() > 1.0 + _RANGE_TOL):
        raise InputError(
            f"{name} must hold min-max normalised similarities in [0, 1], "
            f"got values in [{used.min():.4g}, {used.max():.4g}]"
        )
    if finite_where is None:
        return np.clip(array, 0.0, 1.0)
    return np.where(finite_where, np.clip(np.nan_to_num(array), 0.0, 1.0), 0.0)


def _aware_mask(aware_mask: ArrayLike, n: int) -> NDArray[np.bool_]:
    mask = np.asarray(aware_mask)
    if mask.dtype != np.bool_:
        raise InputError(f"aware_mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != (n,):
        raise InputError(f"aware_mask must have shape ({n},) (one flag per clip), got {mask.shape}")
    return mask


def _aware_term(
    g_detailed_aware: ArrayLike,
    mask: NDArray[np.bool_],
    shape: tuple[int, ...],
    g_detailed_agnostic: ArrayLike | None,
    aware_missing: str,
) -> FloatArray:
    """The second summand g(Q_d^i, C_awr,f), filled in where a clip has no aware caption."""
    if aware_missing not in ("zero", "agnostic"):
        raise InputError(f"aware_missing must be 'zero' or 'agnostic', got {aware_missing!r}")
    aware = _normalised_matrix(g_detailed_aware, "g_detailed_aware", shape=shape, finite_where=mask)
    agnostic: FloatArray | None = None
    if g_detailed_agnostic is not None:
        agnostic = _normalised_matrix(g_detailed_agnostic, "g_detailed_agnostic", shape=shape)
    if aware_missing == "zero":
        return aware  # already 0 where mask is False
    if agnostic is None:
        raise InputError("aware_missing='agnostic' needs g_detailed_agnostic (Q_d matched against C_agn)")
    return np.where(mask, aware, agnostic)


def variant_scores(
    g_simplified: ArrayLike,
    g_detailed_aware: ArrayLike,
    aware_mask: ArrayLike,
    *,
    g_detailed_agnostic: ArrayLike | None = None,
    aware_missing: AwareMissing = "zero",
) -> FloatArray:
    """Per-pair fused curves ½[g(Q_s^i, C_agn) + aware term_i], shape (m, n), in [0, 1].

    Exposed so the proposal stage can propose on each variant pair separately and pool the
    windows, which measured better than proposing once on the average (DESIGN.md §1).
    Entries of ``g_detailed_aware`` where ``aware_mask`` is False are ignored and may be NaN.
    """
    simplified = _normalised_matrix(g_simplified, "g_simplified")
    mask = _aware_mask(aware_mask, simplified.shape[1])
    aware = _aware_term(g_detailed_aware, mask, simplified.shape, g_detailed_agnostic, aware_missing)
    return 0.5 * (simplified + aware)


def granular_fusion(
    g_simplified: ArrayLike,
    g_detailed_aware: ArrayLike,
    aware_mask: ArrayLike,
    *,
    g_detailed_agnostic: ArrayLike | None = None,
    aware_missing: AwareMissing = "zero",
) -> FloatArray:
    """The paper's S_f = 1/(2m) Σ_i [g(Q_s^i, C_agn,f) + g(Q_d^i, C_awr,f)], shape (n,), in [0, 1].

    Equal to the mean over i of ``variant_scores``: every pair and both channels weigh the
    same, as in the paper, so no variant needs a tuned weight.
    """
    curves = variant_scores(
        g_simplified,
        g_detailed_aware,
        aware_mask,
        g_detailed_agnostic=g_detailed_agnostic,
        aware_missing=aware_missing,
    )
    return fuse_variants(curves)


def fuse_variants(curves: ArrayLike) -> FloatArray:
    """S_f from the per-pair curves of :func:`variant_scores`: their mean, shape (n,), in [0, 1].

    Checked like the curves it averages (a non-empty (m, n) matrix of finite values in [0, 1]):
    a NaN or an empty matrix would otherwise come back as a NaN curve that ranks nothing.
    """
    fused: FloatArray = np.clip(_normalised_matrix(curves, "curves").mean(axis=0), 0.0, 1.0)
    return fused
