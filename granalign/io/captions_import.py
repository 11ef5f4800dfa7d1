"""Import precomputed query-agnostic captions (C_agn) into the store.

Benchmarks such as QVHighlights ship captions but no frames; importing them once lets every
later query read embeddings instead of re-encoding ~100k captions.  The import is idempotent
(deterministic ids) and resumable (videos already complete for this source and embedder are
skipped; a video is marked complete only after all its captions are written).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granalign.backends.embedder import TextEmbedder
from granalign.core.moments import positive_seconds
from granalign.errors import InputError
from granalign.io.caption_embedding import CHUNK_TEXTS, embedded_chunks
from granalign.io.jsonl import iter_jsonl
from granalign.io.store import Store, VideoRecord, text_hash
from granalign.io.video import looks_like_path

IMPORT_PROMPT_HASH = "imported"


@dataclass(frozen=True)
class CaptionedVideo:
    """One line of a captions file: ``{"vid", "clip_len_s", "captions": [...], "duration"?}``.

    ``clip_len_s`` is required: caption i covers [i·clip_len_s, (i+1)·clip_len_s).
    """

    vid: str
    clip_len_s: float
    captions: tuple[str, ...]
    duration_s: float

    @property
    def content_key(self) -> str:
        """What the store's copy must match to count as this line (grid, length, captions)."""
        return text_hash(json.dumps([self.clip_len_s, self.duration_s, list(self.captions)]), 24)


@dataclass
class ImportReport:
    total: int = 0
    skipped: int = 0
    imported: int = 0
    captions: int = 0


def _check_vid(vid: object, where: str) -> str:
    """A store id a query can name: not a path (those are read as files, never as ids).

    ``../../etc/passwd`` or ``clip.mp4`` would be imported, then never found again, because
    every front end resolves a path-like ``video`` argument as a file.
    """
    if not isinstance(vid, str) or not vid.strip():
        raise InputError(f"{where}: 'vid' must be a non-empty string")
    if vid != vid.strip() or not vid.isprintable() or looks_like_path(vid):
        raise InputError(
            f"{where}: 'vid' {vid!r} cannot be a store id (no path separators, no leading '.' or '~', "
            "no video file ending, no surrounding spaces or control characters)"
        )
    return vid


def _validate(obj: dict[str, object], where: str) -> CaptionedVideo:
    vid = _check_vid(obj.get("vid"), where)
    caps = obj.get("captions")
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise InputError(f"{where}: 'captions' must be a non-empty list of strings (video {vid})")
    if "clip_len_s" not in obj:
        # no default: a guessed 2 s puts every window of a 1-s or 3-s caption file at the wrong time
        raise InputError(f"{where}: 'clip_len_s' (seconds per caption) is missing (video {vid})")
    clip_len = obj["clip_len_s"]
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
    try:  # the range every query of the video is checked against (core.moments.positive_seconds)
        positive_seconds("'clip_len_s'", clip_len)
        positive_seconds("'duration'", duration)
    except InputError as exc:
        raise InputError(f"{where}: {exc} (video {vid})") from None
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


GROUP_VIDEOS = 1_000
"""Most videos whose completion is looked up in the store at once while the file streams by
(a group also ends at ``chunk_texts`` captions)."""


def import_captions(
    store: Store,
    embedder: TextEmbedder,
    path: str | Path,
    *,
    source: str,
    batch_videos: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
    only: set[str] | None = None,
    chunk_texts: int = CHUNK_TEXTS,
) -> ImportReport:
    """Import every video of ``path`` (or of it, those in ``only``) not yet complete in the store.

    Two passes over the file: the first validates every line and counts the videos (a bad line
    at the end is reported before anything is written), keeping no captions; the second streams
    the videos through the store's completion check and the embedder, so memory holds a group of
    about ``chunk_texts`` captions and a chunk of about ``chunk_texts`` distinct texts, however
    large the library's file is.  Each distinct caption text is embedded once per store
    (:mod:`granalign.io.caption_embedding`); ``on_progress`` is called every ``batch_videos``
    videos written.
    """
    report = ImportReport(total=sum(1 for _ in _wanted(path, only)))
    if on_progress:
        on_progress(0, report.total)
    groups = _groups(_wanted(path, only), GROUP_VIDEOS, chunk_texts)
    todo = _not_yet_complete(store, embedder.name, source, groups, report, on_progress)
    for chunk, vectors in embedded_chunks(store, embedder, todo, chunk_texts=chunk_texts):
        for lo in range(0, len(chunk), batch_videos):
            for video in chunk[lo : lo + batch_videos]:
                _store_video(store, embedder.name, source, video, vectors)
                report.imported += 1
                report.captions += len(video.captions)
            if on_progress:
                on_progress(report.skipped + report.imported, report.total)
    return report


def _wanted(path: str | Path, only: set[str] | None) -> Iterator[CaptionedVideo]:
    return (v for v in read_captions_file(path) if only is None or v.vid in only)


def _groups(
    videos: Iterator[CaptionedVideo], max_videos: int, max_captions: int
) -> Iterator[list[CaptionedVideo]]:
    """Consecutive videos, at most ``max_videos`` and about ``max_captions`` captions a group
    (a video is never split): 1,000 one-hour recordings would hold 1.8 million captions."""
    group: list[CaptionedVideo] = []
    captions = 0
    for video in videos:
        group.append(video)
        captions += len(video.captions)
        if len(group) >= max_videos or captions >= max_captions:
            yield group
            group, captions = [], 0
    if group:
        yield group


def _not_yet_complete(
    store: Store,
    embedder_name: str,
    source: str,
    groups: Iterator[list[CaptionedVideo]],
    report: ImportReport,
    on_progress: Callable[[int, int], None] | None,
) -> Iterator[CaptionedVideo]:
    """The videos not complete in the store, looked up a group at a time."""
    for group in groups:
        keys = {v.vid: v.content_key for v in group}
        done = store.complete_video_ids(
            list(keys), source=source, embedder_name=embedder_name, content_keys=keys
        )
        if done:
            report.skipped += len(done)
            if on_progress:
                on_progress(report.skipped + report.imported, report.total)
        yield from (v for v in group if v.vid not in done)


def _store_video(
    store: Store, embedder_name: str, source: str, video: CaptionedVideo, vectors: dict[str, np.ndarray]
) -> None:
    emb = np.stack([vectors[c] for c in video.captions]).astype(np.float32)
    # stale (other content or source), or clips of a killed import or removal without a record:
    # no clip of it may stay, or the new captions would be read back with the old ones past them
    if store.video(video.vid) is not None or store.has_clip_records(video.vid):
        store.delete_video(video.vid)
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
            content_key=video.content_key,
        )
    )


def source_name_for(path: str | Path) -> str:
    """Default caption source tag: the file's stem (part of every caption id; ``--source`` overrides)."""
    return Path(path).stem
