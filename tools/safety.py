"""Validation of tool arguments that come from an untrusted caller (an LLM, an MCP client).

The LangChain tool and the MCP server hand a model's arguments to the retrieval graph, which
reads files and a store.  A model can be steered by anything it has read (a web page, a
caption, a user), so every argument is treated like input from the internet:

* ``video`` is one of three things, recognised in this order:

  1. a URL: refused unless it is ``http(s)`` and its host is named in
     ``GRANALIGN_URL_ALLOWLIST`` (comma-separated hosts; ``*.example.org`` allows subdomains);
     credentials in the URL, backslashes and other schemes (``file:``, ``data:`` ...) are
     refused whatever the allowlist says (the tool then fetches it,
     :mod:`granalign.io.download`, checking every redirect with the same rule);
  2. a store video id that the caller's store knows (checked by a callback, so this module
     needs no store): ``[A-Za-z0-9_.:-]``, at most 128 characters, or any other name the
     caption importer accepts that does not look like a path (``list_videos`` hands those out);
  3. a file path, checked by the library's one validator,
     :func:`granalign.io.video.resolve_video_path` (the graph runs the same check): its real path
     (symbolic links resolved) must be a regular file inside the video roots
     (:func:`granalign.io.video.parse_roots`); ``..`` and ``~`` are refused outright; device files,
     FIFOs, sockets and folders are refused (a FIFO would block a reader forever, ``/dev/zero``
     never ends).
* ``query`` is cleaned by the library's one cleaner, :func:`granalign.text.clean_query`
  (control characters become spaces, invisible ones go, NFKC, bounded), as in the graph.
* numbers are integers inside stated bounds (``bool`` is not an integer here).

Every refusal of a ``video`` is an :class:`UnsafeInputError` (an ``InputError``); a query or a
number is refused with an ``InputError``; each message says what was refused and why, so the
calling model can correct its call.  The path check is a check at call time: the real path (no
symbolic links left) is what is handed on, which narrows but cannot close the window in which
someone with write access to a root swaps a folder for a link.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from granalign.errors import InputError
from granalign.io.video import (
    ENV_VIDEO_ROOTS,
    VideoNotFound,
    looks_like_path,
    parse_roots,
    resolve_video_path,
)
from granalign.text import MAX_QUERY_CHARS, clean_query, clean_text

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
    "url_allowlist",
]

ENV_URL_ALLOWLIST = "GRANALIGN_URL_ALLOWLIST"

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


@dataclass(frozen=True)
class VideoArg:
    """A validated ``video`` argument: a store id, a real file path, or an allowed URL."""

    kind: Literal["id", "path", "url"]
    value: str


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


def url_allowlist(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Hosts a ``video`` URL may name (``GRANALIGN_URL_ALLOWLIST``, comma or space separated)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_URL_ALLOWLIST, "")
    return tuple(h.strip().lower().rstrip(".") for h in re.split(r"[,\s]+", raw) if h.strip())


# ---------------------------------------------------------------------------------------------
# text and numbers
# ---------------------------------------------------------------------------------------------


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
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. "http://[::1/x": an unbalanced IPv6 bracket
        raise UnsafeInputError("video URL refused: malformed host or port") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeInputError(f"video URL refused: the scheme {scheme or '(none)'!r} is not allowed")
    if parts.username is not None or parts.password is not None:
        raise UnsafeInputError("video URL refused: URLs with credentials (user@host) are not allowed")
    try:
        host = parts.hostname or ""
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise UnsafeInputError("video URL refused: malformed host or port") from None
    if port == 0:  # no server listens there; the OS would pick some other port for a client
        raise UnsafeInputError("video URL refused: port 0 is not a port a server listens on")
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
    # a stored id is any printable non-path name (captions_import._check_vid): "vidé", "a b",
    # 200 characters; list_videos hands those out, so they must be accepted back
    if (id_shaped or not looks_like_path(text)) and is_known_id(text):
        return VideoArg("id", text)
    try:
        path = resolve_video_path(text, parse_roots() if roots is None else roots)
    except VideoNotFound as exc:
        if id_shaped:
            raise UnsafeInputError(
                f"video {text!r} is neither an indexed video id (call list_videos to see them) "
                "nor a file inside the allowed video roots"
            ) from None
        raise UnsafeInputError(str(exc)) from None
    except InputError as exc:
        raise UnsafeInputError(str(exc)) from None
    return VideoArg("path", str(path))
