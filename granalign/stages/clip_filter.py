"""Stage 3: the CLIP filter, the top K % clips by query–frame similarity are the key clips.

Only key clips get query-aware captions (a VLM call each), so K bounds the query-time cost.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from granalign.backends.clip import ClipEncoder

__all__ = ["clip_filter", "key_clips"]


def key_clips(frames: NDArray[np.float32], text: NDArray[np.float32], key_pct: float) -> list[int]:
    """Indices (ascending) of the ``ceil(key_pct % · n)`` clips (at least one) whose frame
    embedding is most similar to the query's CLIP text embedding; ties keep clip order."""
    scores = (frames @ text).astype(float)
    k = max(1, math.ceil(key_pct / 100.0 * len(scores) - 1e-9))
    order = np.argsort(-scores, kind="stable")[:k]
    return sorted(int(i) for i in order)


def clip_filter(frames: NDArray[np.float32], clip: ClipEncoder, query: str, key_pct: float) -> list[int]:
    """The key clips of a video (``frames``: one CLIP image embedding per clip) for ``query``."""
    return key_clips(frames, clip.embed_texts([query])[0], key_pct)
