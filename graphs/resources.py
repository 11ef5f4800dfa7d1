"""Process-level resources a graph run needs but State must not hold.

Models and store clients are heavy and not serialisable, so nodes look them up here by the
spec strings in Context: one instance per spec per process, shared by every run and thread.
Caption and frame embeddings of recently used videos are kept in small LRU caches because a
benchmark asks several queries of the same video and Chroma reads cost more than the math.

Cache keys of ingested videos (all explicit, all in the store's ids):

* ``sampling_key``: clip length and frame rule; ``agnostic_prompt_hash``: the agnostic caption
  prompt, frame size and caption length; ``ingest_key``: both plus the CLIP model, captioner and
  text embedder.  A video record whose ``ingest_key`` differs from the run's is re-ingested
  (finished clips under the same ids are kept).
* query-aware captions: captioner + aware prompt settings + the hash of the rendered prompt
  (which holds the query's entities and actions), per clip.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from granalign.backends.captioner import AGNOSTIC_PROMPT, AWARE_PROMPT, Captioner, QueryFocus, make_captioner
from granalign.backends.clip import ClipEncoder, make_clip_encoder
from granalign.backends.embedder import TextEmbedder, make_embedder
from granalign.backends.rewriter import make_rewriter
from granalign.core.similarity import CaptionMatrix, caption_matrix
from granalign.errors import InputError
from granalign.io.store import Store, VideoRecord, default_store_dir, open_store, text_hash
from granalign.io.store import close_stores as close_open_stores
from granalign.io.store import store_location as _store_location
from granalign.io.video import content_hash, parse_roots, resolve_video_path
from granalign.prompt_files import available_pair_ids, load_prompt_pairs
from granalign.rewrite import Rewrite, Rewriter, rewrite_queries
from granalign.specs import parse_spec
from granalign.stages import aware_captions as stage
from granalign.text import clean_query
from graphs.context import Context
from prompts import DEFAULT_PAIRS, PromptPair, prompt_hash


def store_for(ctx: Context) -> Store:
    """The run's store; an embedded folder stays locked for this process (see close_stores)."""
    return open_store(ctx.store_dir or None, ctx.chroma_url or None, lock_timeout=ctx.store_lock_timeout)


def store_location(ctx: Context) -> str:
    """Where the run's store is (:attr:`Store.location`), without opening it."""
    return _store_location(ctx.store_dir or None, ctx.chroma_url or None)


def embedder_for(ctx: Context) -> TextEmbedder:
    return make_embedder(ctx.embedder)


@lru_cache(maxsize=8)
def rewriter_for_spec(spec: str) -> Rewriter:
    return make_rewriter(spec)


@lru_cache(maxsize=8)
def _served_rewriter(spec: str, timeout_s: float, attempts: int, concurrency: int) -> Rewriter:
    return make_rewriter(spec, timeout_s=timeout_s, attempts=attempts, concurrency=concurrency)


@lru_cache(maxsize=8)
def _file_rewriter(spec: str, version: tuple[int, int]) -> Rewriter:
    return make_rewriter(spec)


def rewriter_for(ctx: Context) -> Rewriter:
    """The run's rewriter; an ``openai:`` one also carries the Context's request limits.

    A ``file:`` rewriter is cached per file version (modification time and size): a server
    (``langgraph dev``, MCP) keeps running while a researcher edits the paraphrase file, and
    must not keep answering from the old content.
    """
    parsed = parse_spec(ctx.rewriter, role="rewriter")
    if parsed.engine == "openai":
        return _served_rewriter(ctx.rewriter, ctx.request_timeout, ctx.request_attempts, ctx.concurrency)
    if parsed.engine == "file":
        try:
            info = os.stat(parsed.target)
        except OSError:
            return rewriter_for_spec(ctx.rewriter)  # the rewriter's own error names the file
        return _file_rewriter(ctx.rewriter, (info.st_mtime_ns, info.st_size))
    return rewriter_for_spec(ctx.rewriter)


def clip_for(ctx: Context) -> ClipEncoder:
    return make_clip_encoder(ctx.clip_model, ctx.clip_pretrained)


@lru_cache(maxsize=8)
def _captioner(
    spec: str, max_pixels: int, max_tokens: int, concurrency: int, timeout_s: float, attempts: int
) -> Captioner:
    return make_captioner(
        spec,
        max_pixels=max_pixels,
        max_tokens=max_tokens,
        concurrency=concurrency,
        timeout_s=timeout_s,
        attempts=attempts,
    )


def captioner_for(ctx: Context, *, aware: bool = False) -> Captioner:
    """The agnostic captioner (ingest), or with ``aware=True`` the query-aware one (key clips)."""
    spec = ctx.aware_captioner_spec if aware else ctx.captioner
    return _captioner(
        spec, ctx.max_pixels, ctx.caption_tokens, ctx.concurrency, ctx.request_timeout, ctx.request_attempts
    )


def video_roots(ctx: Context) -> tuple[Path, ...]:
    return parse_roots(ctx.video_roots)


def chroma_url(ctx: Context) -> str | None:
    """The Chroma server a Context's store is on (``chroma_url``, else ``$CHROMA_URL``), or None
    for an embedded folder: the same rule :func:`granalign.io.store.open_store` applies."""
    return ctx.chroma_url or os.environ.get("CHROMA_URL") or None


def local_state_dir(ctx: Context) -> Path:
    """This host's folder for run state beside the store (locks, checkpoints).

    The embedded store's folder; with a Chroma server there is no local store folder, so the
    user cache directory.
    """
    if chroma_url(ctx):
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("granalign"))
    return Path(ctx.store_dir).expanduser() if ctx.store_dir else default_store_dir()


def lock_dir_for(ctx: Context) -> Path:
    """Where the per-video ingest locks live (see :mod:`granalign.io.locks`)."""
    return Path(ctx.lock_dir).expanduser() if ctx.lock_dir else local_state_dir(ctx) / "locks"


# -- cache keys of ingested videos ------------------------------------------------------------


def sampling_key(ctx: Context) -> str:
    """Which frame stands for a clip: the centre frame of ``clip_len``-second clips."""
    return text_hash(f"centre-frame;clip_len={ctx.clip_len:g}")


def agnostic_prompt_hash(ctx: Context) -> str:
    return text_hash(f"{AGNOSTIC_PROMPT}|{sampling_key(ctx)}|px={ctx.max_pixels}|tok={ctx.caption_tokens}")


def aware_prompt_hash(ctx: Context) -> str:
    return text_hash(f"{AWARE_PROMPT}|{sampling_key(ctx)}|px={ctx.max_pixels}|tok={ctx.caption_tokens}")


def ingest_key(ctx: Context) -> str:
    """Everything an ingested video's stored clips depend on."""
    parts = [
        sampling_key(ctx),
        agnostic_prompt_hash(ctx),
        clip_for(ctx).name,
        captioner_for(ctx).name,
        embedder_for(ctx).name,
    ]
    return text_hash("|".join(parts))


def is_pairless(rewriter: Rewriter) -> bool:
    return bool(getattr(rewriter, "pairless", False))


def pair_ids_for(ctx: Context) -> list[str]:
    """The ids of the prompt pairs named in Context, or the first m of the default order (the
    files are not read: see :func:`pairs_for`)."""
    ids = [p.strip() for p in ctx.prompt_pairs.split(",") if p.strip()]
    if not ids:  # the default order, then every other pair file (a new file is a new pair)
        avail = available_pair_ids()
        ordered = [i for i in DEFAULT_PAIRS if i in avail] + [i for i in avail if i not in DEFAULT_PAIRS]
        if ctx.m > len(ordered):
            raise InputError(
                f"m={ctx.m} prompt pairs asked for, but the prompt folder has only {len(ordered)}: "
                f"{', '.join(ordered)}"
            )
        ids = ordered[: ctx.m]
    return ids


def pairs_for(ctx: Context) -> list[PromptPair]:
    """The prompt pairs named in Context, or the first m of the default order."""
    return load_prompt_pairs(pair_ids_for(ctx))


def prompt_pair_notes(ctx: Context, rewriter: Rewriter) -> list[str]:
    """Check the run's pair selection, also for a rewriter that reads no pair; the note a run
    gives when ``prompt_pairs`` and ``m`` disagree.

    Checked even when unused (``bench`` does the same before a run): otherwise
    ``prompt_pairs=nosuch`` with rewriter ``none`` is accepted and fails only on the day the
    rewriter changes.  Named pairs are the ones used, whatever ``m`` says (``experiment`` sets
    both alike); the note keeps ``prompt_pairs=core, m=3`` from reading as three pairs.
    """
    pairs = pairs_for(ctx)  # an unknown or broken pair, or m beyond the prompt folder: InputError
    if is_pairless(rewriter) or not ctx.prompt_pairs.strip() or ctx.m == len(pairs):
        return []
    ids = ", ".join(p.id for p in pairs)
    return [
        f"prompt_pairs names {len(pairs)} pair(s) ({ids}), so those were used and m={ctx.m} did not "
        "apply (m only counts the default pairs when prompt_pairs is empty)"
    ]


@dataclass(frozen=True)
class VideoCaptions:
    """A stored video's agnostic captions, as every query of it reads them.

    ``checked`` is ``embeddings`` converted to float64, checked for NaN and with its norms, made
    once when the video is loaded (encode once, predict many): each query's fuse step read it
    three times, and at 18,000 clips that conversion was a quarter of the step's time.
    """

    record: VideoRecord
    captions: list[str]
    embeddings: NDArray[np.float32]
    checked: CaptionMatrix

    @property
    def nbytes(self) -> int:
        """Memory the cache holds for this video (both copies of the embeddings)."""
        return int(self.embeddings.nbytes + self.checked.values.nbytes + self.checked.norms.nbytes)


_CAPTIONS: OrderedDict[tuple[str, str, str], VideoCaptions] = OrderedDict()
_CAPTIONS_LOCK = threading.Lock()
_CAPTIONS_MAX = 512
_CACHE_BYTES = 1 << 30
"""Embedding bytes each LRU may hold: a 10-hour video's caption embeddings are ~28 MB as stored
plus ~55 MB checked (float64, :class:`VideoCaptions`), so a count bound alone would let a library
of long videos grow the process to many GB."""


def _evict(cache: OrderedDict[Any, Any], max_items: int, size: Callable[[Any], int]) -> None:
    """Drop least-recently-used entries past ``max_items`` or ``_CACHE_BYTES`` (keep the newest)."""
    total = sum(size(v) for v in cache.values())
    while len(cache) > 1 and (len(cache) > max_items or total > _CACHE_BYTES):
        _, old = cache.popitem(last=False)
        total -= size(old)


def video_captions(
    ctx: Context, video_id: str, *, check: bool = False, record: VideoRecord | None = None
) -> VideoCaptions:
    """Agnostic captions C_agn of a stored video and their embeddings (LRU-cached).

    ``check``: read the video's record and reload when it changed since it was cached (a
    re-import of an edited file, a removal, here or in another process sharing the store);
    the retrieval's first step does, the steps after it reuse what it loaded.  ``record``: the
    record the caller has just read for this check (one store read per query, one HTTP round
    trip with a Chroma server, instead of two).
    """
    store = store_for(ctx)
    embedder = embedder_for(ctx)
    key = (store.location, video_id, embedder.name)
    fresh = None
    if check:
        fresh = record if record is not None and record.video_id == video_id else store.video(video_id)
    with _CAPTIONS_LOCK:
        hit = _CAPTIONS.get(key)
        if hit is not None and (not check or hit.record == fresh):
            _CAPTIONS.move_to_end(key)
            return hit
    record = fresh if check else store.video(video_id)
    if record is None or not record.complete:
        raise InputError(
            f"video {video_id!r} is not in the store at {store.location}; "
            "import its captions first (granalign index --captions FILE)"
        )
    if record.caption_embedder and record.caption_embedder != embedder.name:
        again = (
            "ingest it again (granalign index FILE)"
            if record.has_frames
            else "re-import its captions (granalign index --captions FILE)"
        )
        raise InputError(
            f"video {video_id!r} was not imported with this embedder: its caption vectors are "
            f"{record.caption_embedder!r}'s, this run's embedder is {embedder.name!r}; {again} "
            "with this embedder, or set embedder to the model it was imported with"
        )
    prompt = record.caption_prompt or None  # ingested videos: only the captions of this prompt
    captions, emb = store.get_captions(
        video_id, source=record.caption_source, embedder_name=embedder.name, prompt_hash=prompt
    )
    if len(captions) != record.n_clips:
        raise InputError(_caption_count_problem(record, len(captions), store.location))
    if not captions:
        raise InputError(f"video {video_id!r} has no captions in the store at {store.location}")
    value = VideoCaptions(record, captions, emb, caption_matrix(emb, f"caption embeddings of {video_id!r}"))
    with _CAPTIONS_LOCK:
        _CAPTIONS[key] = value
        _evict(_CAPTIONS, _CAPTIONS_MAX, lambda v: v.nbytes)
    return value


def _caption_count_problem(record: VideoRecord, found: int, location: str) -> str:
    """Why a video's captions cannot be read as its clips, and what fixes it: an ingest cut short
    is finished by indexing its file again; rows beyond the record's clips (left by an older
    version's re-import) would be read into the curve, and only a rebuild removes them."""
    vid = record.video_id
    if found < record.n_clips and record.has_frames:
        return (
            f"video {vid!r} has {found} of {record.n_clips} clip captions in the store at {location}; "
            "re-run granalign index on its file to finish it"
        )
    if found < record.n_clips:
        what = f"{found} of {record.n_clips} clip captions"
    else:
        what = f"{found} caption rows for its {record.n_clips} clips (rows an older version's re-import left)"
    return (
        f"video {vid!r} has {what} in the store at {location}; "
        f"rebuild it: granalign videos rm -- {vid}, then re-run its import or ingest"
    )


def clear_caches(*, close_stores: bool = False) -> None:
    """Forget cached captions and frames (a benchmark's cold pass, tests).

    ``close_stores=True`` also closes the open stores, so another process (a server, a child
    process) may open their embedded folders; the next :func:`store_for` opens them again.
    """
    with _CAPTIONS_LOCK:
        _CAPTIONS.clear()
    with _FRAMES_LOCK:
        _FRAMES.clear()
    if close_stores:
        close_open_stores()


_FRAMES: OrderedDict[tuple[str, str, str, str], NDArray[np.float32]] = OrderedDict()
_FRAMES_LOCK = threading.Lock()


def forget_video(video_id: str) -> None:
    """Drop one video's cached captions and frames (after it was (re-)ingested)."""
    with _CAPTIONS_LOCK:
        for key in [k for k in _CAPTIONS if k[1] == video_id]:
            del _CAPTIONS[key]
    with _FRAMES_LOCK:
        for fkey in [k for k in _FRAMES if k[1] == video_id]:
            del _FRAMES[fkey]


def video_frames(ctx: Context, record: VideoRecord) -> NDArray[np.float32]:
    """CLIP image embeddings of an ingested video, one row per clip in order (LRU-cached)."""
    store = store_for(ctx)
    key = (store.location, record.video_id, record.clip_model, sampling_key(ctx))
    with _FRAMES_LOCK:
        hit = _FRAMES.get(key)
        if hit is not None:
            _FRAMES.move_to_end(key)
            return hit
    clips, emb = store.get_frames(
        record.video_id, clip_model=record.clip_model, sampling_key=sampling_key(ctx)
    )
    if clips != list(range(record.n_clips)):
        raise InputError(
            f"video {record.video_id!r} has {len(clips)} of {record.n_clips} frame embeddings in the store "
            f"at {store.location}; re-run granalign index on its file"
        )
    with _FRAMES_LOCK:
        _FRAMES[key] = emb
        _evict(_FRAMES, 64, lambda v: int(v.nbytes))
    return emb


def video_file(ctx: Context, record: VideoRecord, given: str | None = None) -> Path:
    """The file of an ingested video, checked to still hold the same bytes (for decoding frames)."""
    candidates = [c for c in (given, record.path) if c]
    if not candidates:
        raise InputError(f"video {record.video_id!r} has no file path in the store")
    problem = ""
    for candidate in candidates:
        try:
            path = resolve_video_path(candidate, video_roots(ctx))
        except InputError as exc:
            problem = str(exc)
            continue
        if content_hash(path) == record.video_id:
            return path
        problem = f"{candidate} no longer holds the ingested video (its content changed)"
    raise InputError(f"the file of video {record.video_id!r} is not available: {problem}")


# -- query focus and query-aware captions (the stages, with this run's backends and store) --


def query_focus(ctx: Context, query: str) -> QueryFocus:
    """The entities and actions that guide the query's aware captions (:func:`stages.query_focus`)."""
    return stage.query_focus(rewriter_for(ctx), store_for(ctx), query)


def _frame_decoder(
    ctx: Context, record: VideoRecord, video_path: str | None
) -> Callable[[list[int]], list[Any]]:
    """Decode the centre frames of some clips of an ingested video (one seek each)."""

    def decode(clips: list[int]) -> list[Any]:
        from granalign.io.video import clip_times, sample_frames

        path = video_file(ctx, record, video_path)
        times = clip_times(record.duration_s, record.clip_len_s)
        found = sample_frames(path, times, clip_len=record.clip_len_s, clips=clips, max_pixels=ctx.max_pixels)
        return [img for _, img in found]

    return decode


def aware_captions(
    ctx: Context,
    record: VideoRecord,
    clips: Sequence[int],
    query: str,
    focus: QueryFocus,
    *,
    video_path: str | None = None,
    compute: bool = True,
) -> stage.AwareCaptions:
    """C_awr of ``clips`` (:func:`stages.aware_captions`); ``compute=False`` only reads the store."""
    return stage.aware_captions(
        store_for(ctx),
        captioner_for(ctx, aware=True),
        embedder_for(ctx),
        record.video_id,
        clips,
        query,
        focus,
        prompt_hash=aware_prompt_hash(ctx),
        frames=_frame_decoder(ctx, record, video_path) if compute else None,
    )


def rewrite_cache_key(rewriter: Rewriter, pair: PromptPair, query: str) -> str:
    """Explicit cache key: rewriter model + prompt hash + query hash."""
    return f"{rewriter.name}:{prompt_hash(pair)}:{text_hash(query)}"


def cached_rewrites(ctx: Context, pair: PromptPair, queries: list[str]) -> list[Rewrite]:
    """Rewrites of ``queries`` by ``pair``, computed once and kept in the store.

    Missing ones are generated in one batch (an LLM batches its generation) and written
    before returning, so an interrupted benchmark keeps every finished rewrite.  A fallback
    (unusable model output) is returned but never stored: the next run asks the model again
    instead of keeping the original query forever.
    """
    rewriter = rewriter_for(ctx)
    store = store_for(ctx)
    keys = [rewrite_cache_key(rewriter, pair, q) for q in queries]
    found = store.get_rewrites(keys)
    missing = sorted({q for q, k in zip(queries, keys, strict=True) if k not in found})
    if missing:
        asked = {rewrite_cache_key(rewriter, pair, q): q for q in missing}
        fresh = [r[0] for r in rewrite_queries(rewriter, missing, [pair])]
        new = {k: r.to_dict() for k, r in zip(asked, fresh, strict=True)}
        usable = {k: new[k] for k, r in zip(asked, fresh, strict=True) if not r.fallback}
        store.put_rewrites(usable, {k: asked[k] for k in usable})
        found.update(new)
    return [Rewrite.from_dict(found[k]) for k in keys]


def graph_query(query: str) -> str:
    """``query`` as the graph rewrites it (cleaned, see :func:`granalign.text.clean_query`), so a
    rewrite made ahead of a run has the graph's cache key; one the graph refuses is kept as given."""
    try:
        return clean_query(query)
    except InputError:
        return query


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
    unique = sorted({graph_query(q) for q in queries})  # a dataset's "A ship  with ...": cleaned
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
