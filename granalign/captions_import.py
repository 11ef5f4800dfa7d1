"""Import precomputed query-agnostic captions (C_agn) into the store.

Benchmarks such as QVHighlights ship captions but no frames; importing them once lets every
later query read embeddings instead of re-encoding ~100k captions.  The import is idempotent
(deterministic ids) and resumable (videos already complete for this source and embedder are
skipped; a video is marked complete only after all its captions are written).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granalign.backends.embedder import TextEmbedder
from granalign.errors import InputError
from granalign.jsonl import iter_jsonl
from granalign.store import Store, VideoRecord

IMPORT_PROMPT_HASH = "imported"


@dataclass(frozen=True)
class CaptionedVideo:
    """One line of a captions file: ``{"vid", "clip_len_s", "captions": [...], "duration"?}``."""

    vid: str
    clip_len_s: float
    captions: tuple[str, ...]
    duration_s: float


@dataclass
class ImportReport:
    total: int = 0
    skipped: int = 0
    imported: int = 0
    captions: int = 0


def _validate(obj: dict[str, object], where: str) -> CaptionedVideo:
    vid = obj.get("vid")
    if not isinstance(vid, str) or not vid.strip():
        raise InputError(f"{where}: 'vid' must be a non-empty string")
    caps = obj.get("captions")
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise InputError(f"{where}: 'captions' must be a non-empty list of strings (video {vid})")
    clip_len = obj.get("clip_len_s", 2)
    if (
        not isinstance(clip_len, int | float)
        or isinstance(clip_len, bool)
        or not math.isfinite(clip_len)
        or not clip_len > 0
    ):
        raise InputError(f"{where}: 'clip_len_s' must be a positive number (video {vid})")
    duration = obj.get("duration", len(caps) * float(clip_len))
    if (
        not isinstance(duration, int | float)
        or isinstance(duration, bool)
        or not math.isfinite(duration)
        or duration <= 0
    ):
        raise InputError(f"{where}: 'duration' must be a positive number (video {vid})")
    return CaptionedVideo(vid, float(clip_len), tuple(c.strip() for c in caps), float(duration))


def read_captions_file(path: str | Path) -> Iterator[CaptionedVideo]:
    """Validated lines of a captions JSONL file; errors name the file and line."""
    seen: set[str] = set()
    for lineno, obj in enumerate(iter_jsonl(path), start=1):
        video = _validate(obj, f"{path}:{lineno}")
        if video.vid in seen:
            raise InputError(f"{path}:{lineno}: video {video.vid} appears twice")
        seen.add(video.vid)
        yield video


def _embed_unique(embedder: TextEmbedder, videos: list[CaptionedVideo]) -> dict[str, np.ndarray]:
    """Embed each distinct caption once: captioners repeat themselves on static shots."""
    unique = sorted({c for v in videos for c in v.captions})
    vectors = embedder.embed(unique)
    return dict(zip(unique, vectors, strict=True))


def import_captions(
    store: Store,
    embedder: TextEmbedder,
    path: str | Path,
    *,
    source: str,
    batch_videos: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
    only: set[str] | None = None,
) -> ImportReport:
    """Import every video of ``path`` (or of it, those in ``only``) not yet complete in the store."""
    videos = [v for v in read_captions_file(path) if only is None or v.vid in only]
    report = ImportReport(total=len(videos))
    done = store.complete_video_ids([v.vid for v in videos], source=source, embedder_name=embedder.name)
    todo = [v for v in videos if v.vid not in done]
    report.skipped = len(videos) - len(todo)
    if on_progress:
        on_progress(report.skipped, report.total)
    for lo in range(0, len(todo), batch_videos):
        chunk = todo[lo : lo + batch_videos]
        vectors = _embed_unique(embedder, chunk)
        for video in chunk:
            _store_video(store, embedder.name, source, video, vectors)
            report.imported += 1
            report.captions += len(video.captions)
        if on_progress:
            on_progress(report.skipped + report.imported, report.total)
    return report


def _store_video(
    store: Store, embedder_name: str, source: str, video: CaptionedVideo, vectors: dict[str, np.ndarray]
) -> None:
    emb = np.stack([vectors[c] for c in video.captions]).astype(np.float32)
    store.put_captions(
        video.vid,
        video.captions,
        emb,
        source=source,
        prompt_hash=IMPORT_PROMPT_HASH,
        embedder_name=embedder_name,
    )
    store.put_video(
        VideoRecord(
            video_id=video.vid,
            n_clips=len(video.captions),
            clip_len_s=video.clip_len_s,
            duration_s=video.duration_s,
            caption_source=source,
            caption_embedder=embedder_name,
            has_frames=False,
            complete=True,
        )
    )


def source_name_for(path: str | Path) -> str:
    """Default caption source tag: the file's stem (part of every caption id; ``--source`` overrides)."""
    return Path(path).stem
