"""Stage 1 (after the LLM): the query variants to score, validated against the query.

The rewrites themselves come from a :class:`~granalign.rewrite.Rewriter` (one per prompt pair,
cached by the graph); this stage turns them into the variants the fusion scores: the original
query (when asked) and every distinct rewrite in a deterministic order, each side replaced by
the query when it drifted from it (:mod:`granalign.core.validation`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from granalign.backends.embedder import TextEmbedder
from granalign.core.validation import check_drift_threshold, drifted, rewrite_similarity
from granalign.rewrite import Rewrite

__all__ = ["EmbeddedVariants", "embed_variants", "query_variants", "replace_drifted"]


def query_variants(query: str, rewrites: Iterable[Rewrite], *, include_original: bool) -> list[Rewrite]:
    """Original (if asked) + rewrites by pair id, de-duplicated; never empty.

    Sorted by pair id so the order (and so every float sum over variants) does not depend on
    which concurrent rewrite task finished first.
    """
    found = sorted(rewrites, key=lambda r: r.pair_id)
    out: list[Rewrite] = [Rewrite.original(query)] if include_original else []
    seen = {(r.simplified, r.detailed) for r in out}
    for r in found:
        if (r.simplified, r.detailed) not in seen:
            seen.add((r.simplified, r.detailed))
            out.append(r)
    return out or [Rewrite.original(query)]


def replace_drifted(
    variants: list[Rewrite], query: str, emb: dict[str, NDArray[np.float32]], threshold: float
) -> tuple[list[Rewrite], int]:
    """Rewrite validation: a side whose cosine to the query is below ``threshold`` becomes the query.

    A small LLM sometimes answers the question or invents a subject instead of rewriting; such a
    side would pull the scores towards the wrong clips.  Returns the variants and how many sides
    were replaced (reported in the notes).
    """
    sides = [t for r in variants for t in (r.simplified, r.detailed)]
    bad = drifted(rewrite_similarity(emb[query], np.stack([emb[t] for t in sides])), threshold)
    bad &= np.array([t != query for t in sides])  # the query's cosine with itself may round below 1
    if not bad.any():
        return variants, 0
    out = []
    for i, r in enumerate(variants):
        s_bad, d_bad = bool(bad[2 * i]), bool(bad[2 * i + 1])
        if s_bad or d_bad:
            r = Rewrite(
                r.pair_id,
                query if s_bad else r.simplified,
                query if d_bad else r.detailed,
                r.fallback,
                (r.reason + "; " if r.reason else "") + "drifted from the query: replaced",
            )
        out.append(r)
    return out, int(bad.sum())


@dataclass(frozen=True)
class EmbeddedVariants:
    """The validated variants and their embeddings: Q_s and Q_d (one row per variant), Q."""

    variants: list[Rewrite]
    q_s: NDArray[np.float32]
    q_d: NDArray[np.float32]
    query_emb: NDArray[np.float32]
    replaced: int
    """Rewrite sides replaced by the query because they drifted (0 when the check is off)."""


def embed_variants(
    query: str, variants: list[Rewrite], embedder: TextEmbedder, drift_threshold: float
) -> EmbeddedVariants:
    """Embed every distinct text once (sorted: the same batch every run), then validate.

    ``drift_threshold`` ≤ -1 turns rewrite validation off (every cosine is ≥ -1).
    """
    threshold = check_drift_threshold(drift_threshold)  # before the model: NaN would read as "off"
    texts = sorted({query} | {t for r in variants for t in (r.simplified, r.detailed)})
    emb = dict(zip(texts, embedder.embed(texts), strict=True))
    replaced = 0
    if threshold > -1.0:
        variants, replaced = replace_drifted(variants, query, emb, threshold)
    q_s = np.stack([emb[r.simplified] for r in variants])
    q_d = np.stack([emb[r.detailed] for r in variants])
    return EmbeddedVariants(variants, q_s, q_d, emb[query], replaced)
