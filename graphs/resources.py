"""Process-level resources a graph run needs but State must not hold.

Models and store clients are heavy and not serialisable, so nodes look them up here by the
spec strings in Context: one instance per spec per process, shared by every run and thread.
Caption embeddings of recently used videos are kept in a small LRU cache because a benchmark
asks several queries of the same video and Chroma reads cost more than the math.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from granalign.backends.embedder import TextEmbedder, make_embedder
from granalign.errors import InputError
from granalign.rewrite import Rewrite, Rewriter, make_rewriter, rewrite_queries
from granalign.store import Store, VideoRecord, open_store, text_hash
from graphs.context import Context
from prompts import DEFAULT_PAIRS, PromptPair, load_prompt_pairs, prompt_hash


def store_for(ctx: Context) -> Store:
    return open_store(ctx.store_dir or None, ctx.chroma_url or None)


def embedder_for(ctx: Context) -> TextEmbedder:
    return make_embedder(ctx.embedder)


@lru_cache(maxsize=8)
def rewriter_for_spec(spec: str) -> Rewriter:
    return make_rewriter(spec)


def rewriter_for(ctx: Context) -> Rewriter:
    return rewriter_for_spec(ctx.rewriter)


def is_pairless(rewriter: Rewriter) -> bool:
    return bool(getattr(rewriter, "pairless", False))


def pairs_for(ctx: Context) -> list[PromptPair]:
    """The prompt pairs named in Context, or the first m of the default order."""
    ids = [p.strip() for p in ctx.prompt_pairs.split(",") if p.strip()] or list(DEFAULT_PAIRS[: ctx.m])
    return load_prompt_pairs(ids)


@dataclass(frozen=True)
class VideoCaptions:
    record: VideoRecord
    captions: list[str]
    embeddings: NDArray[np.float32]


_CAPTIONS: OrderedDict[tuple[str, str, str], VideoCaptions] = OrderedDict()
_CAPTIONS_LOCK = threading.Lock()
_CAPTIONS_MAX = 512


def video_captions(ctx: Context, video_id: str) -> VideoCaptions:
    """Agnostic captions C_agn of a stored video and their embeddings (LRU-cached)."""
    store = store_for(ctx)
    embedder = embedder_for(ctx)
    key = (store.location, video_id, embedder.name)
    with _CAPTIONS_LOCK:
        hit = _CAPTIONS.get(key)
        if hit is not None:
            _CAPTIONS.move_to_end(key)
            return hit
    record = store.video(video_id)
    if record is None or not record.complete:
        raise InputError(
            f"video {video_id!r} is not in the store at {store.location}; "
            "import its captions first (granalign index --captions FILE)"
        )
    if record.caption_embedder and record.caption_embedder != embedder.name:
        raise InputError(
            f"video {video_id!r} was indexed with embedder {record.caption_embedder!r}, "
            f"but this run uses {embedder.name!r}; re-run granalign index with this embedder"
        )
    captions, emb = store.get_captions(video_id, source=record.caption_source, embedder_name=embedder.name)
    if not captions:
        raise InputError(f"video {video_id!r} has no captions in the store at {store.location}")
    value = VideoCaptions(record, captions, emb)
    with _CAPTIONS_LOCK:
        _CAPTIONS[key] = value
        while len(_CAPTIONS) > _CAPTIONS_MAX:
            _CAPTIONS.popitem(last=False)
    return value


def clear_caches() -> None:
    """Forget cached captions (a benchmark's cold pass, tests)."""
    with _CAPTIONS_LOCK:
        _CAPTIONS.clear()


def rewrite_cache_key(rewriter: Rewriter, pair: PromptPair, query: str) -> str:
    """Explicit cache key: rewriter model + prompt hash + query hash."""
    return f"{rewriter.name}:{prompt_hash(pair)}:{text_hash(query)}"


def cached_rewrites(ctx: Context, pair: PromptPair, queries: list[str]) -> list[Rewrite]:
    """Rewrites of ``queries`` by ``pair``, computed once and kept in the store.

    Missing ones are generated in one batch (an LLM batches its generation) and written
    before returning, so an interrupted benchmark keeps every finished rewrite.
    """
    rewriter = rewriter_for(ctx)
    store = store_for(ctx)
    keys = [rewrite_cache_key(rewriter, pair, q) for q in queries]
    found = store.get_rewrites(keys)
    missing = sorted({q for q, k in zip(queries, keys, strict=True) if k not in found})
    if missing:
        fresh = rewrite_queries(rewriter, missing, [pair])
        new = {
            rewrite_cache_key(rewriter, pair, q): r[0].to_dict() for q, r in zip(missing, fresh, strict=True)
        }
        store.put_rewrites(new, {rewrite_cache_key(rewriter, pair, q): q for q in missing})
        found.update(new)
    return [Rewrite.from_dict(found[k]) for k in keys]


def warm_rewrites(
    ctx: Context,
    queries: list[str],
    batch: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Fill the rewrite cache for many queries ahead of a benchmark; returns rewrites made ready.

    Batching across queries is what makes a local LLM usable on a CPU; every batch is written
    to the store before the next starts, so an interrupted run resumes where it stopped.
    """
    rewriter = rewriter_for(ctx)
    if is_pairless(rewriter):
        return 0
    unique = sorted(set(queries))
    pairs = pairs_for(ctx)
    total, done = len(unique) * len(pairs), 0
    for pair in pairs:
        for lo in range(0, len(unique), batch):
            part = unique[lo : lo + batch]
            cached_rewrites(ctx, pair, part)
            done += len(part)
            if on_progress:
                on_progress(done, total)
    return done
