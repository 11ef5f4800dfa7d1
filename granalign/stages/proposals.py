"""Stage 6: candidate windows (seconds) from the fused curves.

The default rule (:func:`granalign.core.moments.propose_windows`) proposes on each variant's curve
and on S_f and pools the windows; ``proposal_mode="vtg-gpt"`` runs the peer's published rule
(:mod:`granalign.core.peer`) instead, which ranks and de-duplicates its windows itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from granalign.core.moments import propose_windows
from granalign.core.peer import vtg_gpt_windows
from granalign.core.proposals import ProposalParams

__all__ = ["ProposalMode", "ProposalSettings", "propose"]

ProposalMode = Literal["pooled", "fused", "vtg-gpt"]


@dataclass(frozen=True)
class ProposalSettings:
    """How to propose (the graph's Context holds these as ``proposal_*`` settings)."""

    mode: ProposalMode
    params: ProposalParams
    contrast: bool
    contrast_min_len: int

    @classmethod
    def of(cls, settings: Any) -> ProposalSettings:
        """The proposal settings of a Context (or any object with the same attributes)."""
        params = ProposalParams(**settings.proposal_kwargs())
        return cls(settings.proposal_mode, params, settings.contrast, settings.contrast_min_len)


def propose(
    variant_scores: Sequence[Sequence[float]],
    fused: Sequence[float],
    *,
    clip_len: float,
    duration: float,
    settings: ProposalSettings,
) -> list[list[float]]:
    """Candidate windows ``[[start_s, end_s, score], ...]`` on the clip grid ``clip_len``.

    ``vtg-gpt`` windows come ranked and de-duplicated already (their NMS works on clip indices),
    so the NMS stage only cuts them to top N.
    """
    if settings.mode == "vtg-gpt":
        return vtg_gpt_windows(np.asarray(variant_scores), clip_len=clip_len, duration=duration)
    return propose_windows(
        np.asarray(variant_scores),
        np.asarray(fused),
        clip_len=clip_len,
        duration=duration,
        params=settings.params,
        mode=settings.mode,
        contrast=settings.contrast,
        contrast_min_len=settings.contrast_min_len,
    )
