"""Embedding for caption imports: each distinct caption text once per store, in length-sorted batches.

Why: an import is almost all sentence embedding.  Captioners repeat themselves (on static
shots, across videos of the same show), and a re-import under another source tag, or a resumed
import, meets texts the store already holds.  So the videos to import are taken in chunks of
about ``chunk_texts`` distinct texts (bounded memory however large the file); for each chunk the
texts already in the store's ``caption_texts.<embedder>`` collection are read back, only the rest
are embedded (one ``embed`` call, whose batches the embedder sorts by length, across videos),
and recorded there before any caption that uses them is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from granalign.backends.embedder import TextEmbedder
from granalign.io.store import Store

if TYPE_CHECKING:
    from granalign.io.captions_import import CaptionedVideo

CHUNK_TEXTS = 20_000
"""Distinct texts per chunk: ~30 MB of MiniLM vectors, and one embedding call long enough that
length-sorted batches are nearly free of padding."""


@dataclass
class EmbeddingTally:
    """How many distinct texts were embedded now and how many were found in the store."""

    computed: int = 0
    reused: int = 0


def chunks_of_videos(
    videos: Iterable[CaptionedVideo], chunk_texts: int = CHUNK_TEXTS
) -> Iterator[list[CaptionedVideo]]:
    """Consecutive videos holding about ``chunk_texts`` distinct texts (a video is never split)."""
    chunk: list[CaptionedVideo] = []
    texts: set[str] = set()
    for video in videos:
        chunk.append(video)
        texts.update(video.captions)
        if len(texts) >= chunk_texts:
            yield chunk
            chunk, texts = [], set()
    if chunk:
        yield chunk


def embed_distinct(
    store: Store, embedder: TextEmbedder, texts: Iterable[str], tally: EmbeddingTally | None = None
) -> dict[str, NDArray[np.float32]]:
    """``{text: embedding}`` for every distinct text: read from the store, or embedded once and stored."""
    wanted = sorted(set(texts), key=lambda t: (len(t), t))  # length order: batches with little padding
    vectors = store.get_text_embeddings(wanted, embedder_name=embedder.name)
    missing = [t for t in wanted if t not in vectors]
    if missing:
        fresh = np.asarray(embedder.embed(missing), dtype=np.float32)
        store.put_text_embeddings(missing, fresh, embedder_name=embedder.name)
        vectors.update(zip(missing, fresh, strict=True))
    if tally is not None:
        tally.computed += len(missing)
        tally.reused += len(wanted) - len(missing)
    return vectors


def embedded_chunks(
    store: Store,
    embedder: TextEmbedder,
    videos: Iterable[CaptionedVideo],
    *,
    chunk_texts: int = CHUNK_TEXTS,
    tally: EmbeddingTally | None = None,
) -> Iterator[tuple[list[CaptionedVideo], dict[str, NDArray[np.float32]]]]:
    """Chunks of ``videos`` with the embedding of every caption text they use."""
    for chunk in chunks_of_videos(videos, chunk_texts):
        yield chunk, embed_distinct(store, embedder, (c for v in chunk for c in v.captions), tally)
