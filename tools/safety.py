"""Validation of tool arguments that come from an untrusted caller (an LLM, an MCP client).

The LangChain tool and the MCP server hand a model's arguments to the retrieval graph, which
reads files and a store.  A model can be steered by anything it has read (a web page, a
caption, a user), so every argument is treated like input from the internet:

* ``video`` is one of three things, recognised in this order:

  1. a URL: refused unless it is ``http(s)`` and its host is named in
     ``GRANALIGN_URL_ALLOWLIST`` (comma-separated hosts; ``*.example.org`` allows subdomains);
     credentials in the URL, backslashes and other schemes (``file:``, ``data:`` ...) are
     refused whatever the allowlist says;
  2. a store video id (``[A-Za-z0-9_.:-]``, at most 128 characters) that the caller's store
     knows (checked by a callback, so this module needs no store);
  3. a file path, accepted only when its real path (symbolic links resolved) is a regular
     file inside one of the roots in ``GRANALIGN_VIDEO_ROOTS`` (``os.pathsep``-separated,
     default: the current directory).  A path with a ``..`` component is refused outright,
     even when it would stay inside a root: a model has no business walking up folders.
     Device files, FIFOs, sockets and folders are refused (a FIFO would block a reader forever,
     ``/dev/zero`` never ends).
* ``query`` loses control and invisible format characters (zero-width spaces, bidi overrides
  that hide text from a human reviewer), is NFKC-normalised, whitespace-collapsed and bounded.
  Its content is never interpreted: "ignore previous instructions" is just text to rewrite.
* numbers are integers inside stated bounds (``bool`` is not an integer here).

Every refusal is an :class:`UnsafeInputError` (an ``InputError``) whose message says what was
refused and why, so the calling model can correct its call.  The path check is a check at call
time: the real path (no symbolic links left) is what is handed on, which narrows but cannot
close the window in which someone with write access to a root swaps a folder for a link.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from granalign.errors import InputError

__all__ = [
    "ENV_URL_ALLOWLIST",
    "ENV_VIDEO_ROOTS",
    "MAX_QUERY_CHARS",
    "MAX_VIDEO_ARG_CHARS",
    "MAX_VIDEO_ID_CHARS",
    "UnsafeInputError",
    "VideoArg",
    "bounded_int",
    "check_url",
    "check_video_id",
    "clean_query",
    "clean_text",
    "host_allowed",
    "looks_like_url",
    "parse_video_arg",
    "resolve_video_path",
    "url_allowlist",
    "video_roots",
]

ENV_VIDEO_ROOTS = "GRANALIGN_VIDEO_ROOTS"
ENV_URL_ALLOWLIST = "GRANALIGN_URL_ALLOWLIST"

MAX_QUERY_CHARS = 500
"""A moment query is a sentence; 500 characters leave room for a long one, not for a document."""
MAX_VIDEO_ARG_CHARS = 1024
MAX_VIDEO_ID_CHARS = 128
VIDEO_ID_RE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_VIDEO_ID_CHARS}}}")
THREAD_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BARE_SCHEMES = re.compile(
    r"^(?:file|data|javascript|vbscript|about|blob|ftp|ftps|sftp|ssh|smb|nfs|s3|gs|rtsp|rtmp|mms|"
    r"mailto|http|https|ws|wss):",
    re.IGNORECASE,
)
_DROP_CATEGORIES = frozenset({"Cf", "Co", "Cs", "Cn"})
"""Format (zero-width, bidi), private-use, surrogate and unassigned code points: invisible."""


class UnsafeInputError(InputError):
    """An argument from an untrusted caller was refused; the message says why."""


class _NoSuchFile(UnsafeInputError):
    """No file of that name inside any root (an id-shaped name may be an unknown id instead)."""


@dataclass(frozen=True)
class VideoArg:
    """A validated ``video`` argument: a store id, a real file path, or an allowed URL."""

    kind: Literal["id", "path", "url"]
    value: str


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


def video_roots(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The allowed video roots, as real paths (``GRANALIGN_VIDEO_ROOTS``, default the cwd).

    Roots are resolved once here so that a root reached through a symbolic link (``/tmp`` on
    macOS) still contains the real paths of the files below it.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VIDEO_ROOTS, "")
    parts = [p.strip() for p in raw.split(os.pathsep) if p.strip()] or [os.getcwd()]
    return tuple(Path(os.path.realpath(Path(p).expanduser())) for p in parts)


def url_allowlist(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Hosts a ``video`` URL may name (``GRANALIGN_URL_ALLOWLIST``, comma or space separated)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_URL_ALLOWLIST, "")
    return tuple(h.strip().lower().rstrip(".") for h in re.split(r"[,\s]+", raw) if h.strip())


# ---------------------------------------------------------------------------------------------
# text and numbers
# ---------------------------------------------------------------------------------------------


def clean_text(value: object, *, name: str, max_chars: int, allow_empty: bool = False) -> str:
    """NFKC text without control or invisible characters, whitespace collapsed, bounded.

    Control characters (newlines, tabs, escape sequences) become spaces; format characters
    (zero-width, bidi overrides) and unassigned/private code points are removed.
    """
    if not isinstance(value, str):
        raise UnsafeInputError(f"{name} must be a string, got {type(value).__name__}")
    kept: list[str] = []
    for ch in unicodedata.normalize("NFKC", value):
        category = unicodedata.category(ch)
        if category == "Cc":
            kept.append(" ")
        elif category not in _DROP_CATEGORIES:
            kept.append(ch)
    text = " ".join("".join(kept).split())
    if not text and not allow_empty:
        raise UnsafeInputError(f"{name} is empty (after removing control characters)")
    if len(text) > max_chars:
        raise UnsafeInputError(f"{name} is {len(text)} characters long; at most {max_chars} are allowed")
    return text


def clean_query(value: object, *, max_chars: int = MAX_QUERY_CHARS) -> str:
    """A moment query fit to hand on: see :func:`clean_text`."""
    return clean_text(value, name="query", max_chars=max_chars)


def bounded_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``; booleans, fractions and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsafeInputError(f"{name} must be an integer in [{lo}, {hi}], got {type(value).__name__}")
    if not lo <= value <= hi:
        raise UnsafeInputError(f"{name}={value} is out of range; allowed: [{lo}, {hi}]")
    return value


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


def looks_like_url(text: str) -> bool:
    """True for ``scheme://...`` and for bare schemes that name a resource (``file:``, ``data:``)."""
    return bool(_URL_SCHEME.match(text) or _BARE_SCHEMES.match(text))


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    """Exact host match, or a subdomain of an entry written ``*.example.org`` / ``.example.org``."""
    host = host.lower().rstrip(".")
    for entry in allowlist:
        if entry.startswith(("*.", ".")):
            base = entry.lstrip("*").lstrip(".")
            if base and host.endswith("." + base):
                return True
        elif host == entry:
            return True
    return False


def check_url(text: str, allowlist: tuple[str, ...]) -> str:
    """``text`` if it is an http(s) URL to an allowed host, else :class:`UnsafeInputError`."""
    if "\\" in text or any(ch.isspace() for ch in text):
        raise UnsafeInputError("video URL refused: it contains a backslash or whitespace")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeInputError(f"video URL refused: the scheme {scheme or '(none)'!r} is not allowed")
    if parts.username is not None or parts.password is not None:
        raise UnsafeInputError("video URL refused: URLs with credentials (user@host) are not allowed")
    try:
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise UnsafeInputError("video URL refused: malformed host or port") from None
    if not host:
        raise UnsafeInputError("video URL refused: it names no host")
    if not allowlist:
        raise UnsafeInputError(
            f"video URL refused: URLs are not accepted here (no host is listed in {ENV_URL_ALLOWLIST}); "
            "pass an indexed video id (see list_videos) instead"
        )
    if not host_allowed(host, allowlist):
        raise UnsafeInputError(f"video URL refused: host {host!r} is not in {ENV_URL_ALLOWLIST}")
    return text


# ---------------------------------------------------------------------------------------------
# ids and paths
# ---------------------------------------------------------------------------------------------


def check_video_id(text: str) -> str:
    """``text`` if it has the conservative id shape (``[A-Za-z0-9_.:-]``, ≤ 128 chars)."""
    if not VIDEO_ID_RE.fullmatch(text) or set(text) == {"."}:
        raise UnsafeInputError(
            f"video id refused: ids use only letters, digits and _ . : - (at most {MAX_VIDEO_ID_CHARS})"
        )
    return text


def clean_thread_id(value: object) -> str:
    """A checkpoint thread id: 1–128 of letters, digits and ``_.:-`` (it keys SQLite rows)."""
    text = clean_text(value, name="thread_id", max_chars=128)
    if not THREAD_ID.fullmatch(text):
        raise InputError(f"thread_id {text!r}: use 1-128 letters, digits, '_', '.', ':' or '-'")
    return text


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def resolve_video_path(text: str, roots: tuple[Path, ...]) -> Path:
    """The real path of a regular file inside ``roots`` named by ``text``, or a refusal.

    Relative paths are looked up under each root in order.  ``~`` is not expanded (it would
    name a home folder outside the roots).
    """
    if "\x00" in text:
        raise UnsafeInputError("video path refused: it contains a NUL byte")
    given = Path(text)
    if ".." in given.parts:
        raise UnsafeInputError("video path refused: '..' is not allowed in a video path")
    if not roots:
        raise UnsafeInputError(f"video paths are refused: no video root is configured ({ENV_VIDEO_ROOTS})")
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        lexical = Path(os.path.abspath(candidate))
        try:
            real = Path(os.path.realpath(candidate, strict=True))
            mode = os.stat(real).st_mode
        except (OSError, RuntimeError):  # missing, permission, symlink loop
            if given.is_absolute() and not _inside(lexical, roots):
                raise UnsafeInputError(
                    f"video path refused: {text!r} is outside the allowed video roots ({ENV_VIDEO_ROOTS})"
                ) from None
            continue
        if not _inside(real, roots):
            if _inside(lexical, roots):
                raise UnsafeInputError(
                    f"video path refused: {text!r} is a symbolic link that leads outside "
                    "the allowed video roots"
                )
            raise UnsafeInputError(
                f"video path refused: {text!r} is outside the allowed video roots ({ENV_VIDEO_ROOTS})"
            )
        if not stat.S_ISREG(mode):
            raise UnsafeInputError(f"video path refused: {text!r} is {_kind_of(mode)}, not a video file")
        return real
    raise _NoSuchFile(f"video path refused: no file {text!r} inside the allowed video roots")


def parse_video_arg(
    video: object,
    *,
    is_known_id: Callable[[str], bool],
    roots: tuple[Path, ...] | None = None,
    allowlist: tuple[str, ...] | None = None,
) -> VideoArg:
    """Classify and validate a ``video`` argument (URL, known store id, or file in a root).

    ``is_known_id`` says whether the store has a video id; store ids win over a file of the
    same name in the current directory, because ids are what ``list_videos`` hands out.
    """
    if not isinstance(video, str):
        raise UnsafeInputError(f"video must be a string, got {type(video).__name__}")
    text = video.strip()
    if not text:
        raise UnsafeInputError("video is empty; pass an indexed video id (see list_videos)")
    if len(text) > MAX_VIDEO_ARG_CHARS:
        raise UnsafeInputError(f"video is {len(text)} characters long; at most {MAX_VIDEO_ARG_CHARS}")
    if any(unicodedata.category(ch) in ("Cc", *_DROP_CATEGORIES) for ch in text):
        raise UnsafeInputError("video refused: it contains control or invisible characters")
    if looks_like_url(text):
        return VideoArg("url", check_url(text, url_allowlist() if allowlist is None else allowlist))
    id_shaped = VIDEO_ID_RE.fullmatch(text) is not None and set(text) != {"."}
    if id_shaped and is_known_id(text):
        return VideoArg("id", text)
    try:
        path = resolve_video_path(text, video_roots() if roots is None else roots)
    except _NoSuchFile:
        if id_shaped:
            raise UnsafeInputError(
                f"video {text!r} is neither an indexed video id (call list_videos to see them) "
                "nor a file inside the allowed video roots"
            ) from None
        raise
    return VideoArg("path", str(path))
