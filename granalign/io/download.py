"""A video named by an http(s) URL, fetched once into a local folder so ingest can read it.

The graph reads only files inside the configured video roots (``granalign.io.video``); a tool
caller who names a URL (on a host the operator allowed, ``tools.safety.check_url``) gets it
turned into such a file first.  Why each rule:

* **Every redirect is checked again** with the caller's URL check: an allowed host must not
  be able to hand the fetch on to a host nobody allowed (an internal address, another site).
* **A size limit**, checked on ``Content-Length`` and again while streaming (the header can
  lie or be absent): an agent's URL must not fill the disk.
* **Atomic and resumable**: bytes go to a private ``.part`` file, fsynced, then renamed, so a
  crash or a refused download never leaves a truncated video that ingest would take for a
  whole one; a later call with the same URL finds the finished file and fetches nothing.
* **Clear errors**: every failure is an :class:`InputError` naming the URL and what went wrong
  (HTTP status, too large, timed out, unreachable), never an ``httpx`` traceback.
* **A bounded folder** (:func:`prune_downloads`): agents keep naming new URLs, so after each
  download the least recently used files go until the folder fits its budget, and ``.part``
  files a killed process left behind are removed.  Nothing a live call may still read is
  touched: a file used (or a ``.part`` written) within the last ``timeout_s`` is kept, because
  no call lasts longer than that.  An evicted video stays searchable by its id (its captions
  are in the store); its URL is fetched again when named again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from granalign.errors import InputError

__all__ = ["MAX_REDIRECTS", "DownloadError", "download_video", "downloaded_name", "prune_downloads"]

#: Redirect hops followed (each one checked like the first URL); browsers allow about 20, but a
#: video link that needs more than a few is more likely a loop.
MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}$")


class DownloadError(InputError):
    """The URL could not be turned into a local video file (the message says why)."""


def downloaded_name(url: str) -> str:
    """File name of ``url``'s download: a hash of the URL (nothing a caller typed reaches the
    file system) plus the path's extension when it looks like one (for people browsing the
    folder; PyAV probes the content, not the name)."""
    suffix = _SUFFIX.search(urlsplit(url).path)
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:24]
    return f"url-{digest}{suffix.group(0).lower() if suffix else '.video'}"


def download_video(
    url: str,
    folder: Path,
    *,
    check: Callable[[str], str],
    max_bytes: int,
    timeout_s: float,
    cache_bytes: int | None = None,
) -> Path:
    """``url`` as a file in ``folder`` (fetched now, or found from an earlier call).

    ``check`` validates every URL the fetch would visit (the first and each redirect target)
    and returns it, raising :class:`InputError` to refuse one.  ``timeout_s`` bounds the whole
    download, not only each network wait.  ``cache_bytes``: the folder's budget, enforced after
    a fetch by :func:`prune_downloads` (None = unbounded).
    """
    target = folder / downloaded_name(url)
    if target.is_file() and target.stat().st_size > 0:
        _touch(target)  # a finished download (renamed into place only when complete), used now
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"video URL {url!r}: cannot create the download folder {folder}: {exc}") from None
    part = folder / f".{target.name}.{os.getpid()}.{threading.get_ident()}.part"
    deadline = time.monotonic() + timeout_s
    try:
        _fetch(url, check, part, max_bytes=max_bytes, timeout_s=timeout_s, deadline=deadline)
        os.replace(part, target)
    except httpx.TimeoutException:
        raise DownloadError(f"video URL {url!r}: the download timed out (limit {timeout_s:g} s)") from None
    except httpx.HTTPError as exc:
        raise DownloadError(f"video URL {url!r} could not be fetched: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise DownloadError(f"video URL {url!r}: writing the download failed: {exc}") from None
    finally:
        part.unlink(missing_ok=True)
    if cache_bytes is not None:
        prune_downloads(folder, cache_bytes, in_use_s=timeout_s, keep=target)
    return target


def _touch(path: Path) -> None:
    """Mark a download as used now (its mtime orders the eviction); a read-only folder is fine."""
    with contextlib.suppress(OSError):
        os.utime(path)


def prune_downloads(
    folder: Path, budget_bytes: int, *, in_use_s: float, keep: Path | None = None
) -> list[Path]:
    """Remove least recently used downloads until ``folder`` holds at most ``budget_bytes``.

    Files used within the last ``in_use_s`` seconds (a live call may still be reading them) and
    ``keep`` are never removed, so the folder may stay over budget until they age; ``.part``
    files older than ``in_use_s`` belong to a download past its deadline (a killed process) and
    are removed whatever the budget.  Returns the removed paths.  Several processes may prune
    one folder at once: a file another one removed first is skipped.
    """
    now = time.time()
    removed: list[Path] = []
    finished: list[tuple[float, int, Path]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        path = Path(entry.path)
        if not entry.is_file(follow_symlinks=False):
            continue
        if entry.name.startswith(".url-") and entry.name.endswith(".part"):
            if now - info.st_mtime > in_use_s and _unlink(path):
                removed.append(path)  # a download past its deadline: its process is gone
        elif entry.name.startswith("url-"):
            finished.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in finished)
    for mtime, size, path in sorted(finished):
        if total <= budget_bytes:
            break
        if path == keep or now - mtime <= in_use_s:
            continue
        gone = _unlink(path)
        if gone is not None:
            total -= size
            if gone:
                removed.append(path)
    return removed


def _unlink(path: Path) -> bool | None:
    """True: removed here; False: already gone (another process pruned it); None: it stays."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return True


def _fetch(
    url: str, check: Callable[[str], str], part: Path, *, max_bytes: int, timeout_s: float, deadline: float
) -> None:
    current = check(url)
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            with client.stream("GET", current) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = _checked_redirect(url, str(response.url.join(location)), check)
                    continue
                if response.status_code != 200:
                    raise DownloadError(f"video URL {url!r}: the server answered HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise DownloadError(_too_large(url, max_bytes, f"{int(declared):,} bytes declared"))
                _write(response.iter_bytes(_CHUNK), part, url, max_bytes=max_bytes, deadline=deadline)
                return
    raise DownloadError(f"video URL {url!r}: more than {MAX_REDIRECTS} redirects")


def _checked_redirect(url: str, target: str, check: Callable[[str], str]) -> str:
    try:
        return check(target)
    except InputError as exc:
        raise DownloadError(f"video URL {url!r} redirects to {target!r}, which is refused: {exc}") from None


def _write(chunks: Iterator[bytes], part: Path, url: str, *, max_bytes: int, deadline: float) -> None:
    size = 0
    with open(part, "wb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise DownloadError(_too_large(url, max_bytes, "more bytes sent"))
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("download deadline passed")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size == 0:
        raise DownloadError(f"video URL {url!r}: the server sent an empty body")


def _too_large(url: str, max_bytes: int, seen: str) -> str:
    return (
        f"video URL {url!r} is larger than the download limit of {max_bytes:,} bytes ({seen}); "
        "raise GRANALIGN_URL_MAX_MB or ingest the file directly"
    )
