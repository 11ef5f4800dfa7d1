"""Stage 7: temporal NMS to the top-N moments, and S_f as the saliency curve.

The answer is rounded here (:func:`granalign.core.moments.rounded_answer`), the one place every
front end's numbers come from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from granalign.core.moments import rounded_answer, saliency, select_moments
from granalign.core.nms import temporal_nms
from granalign.core.peer import VTG_GPT
from granalign.stages.proposals import ProposalMode

__all__ = ["AnswerSettings", "answer", "saliency_length"]


@dataclass(frozen=True)
class AnswerSettings:
    """NMS and saliency settings (the graph's Context has them under the same names)."""

    proposal_mode: ProposalMode
    nms_iou: float
    top_n: int
    saliency_sigma: float
    distinct: bool = False
    """The distinct answer profile: no two windows may overlap at IoU ≥ ``nms_iou``, the
    peer's own windows included (its NMS keeps some duplicates, see ``answer``)."""

    @classmethod
    def of(cls, settings: Any) -> AnswerSettings:
        """The answer settings of a Context (or any object with the same attributes)."""
        nms_iou = getattr(settings, "answer_nms_iou", settings.nms_iou)  # the answer profile's IoU
        distinct = getattr(settings, "answer_profile", "benchmark") == "distinct"
        return cls(settings.proposal_mode, nms_iou, settings.top_n, settings.saliency_sigma, distinct)


def saliency_length(duration: float, clip_len: float, n_clips: int | None = None) -> int:
    """How many saliency values to return: one per stored clip of an ingested video
    (``n_clips``), else one per ``clip_len`` of the whole duration (at least one)."""
    if n_clips is not None:
        return int(n_clips)
    return max(1, math.ceil(duration / clip_len - 1e-9))


def answer(
    candidates: Sequence[Sequence[float]],
    fused: Sequence[float],
    *,
    duration: float,
    n_out: int,
    settings: AnswerSettings,
) -> tuple[list[list[float]], list[float]]:
    """Ranked moments (never none: the whole video when nothing was proposed) and the saliency
    curve of ``n_out`` values (the last clip's value repeated to the end), both rounded.

    The peer (``vtg-gpt``) ranked its own windows: they are cut to top N (after NMS at the
    answer profile's IoU when it is stricter than the peer's own or the profile is distinct, as
    for the tool, CLI and MCP: the peer's NMS never suppresses with a one-clip window, so it
    keeps identical windows), and its saliency is S_f as is (no smoothing).
    """
    peer = settings.proposal_mode == "vtg-gpt"
    moments = select_moments(
        [] if peer else candidates,
        np.asarray(fused),
        duration=duration,
        nms_iou=settings.nms_iou,
        top_n=settings.top_n,
    )
    if peer and candidates:
        ranked = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
        if settings.nms_iou < VTG_GPT.nms_iou or settings.distinct:  # its windows must differ too
            ranked = temporal_nms(ranked, settings.nms_iou, settings.top_n)
        moments = [[float(v) for v in row] for row in ranked[: settings.top_n]]
    curve = saliency(fused, sigma=0.0 if peer else settings.saliency_sigma)
    curve = (curve + [curve[-1]] * n_out)[:n_out]
    return rounded_answer(moments, curve)
