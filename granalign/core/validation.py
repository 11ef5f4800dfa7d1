"""Guards against the two failure modes the paper names as limitations.

1. **Rewrite drift.**  An LLM rewrite can drift away from the query (a small model invents a
   subject, answers the question instead of rewriting it).  Each rewrite side is compared with
   the original query in embedding space; a side below ``threshold`` cosine similarity is
   replaced by the original query, and the replacement is counted.
2. **Over-imitation of query-aware captions.**  A captioner prompted with the query's entities
   tends to copy the query's wording into the caption even when the frame does not show it.
   An aware caption is down-weighted by how much more it resembles the query than the clip's
   agnostic caption does, lexically and in embedding space: evidence the agnostic caption also
   supports is not penalised, wording that only the prompt could have supplied is.

Numpy and the standard library only, so both rules can be unit-tested with constructed inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from granalign.core.similarity import as_finite_array, cosine_similarity
from granalign.errors import InputError
from granalign.tokens import content_words

FloatArray = NDArray[np.float64]


# -- rewrite drift --------------------------------------------------------------------------------
def rewrite_similarity(query: ArrayLike, rewrites: ArrayLike) -> FloatArray:
    """Cosine similarity of each rewrite embedding (k, d) with the query embedding (d,)."""
    q = as_finite_array(query, "query", ndim=1)
    r = as_finite_array(rewrites, "rewrites", ndim=2)
    if r.shape[0] == 0:
        return np.zeros(0)
    if r.shape[1] != q.shape[0]:
        raise InputError(f"rewrites have dimension {r.shape[1]}, the query {q.shape[0]}")
    sims: FloatArray = cosine_similarity(q[None, :], r)[0]
    return sims


def check_drift_threshold(threshold: object) -> float:
    """``threshold`` as a float, or InputError unless it is a number in [-1, 1].

    Checked where the threshold is applied, not only in the Context: a NaN compares false with
    every cosine, so ``drifted`` would flag nothing and a caller's ``threshold > -1`` guard would
    turn validation off without a word; a string or an array fails inside numpy instead.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.integer | np.floating):
        raise InputError(f"drift threshold must be a number in [-1, 1], got {threshold!r}")
    value = float(threshold)
    if not math.isfinite(value) or not -1.0 - 1e-9 <= value <= 1.0:
        raise InputError(f"drift threshold must be in [-1, 1], got {threshold}")
    return value


def drifted(similarities: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """Which rewrites drifted: similarity to the query strictly below ``threshold``.

    ``threshold`` ≤ -1 disables the check (every cosine is ≥ -1).
    """
    value = check_drift_threshold(threshold)
    return np.asarray(as_finite_array(similarities, "similarities", ndim=1) < value)


# -- over-imitation -------------------------------------------------------------------------------
def copied_word_share(aware: str, agnostic: str, query: str) -> float:
    """Share of the aware caption's content words taken from the query and absent from C_agn."""
    aware_words = content_words(aware)
    if not aware_words:
        return 0.0
    copied = aware_words & content_words(query)
    unsupported = copied - content_words(agnostic)
    return len(unsupported) / len(aware_words)


@dataclass(frozen=True)
class ImitationGuard:
    """Weights for aware-caption scores.

    ``weight = 1 - clip(lexical_gain * lexical + embedding_gain * max(0, excess - margin), 0, max_penalty)``
    where ``lexical`` is :func:`copied_word_share` and ``excess`` = cos(C_awr, Q) - cos(C_agn, Q).
    Defaults: half the weight at most, so a key clip's aware evidence is damped, never erased.
    """

    lexical_gain: float = 1.0
    embedding_gain: float = 2.0
    margin: float = 0.1
    max_penalty: float = 0.5

    def __post_init__(self) -> None:
        for name in ("lexical_gain", "embedding_gain", "margin"):
            if getattr(self, name) < 0:
                raise InputError(f"ImitationGuard.{name} must be ≥ 0")
        if not 0.0 <= self.max_penalty <= 1.0:
            raise InputError("ImitationGuard.max_penalty must be in [0, 1]")

    def weights(
        self,
        aware_texts: Sequence[str],
        agnostic_texts: Sequence[str],
        query_text: str,
        aware_emb: ArrayLike,
        agnostic_emb: ArrayLike,
        query_emb: ArrayLike,
    ) -> FloatArray:
        """One weight in [1 - max_penalty, 1] per aware caption (same order as the inputs)."""
        if len(aware_texts) != len(agnostic_texts):
            raise InputError(f"{len(aware_texts)} aware captions but {len(agnostic_texts)} agnostic ones")
        q = as_finite_array(query_emb, "query_emb", ndim=1)[None, :]
        aw = as_finite_array(aware_emb, "aware_emb", ndim=2)
        ag = as_finite_array(agnostic_emb, "agnostic_emb", ndim=2)
        if aw.shape != ag.shape or aw.shape[0] != len(aware_texts):
            raise InputError(
                f"embedding shapes {aw.shape} / {ag.shape} do not match {len(aware_texts)} captions"
            )
        if aw.shape[0] == 0:
            return np.zeros(0)
        excess = cosine_similarity(q, aw)[0] - cosine_similarity(q, ag)[0]
        lexical = np.array(
            [copied_word_share(a, g, query_text) for a, g in zip(aware_texts, agnostic_texts, strict=True)]
        )
        penalty = self.lexical_gain * lexical + self.embedding_gain * np.maximum(0.0, excess - self.margin)
        return np.asarray(1.0 - np.clip(penalty, 0.0, self.max_penalty))
