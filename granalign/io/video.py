"""Video files for ingest: resolve an untrusted path, hash it, probe it, sample one frame per clip.

Why it is built this way:

* **Untrusted paths.**  The graph is a tool an agent calls with whatever string it has, so a path
  must resolve (after symlinks) inside configured roots (``GRANALIGN_VIDEO_ROOTS``, default the
  current directory); ``..`` and ``~`` are refused, and URLs, device files and folders are
  refused with a message that says what to do instead.  This module holds the one path
  validator and the one roots parser of every front end (CLI, graph, LangChain tool, MCP).
  Files are opened as Python file objects, so a file name that is not UTF-8 (bytes smuggled in
  through ``surrogateescape``) is read like any other.
* **Content ids.**  ``video_id`` is a SHA-256 of the bytes, streamed in 1 MiB blocks: the same
  file under two names is one video, and an edited file is a new one.
* **Seeking, never the whole video in memory.**  :class:`FrameSampler` decodes one frame per
  clip and keeps at most the decoder's own buffers.  It decodes forward while the next target
  is closer than the longest keyframe interval it has seen, and seeks otherwise: with 2-s clips
  and a 16-s GOP (``charades_univtg_example.mp4``) a seek per clip would re-decode the GOP for
  every clip, while with 1-s GOPs a seek skips most frames.
* **Clear errors.**  Every way a file can be unusable (not a video, audio only, no frames,
  truncated) becomes an :class:`InputError` that names the file.
* **Damaged packets are skipped, as players skip them.**  A few KB of bad bytes in the middle
  of an hour-long recording (a flaky disk, an interrupted copy) made the decoder reject one
  packet, and that used to fail the whole video.  Packets are now decoded one by one; one the
  decoder rejects is skipped and recorded (:attr:`FrameSampler.damage`), the clips there get
  the nearest frame that decodes, and the ingest's notes say where.  A file that simply ends
  early (truncated) still fails: there is no later frame to take.

PyAV is imported lazily: the graph and the CLI import this module before any video is opened.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from granalign.errors import InputError

__all__ = [
    "ENV_VIDEO_ROOTS",
    "VIDEO_EXTENSIONS",
    "FrameSampler",
    "PacketDamage",
    "VideoInfo",
    "VideoNotFound",
    "clip_count",
    "clip_times",
    "content_hash",
    "content_sample",
    "display_path",
    "find_videos",
    "looks_like_path",
    "parse_roots",
    "path_text",
    "printable",
    "probe_video",
    "resolve_video_folder",
    "resolve_video_path",
    "sample_frames",
    "video_folder",
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

ENV_VIDEO_ROOTS = "GRANALIGN_VIDEO_ROOTS"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HASH_BLOCK = 1 << 20


class VideoNotFound(InputError):
    """No file of that name inside any root (a name shaped like a store id may be an unknown id)."""


def path_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8-safe form of a path (undecodable bytes as ``\\xNN``) for metadata: the video
    record keeps the name as it is, control characters included, so the file opens again."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1) as ``\\xNN``: a file name (or FFmpeg's
    message quoting one) holding ESC sequences or a newline must not drive the terminal that
    shows it, nor break a one-line message in two."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable, UTF-8-safe form of a path (undecodable bytes and control characters as
    ``\\xNN``) for messages."""
    return printable(path_text(path))


def looks_like_path(text: str) -> bool:
    """True when a ``video`` argument is meant as a file rather than a store id."""
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith(("~", "."))
        or text.lower().endswith(VIDEO_EXTENSIONS)
        or bool(_URL.match(text))
    )


def parse_roots(spec: str = "", environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The allowed video roots, as real paths: ``spec`` (the ``video_roots`` setting,
    ``os.pathsep``-separated), else ``$GRANALIGN_VIDEO_ROOTS``, else the current directory.

    The one roots parser of every front end.  Roots are resolved here, once, so that a root
    reached through a symbolic link (``/tmp`` on macOS) still contains the real paths below it.
    Roots come from the operator, not from a caller, so ``~`` is expanded in them.
    """
    env = os.environ if environ is None else environ
    text = spec or env.get(ENV_VIDEO_ROOTS, "")
    entries = [p.strip() for p in text.split(os.pathsep) if p.strip()] or [os.getcwd()]
    return tuple(Path(os.path.realpath(Path(p).expanduser())) for p in entries)


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _candidates(given: Path, roots: Sequence[Path]) -> list[Path]:
    """Where a path may be: itself if absolute; else under the current directory when that path
    lies inside a root (a user working in a video folder, or above one: ``index videos`` run
    beside the root ``videos``), then under each root in order.

    Nothing outside the roots is looked at for a relative path, so an answer never tells a
    caller whether some file outside the roots exists.
    """
    if given.is_absolute():
        return [given]
    cwd = Path(os.path.realpath(os.getcwd()))
    here = [cwd / given] if _inside(Path(os.path.abspath(cwd / given)), roots) else []
    return list(dict.fromkeys([*here, *(root / given for root in roots)]))


def _locate(text: str, roots: Sequence[Path], what: str) -> tuple[Path, os.stat_result]:
    """The real path (and its stat) of the first candidate for ``text`` inside ``roots``.

    The rules every front end shares: ``..`` is refused outright (a caller has no business
    walking up folders, even inside a root), ``~`` is not expanded (it names a home folder),
    and the containment check runs on the real path, so no symbolic link leads out of the roots.
    """
    shown = display_path(text)
    if not text.strip():
        raise InputError(f"video {what} path is empty")
    if "\x00" in text:
        raise InputError("video path refused: it contains a NUL byte")
    if _URL.match(text):
        raise InputError(f"video {shown!r} is a URL; only local files are accepted (download it first)")
    given = Path(text)
    if given.parts and given.parts[0].startswith("~"):
        raise InputError(
            f"video path refused: {shown!r} starts with '~', which is not expanded; give the full path"
        )
    if ".." in given.parts:
        raise InputError("video path refused: '..' is not allowed in a video path")
    if not roots:
        raise InputError(f"video paths are refused: no video root is configured ({ENV_VIDEO_ROOTS})")
    escaped = ""
    for candidate in _candidates(given, roots):
        lexical = Path(os.path.abspath(candidate))
        try:
            real = Path(os.path.realpath(candidate, strict=True))
            info = os.stat(real)
        except (OSError, RuntimeError):  # missing, permission, symlink loop
            if given.is_absolute() and not _inside(lexical, roots):
                escaped = "outside"
            continue
        if _inside(real, roots):
            return real, info
        escaped = escaped or ("link" if _inside(lexical, roots) else "outside")
    if escaped == "link":
        raise InputError(
            f"video path refused: {shown!r} is a symbolic link that leads outside the allowed video roots"
        )
    if escaped:
        raise InputError(
            f"video path refused: {shown!r} is outside the allowed video roots; add its folder to the "
            f"video_roots setting ({ENV_VIDEO_ROOTS})"
        )
    raise VideoNotFound(
        f"video {what} not found: no {what} {shown!r} inside the allowed video roots "
        "(a relative path is looked up under each root)"
    )


def resolve_video_path(raw: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """The real path of a readable, non-empty regular file named by ``raw`` inside ``roots``.

    The one video-path validator of every front end (CLI, graph, tools): a relative path is
    looked up under the current directory, then under each root; see :func:`_locate` for the
    rules.  It is a check at call time: the real path (no links left) is what is handed on.
    """
    text = os.fspath(raw)
    real, info = _locate(text, roots, "file")
    shown = display_path(text)
    if stat.S_ISDIR(info.st_mode):
        raise InputError(
            f"video path refused: {shown!r} is a directory, not a video file "
            "(granalign index FOLDER ingests a folder)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"video path refused: {shown!r} is {_kind_of(info.st_mode)}, not a regular file")
    if info.st_size == 0:
        raise InputError(f"video {shown!r} is empty (0 bytes)")
    if not os.access(real, os.R_OK):
        raise InputError(f"video {shown!r} is not readable (permission denied)")
    return real


def resolve_video_folder(raw: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """The real path of a folder of videos named by ``raw``, under the rules of video files."""
    text = os.fspath(raw)
    real, info = _locate(text, roots, "folder")
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{display_path(text)!r} is not a folder")
    return real


def video_folder(raw: str, roots: Sequence[Path]) -> Path | None:
    """The folder ``raw`` names, looked up like a video file (current folder, then each root),
    or None when it names no folder (a file, or nothing: the file rules then say why)."""
    if os.path.isdir(os.path.expanduser(raw)):
        return resolve_video_folder(raw, roots)  # its refusals ('~', outside the roots) are the answer
    try:
        return resolve_video_folder(raw, roots)
    except InputError:
        return None


def find_videos(folder: Path, roots: Sequence[Path] = ()) -> list[Path]:
    """Video files under ``folder`` (recursive, by extension, sorted; hidden entries skipped).

    Linked folders are followed, as linked files are (a library often links in other disks),
    when they lead inside ``roots`` (default: ``folder`` itself); a linked folder that leads
    elsewhere is not walked but listed itself, so the probe refuses it in one line ('a symbolic
    link that leads outside the allowed video roots') instead of it being skipped unseen.
    A folder reached twice (a second link to it, or a link to a folder above) is walked once.
    """
    inside = [Path(os.path.realpath(r)) for r in roots or (folder,)]
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a loop, or a second way into a folder: its files are listed already
            dirnames[:] = []
            continue
        seen.add(real)
        walked = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            path = Path(dirpath) / name
            if os.path.islink(path) and not _inside(Path(os.path.realpath(path)), inside):
                found.append(path)
            else:
                walked.append(name)
        dirnames[:] = walked
        found.extend(
            Path(dirpath) / name
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)
        )
    return found


_HASHES: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
_HASHES_LOCK = threading.Lock()


def file_stamp(path: Path) -> list[int]:
    """(size, mtime in ns, inode) of a file: what changes when its bytes are rewritten or replaced."""
    return stamp_of(os.stat(path))


def stamp_of(info: os.stat_result) -> list[int]:
    """:func:`file_stamp` of a stat result (a path's, or an open file's ``fstat``)."""
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def check_unchanged(path: Path, stamp: Sequence[int] | None, video_id: str) -> None:
    """Refuse a file that changed since it was hashed into ``video_id`` (its frames would be
    stored under the old content's id)."""
    if stamp is not None and file_stamp(path) != list(stamp):
        raise InputError(
            f"video {display_path(path)} changed since it was probed (hashed as {video_id}); "
            "nothing of it was stored under that id: re-run once the file is complete"
        )


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


SAMPLE_ENDS = 1 << 20
"""Bytes :func:`content_sample` reads at each end of a file (an mp4's index lies at one of them)."""
SAMPLE_PIECES = 8
SAMPLE_PIECE = 64 << 10
""":func:`content_sample` also reads this many pieces of this size, evenly spaced between the ends."""


def _sample_spans(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the pieces :func:`content_sample` reads from a file of ``size`` bytes."""
    if size <= 2 * SAMPLE_ENDS + SAMPLE_PIECES * SAMPLE_PIECE:
        return [(0, size)]  # a small file: all of it
    room = size - 2 * SAMPLE_ENDS - SAMPLE_PIECE
    steps = range(1, SAMPLE_PIECES + 1)
    inner = [(SAMPLE_ENDS + k * room // (SAMPLE_PIECES + 1), SAMPLE_PIECE) for k in steps]
    return [(0, SAMPLE_ENDS), *inner, (size - SAMPLE_ENDS, SAMPLE_ENDS)]


def content_sample(path: Path) -> str:
    """``sample-<24 hex>``: sha256 of the file's size, its first and last MiB and 8 pieces of 64 KiB
    evenly spaced between them (at most 2.5 MiB read, whatever the file's size).

    What compares a file across hosts cheaply: unlike :func:`file_stamp` it depends on the bytes
    only (a host's own copy has its own inode and mtime), and unlike :func:`content_hash` it does
    not read a multi-GB file whole.  A re-export or a re-encode changes the size or the container's
    index at one end; an edit that keeps the size, both ends and the 8 pieces would go unseen.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digest = hashlib.sha256(f"{size}:".encode())
        for offset, length in _sample_spans(size):
            fh.seek(offset)
            digest.update(fh.read(length))
    return f"sample-{digest.hexdigest()[:24]}"


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


MAX_ASPECT = 100
"""Frames wider than this many times their height (or the reverse) are refused at probe: vision
models cannot read such a sliver (Qwen2-VL's processor raises over 200:1; the margin covers
the rounding of a frame shrunk to ``max_pixels``)."""


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
    return printable(text.splitlines()[0][:200])


def _is_cover(stream: Any) -> bool:
    """A still picture attached to the file (an album cover, a thumbnail), not a video track."""
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _video_stream(container: Any, path: Path) -> Any:
    """The first decodable video stream that is not an attached picture (an audio file's cover
    art is demuxed as a one-packet video stream; decoding it as a video gives no usable frames)."""
    streams = [s for s in container.streams.video if not _is_cover(s)]
    if not streams and not list(container.streams):
        raise InputError(f"{display_path(path)} has no video frames (an empty container: zero-length video)")
    if not streams:
        kinds = sorted({"cover picture" if _is_cover(s) else s.type for s in container.streams})
        raise InputError(
            f"{display_path(path)} has no video stream (streams: {', '.join(kinds)}); an audio-only file "
            "cannot be searched for visual moments"
        )
    decodable = [s for s in streams if s.codec_context is not None]  # None: FFmpeg has no decoder for it
    if not decodable:
        raise InputError(
            f"{display_path(path)}: its video stream is in a codec this FFmpeg build (PyAV) cannot decode; "
            "convert it (e.g. to H.264) first"
        )
    return decodable[0]


def _scan_duration(container: Any, stream: Any) -> tuple[float, int]:
    """Duration from packet timestamps, for containers that do not declare one (demux only, no
    decode), and how many packets carry no timestamp."""
    tb = float(stream.time_base)
    start = stream.start_time or 0
    end = None
    untimed = 0
    for packet in container.demux(stream):
        if packet.pts is not None:
            stop = packet.pts + (packet.duration or 0)
            end = stop if end is None else max(end, stop)
        elif packet.size:
            untimed += 1
    return (0.0 if end is None else max(0.0, (end - start) * tb)), untimed


def probe_video(path: Path) -> VideoInfo:
    """Duration, frame rate and size of the first video stream; InputError for unusable files."""
    fh, container = _open(path)
    try:
        stream = _video_stream(container, path)
        tb = float(stream.time_base) if stream.time_base else 0.0
        start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
        whole = float(container.duration) / 1_000_000 - max(start, 0.0) if container.duration else 0.0
        if stream.duration and tb:
            duration = float(stream.duration * tb)
        elif len(container.streams) == 1 and start <= 0:  # the container's duration is the video's
            duration = whole
        else:  # Matroska/WebM: the container's duration may be a longer audio track's; with a
            # start offset it may or may not count the time before the first frame (Matroska
            # does, FLV does not): the packets are measured
            duration = 0.0
        untimed = 0
        if not math.isfinite(duration) or duration <= 0:
            try:
                duration, untimed = _scan_duration(container, stream)
            except _av_errors():
                duration = 0.0
            if duration <= 0 and math.isfinite(whole):
                duration = whole
        if duration <= 0 and untimed:
            raise InputError(
                f"{display_path(path)}: its {untimed} video packets carry no timestamps (a raw "
                f"{stream.codec_context.name} stream, in no container); remux it into mp4 or mkv first"
            )
        if duration <= 0:
            raise InputError(f"{display_path(path)} has no video frames (zero-length video)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width and height and max(width, height) > MAX_ASPECT * min(width, height):
            raise InputError(
                f"{display_path(path)}: its frames are {width}x{height} pixels, an aspect ratio over "
                f"{MAX_ASPECT}:1 that no captioner reads (Qwen2-VL refuses over 200:1)"
            )
        return VideoInfo(
            duration_s=duration,
            fps=fps if math.isfinite(fps) and fps > 0 else 25.0,
            width=width,
            height=height,
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


@dataclass
class PacketDamage:
    """The packets the decoder rejected (skipped), for the ingest's notes.

    Keyed by the packet's time, so a packet decoded twice (after a seek back) counts once.
    """

    skipped: dict[float, None] = field(default_factory=dict)  # seconds from the video start, in order

    def record(self, seconds: float) -> None:
        self.skipped[round(seconds, 3)] = None

    def spans(self) -> list[tuple[float, float]]:
        """The skipped times as spans, merging times at most a second apart."""
        spans: list[list[float]] = []
        for t in sorted(self.skipped):
            if spans and t - spans[-1][1] <= 1.0:
                spans[-1][1] = t
            else:
                spans.append([t, t])
        return [(lo, hi) for lo, hi in spans]

    def note(self) -> str | None:
        """One line for the caller (who names the file), or None when every packet decoded."""
        if not self.skipped:
            return None
        spans = self.spans()
        shown = ", ".join(f"{lo:.1f}" if hi == lo else f"{lo:.1f}-{hi:.1f}" for lo, hi in spans[:6])
        more = f" and {len(spans) - 6} more places" if len(spans) > 6 else ""
        return (
            f"{len(self.skipped)} damaged video packets were skipped "
            f"(at {shown} s{more}); clips there show the nearest frame that decodes"
        )


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
        self.damage = PacketDamage()

    def __enter__(self) -> FrameSampler:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def file_stamp(self) -> list[int]:
        """(size, mtime in ns, inode) of the open file: :func:`file_stamp` of what is being read,
        even once its path names another file."""
        return stamp_of(os.fstat(self._fh.fileno()))

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
        """Seek to the keyframe at or before ``target``.

        A container without an index (MPEG-TS, raw streams) may land on any packet past the last
        keyframe, whose frames decode only from the next keyframe: the first frame would be up to
        a GOP late, or none at all in a long GOP.  So when the first frame is past ``target`` (or
        none comes), the seek is redone earlier, the step back doubling from 1 s, until it starts
        from the beginning of the stream.
        """
        back = 0.0
        first_at = max(self.info.start_s, 0.0)
        while True:
            at = target - back
            self._container.seek(max(0, int(at / self._tb)), stream=self._stream, backward=True)
            self._pos = None
            self._last = None
            frames = self._decoded()
            first = next(frames, None)
            late = first is None or (first.time is not None and float(first.time) > target + self._half_frame)
            if not late or at <= first_at:
                self._frames = frames if first is None else itertools.chain([first], frames)
                return
            back = max(1.0, 2 * back)

    def _decoded(self) -> Iterator[Any]:
        """Frames in presentation order, packet by packet; a packet the decoder rejects is skipped.

        Only the decoder's "invalid data" is skipped: a read error of the container itself still
        ends the stream (``frame_at`` turns it into an InputError).
        """
        import av

        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                self.damage.record(self._packet_time(packet))
                continue
            yield from frames

    def _packet_time(self, packet: Any) -> float:
        """Seconds from the video start of a packet (its pts or dts, else the last frame's time)."""
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is not None:
            return max(0.0, float(stamp) * self._tb - self.info.start_s)
        return max(0.0, (self._pos or 0.0) - self.info.start_s)

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
        try:
            if self._should_seek(target):
                self._seek(target)
            assert self._frames is not None
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
        image = frame.to_image(width=width, height=height)
        # phone videos are stored sideways with a display matrix: show the frame as players do
        rotation = int(getattr(frame, "rotation", 0) or 0) % 360
        return image.rotate(rotation, expand=True) if rotation else image


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
