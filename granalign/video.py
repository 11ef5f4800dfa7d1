"""Video files for ingest: resolve an untrusted path, hash it, probe it, sample one frame per clip.

Why it is built this way:

* **Untrusted paths.**  The graph is a tool an agent calls with whatever string it has, so a path
  must resolve (after symlinks) inside configured roots (``GRANALIGN_VIDEO_ROOTS``, default the
  current directory); URLs, device files and folders are refused with a message that says what
  to do instead.  Files are opened as Python file objects, so a file name that is not UTF-8
  (bytes smuggled in through ``surrogateescape``) is read like any other.
* **Content ids.**  ``video_id`` is a SHA-256 of the bytes, streamed in 1 MiB blocks: the same
  file under two names is one video, and an edited file is a new one.
* **Seeking, never the whole video in memory.**  :class:`FrameSampler` decodes one frame per
  clip and keeps at most the decoder's own buffers.  It decodes forward while the next target
  is closer than the longest keyframe interval it has seen, and seeks otherwise: with 2-s clips
  and a 16-s GOP (``charades_univtg_example.mp4``) a seek per clip would re-decode the GOP for
  every clip, while with 1-s GOPs a seek skips most frames.
* **Clear errors.**  Every way a file can be unusable (not a video, audio only, no frames,
  truncated) becomes an :class:`InputError` that names the file.

PyAV is imported lazily: the graph and the CLI import this module before any video is opened.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from granalign.errors import InputError

__all__ = [
    "VIDEO_EXTENSIONS",
    "FrameSampler",
    "VideoInfo",
    "clip_count",
    "clip_times",
    "content_hash",
    "display_path",
    "find_videos",
    "looks_like_path",
    "parse_roots",
    "probe_video",
    "resolve_video_folder",
    "resolve_video_path",
    "sample_frames",
]

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".wmv",
    ".flv",
    ".3gp",
)
"""File name endings ``granalign index FOLDER`` picks up (a single file is accepted whatever its name)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HASH_BLOCK = 1 << 20


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable, UTF-8-safe form of a path (undecodable bytes as ``\\xNN``) for messages and metadata."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def looks_like_path(text: str) -> bool:
    """True when a ``video`` argument is meant as a file rather than a store id."""
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith(("~", "."))
        or text.lower().endswith(VIDEO_EXTENSIONS)
        or bool(_URL.match(text))
    )


def parse_roots(spec: str = "") -> list[Path]:
    """Allowed video roots: ``spec`` (os.pathsep-separated), else ``$GRANALIGN_VIDEO_ROOTS``, else the cwd."""
    text = spec or os.environ.get("GRANALIGN_VIDEO_ROOTS", "")
    entries = [p.strip() for p in text.split(os.pathsep) if p.strip()]
    return [Path(p).expanduser().resolve() for p in entries] or [Path.cwd().resolve()]


def resolve_video_path(raw: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """The real path of a user-given video file, checked to be a readable regular file inside ``roots``.

    The containment check runs on the fully resolved path, so neither ``..`` nor a symlink can
    reach a file outside the roots.
    """
    text = os.fspath(raw)
    shown = display_path(text)
    if not text.strip():
        raise InputError("video path is empty")
    if "\x00" in text:
        raise InputError(f"video path {shown!r} contains a NUL byte")
    if _URL.match(text):
        raise InputError(f"video {shown!r} is a URL; only local files are accepted (download it first)")
    candidate = Path(text).expanduser()
    resolved = (candidate if candidate.is_absolute() else Path.cwd() / candidate).resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        allowed = os.pathsep.join(str(r) for r in roots)
        raise InputError(
            f"video {shown!r} resolves to {display_path(resolved)}, outside the allowed video roots "
            f"({allowed}); add its folder to GRANALIGN_VIDEO_ROOTS (or --set video_roots=...)"
        )
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise InputError(f"video file not found: {shown}") from None
    except OSError as exc:
        raise InputError(f"cannot read video {shown}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(
            f"{shown} is a directory, not a video file (granalign index FOLDER ingests a folder)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{shown} is not a regular file (a device, socket or pipe); give a video file")
    if info.st_size == 0:
        raise InputError(f"video {shown} is empty (0 bytes)")
    if not os.access(resolved, os.R_OK):
        raise InputError(f"video {shown} is not readable (permission denied)")
    return resolved


def resolve_video_folder(raw: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """The real path of a user-given folder of videos, checked like a video file (inside ``roots``)."""
    text = os.fspath(raw)
    shown = display_path(text)
    if _URL.match(text):
        raise InputError(f"{shown!r} is a URL; only local folders are accepted")
    candidate = Path(text).expanduser()
    resolved = (candidate if candidate.is_absolute() else Path.cwd() / candidate).resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        allowed = os.pathsep.join(str(r) for r in roots)
        raise InputError(
            f"folder {shown!r} resolves to {display_path(resolved)}, outside the allowed video roots "
            f"({allowed}); add it to GRANALIGN_VIDEO_ROOTS (or --set video_roots=...)"
        )
    if not resolved.is_dir():
        raise InputError(f"folder not found: {shown}")
    return resolved


def find_videos(folder: Path) -> list[Path]:
    """Video files under ``folder`` (recursive, by extension, sorted; hidden entries skipped)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath) / name
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)
        )
    return found


_HASHES: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
_HASHES_LOCK = threading.Lock()


def content_hash(path: Path) -> str:
    """``sha256-<24 hex>`` of the file's bytes, streamed; cached per (path, size, mtime, inode)."""
    info = os.stat(path)
    key = (os.fspath(path), info.st_size, info.st_mtime_ns, info.st_ino)
    with _HASHES_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    value = f"sha256-{digest.hexdigest()[:24]}"
    with _HASHES_LOCK:
        _HASHES[key] = value
        while len(_HASHES) > 1024:
            _HASHES.popitem(last=False)
    return value


# ---------------------------------------------------------------------------------------------
# Probing and clip grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What ingest needs to know about a video stream (times in seconds from the stream start)."""

    duration_s: float
    fps: float
    width: int
    height: int
    start_s: float
    codec: str


def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.FFmpegError, EOFError)


def _open(path: Path) -> tuple[IO[bytes], Any]:
    """Open ``path`` as a file object and a PyAV container on it (errors name the file)."""
    import av

    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller, together with the container
    try:
        container = av.open(fh, mode="r")
    except _av_errors() as exc:
        fh.close()
        raise InputError(f"{display_path(path)} is not a video FFmpeg can read ({_reason(exc)})") from None
    except Exception:
        fh.close()
        raise
    return fh, container


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _video_stream(container: Any, path: Path) -> Any:
    streams = list(container.streams.video)
    if not streams and not list(container.streams):
        raise InputError(f"{display_path(path)} has no video frames (an empty container: zero-length video)")
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        raise InputError(
            f"{display_path(path)} has no video stream (streams: {', '.join(kinds)}); an audio-only file "
            "cannot be searched for visual moments"
        )
    return streams[0]


def _scan_duration(container: Any, stream: Any) -> float:
    """Duration from packet timestamps, for containers that do not declare one (demux only, no decode)."""
    tb = float(stream.time_base)
    start = stream.start_time or 0
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            stop = packet.pts + (packet.duration or 0)
            end = stop if end is None else max(end, stop)
    return 0.0 if end is None else max(0.0, (end - start) * tb)


def probe_video(path: Path) -> VideoInfo:
    """Duration, frame rate and size of the first video stream; InputError for unusable files."""
    fh, container = _open(path)
    try:
        stream = _video_stream(container, path)
        tb = float(stream.time_base) if stream.time_base else 0.0
        start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
        if stream.duration and tb:
            duration = float(stream.duration * tb)
        elif container.duration:
            duration = float(container.duration) / 1_000_000 - max(start, 0.0)
        else:
            duration = 0.0
        if not math.isfinite(duration) or duration <= 0:
            try:
                duration = _scan_duration(container, stream)
            except _av_errors():
                duration = 0.0
        if duration <= 0:
            raise InputError(f"{display_path(path)} has no video frames (zero-length video)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        return VideoInfo(
            duration_s=duration,
            fps=fps if math.isfinite(fps) and fps > 0 else 25.0,
            width=int(stream.codec_context.width or 0),
            height=int(stream.codec_context.height or 0),
            start_s=start,
            codec=str(stream.codec_context.name),
        )
    finally:
        container.close()
        fh.close()


def clip_count(duration_s: float, clip_len: float) -> int:
    """Clips covering ``[0, duration]``: a trailing part-clip counts; a shorter video is one clip."""
    return max(1, math.ceil(duration_s / clip_len - 1e-6))


def clip_times(duration_s: float, clip_len: float) -> list[float]:
    """Each clip's frame time: the clip's centre (of its covered part, for the last clip)."""
    n = clip_count(duration_s, clip_len)
    return [(i * clip_len + min((i + 1) * clip_len, duration_s)) / 2 for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Frame sampling
# ---------------------------------------------------------------------------------------------


def _fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest (even) size with the aspect ratio of ``width × height`` and at most ``max_pixels``."""
    if max_pixels <= 0 or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


class FrameSampler:
    """Decode single frames at given times from one video, seeking or decoding forward as is cheaper.

    Use as a context manager; :meth:`frame_at` returns an RGB ``PIL.Image`` scaled down to at
    most ``max_pixels`` (0 = native size).  Frames are never accumulated.
    """

    def __init__(self, path: Path, info: VideoInfo | None = None, *, max_pixels: int = 0) -> None:
        self.path = path
        self.info = info or probe_video(path)
        self.max_pixels = max_pixels
        self._fh, self._container = _open(path)
        self._stream = _video_stream(self._container, path)
        self._stream.thread_type = "AUTO"
        self._tb = float(self._stream.time_base)
        self._half_frame = 0.5 / self.info.fps
        self._frames: Iterator[Any] | None = None
        self._pos: float | None = None  # time of the last decoded frame (absolute, seconds)
        self._last: Any = None  # the last decoded frame (for the end of a stream)
        self._last_key: float | None = None
        self._gop = 0.0  # longest keyframe interval seen so far

    def __enter__(self) -> FrameSampler:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._frames = None
        self._last = None
        self._container.close()
        self._fh.close()

    def _should_seek(self, target: float) -> bool:
        if self._frames is None or self._pos is None:
            return True
        if target < self._pos - self._half_frame:
            return True
        since_key = self._pos - self._last_key if self._last_key is not None else 0.0
        return target - self._pos > max(self._gop, since_key, 1.0)

    def _seek(self, target: float) -> None:
        self._container.seek(max(0, int(target / self._tb)), stream=self._stream, backward=True)
        self._frames = iter(self._container.decode(self._stream))
        self._pos = None
        self._last = None

    def _note(self, frame: Any) -> float:
        t = frame.time
        t = (self._pos + 1.0 / self.info.fps if self._pos is not None else 0.0) if t is None else float(t)
        if frame.key_frame:
            if self._last_key is not None and t > self._last_key:
                self._gop = max(self._gop, t - self._last_key)
            self._last_key = t
        self._pos = t
        return t

    def frame_at(self, t: float, *, not_before: float | None = None) -> Any:
        """The frame shown at ``t`` seconds from the video start, as an RGB PIL image.

        At the end of the stream the last frame is used if it is not earlier than ``not_before``
        (the clip's start); otherwise the file ended early and an InputError says so.
        """
        target = self.info.start_s + t
        if self._should_seek(target):
            self._seek(target)
        assert self._frames is not None
        try:
            for frame in self._frames:
                ft = self._note(frame)
                self._last = frame
                if ft >= target - self._half_frame:
                    return self._image(frame)
        except _av_errors() as exc:
            raise InputError(
                f"{display_path(self.path)}: decoding failed near {t:.1f} s ({_reason(exc)}); "
                "the file looks truncated or corrupt"
            ) from None
        self._frames = None  # exhausted: the next call seeks
        limit = self.info.start_s + (not_before if not_before is not None else t - 1.0)
        if self._last is not None and self._pos is not None and self._pos >= limit - self._half_frame:
            return self._image(self._last)
        raise InputError(
            f"{display_path(self.path)}: no frame could be decoded at {t:.1f} s of "
            f"{self.info.duration_s:.1f} s; the file looks truncated or corrupt"
        )

    def _image(self, frame: Any) -> Any:
        width, height = _fit(frame.width, frame.height, self.max_pixels)
        return frame.to_image(width=width, height=height)


def sample_frames(
    path: Path,
    times: Sequence[float],
    *,
    clip_len: float,
    clips: Sequence[int] | None = None,
    max_pixels: int = 0,
    info: VideoInfo | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(clip index, frame)`` for the given clips (default all), one frame per clip, in order."""
    wanted = range(len(times)) if clips is None else sorted(clips)
    with FrameSampler(path, info, max_pixels=max_pixels) as sampler:
        for i in wanted:
            yield i, sampler.frame_at(times[i], not_before=i * clip_len)
