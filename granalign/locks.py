"""Per-video ingest locks that hold across threads and processes sharing one store.

Many chats may ask about the same new video at once: without a lock each caller would decode,
embed and caption every clip, paying the GPU cost N times and racing on the same store ids.
The lock is an OS file lock (``filelock``: ``flock``/``fcntl``, released by the kernel when a
holder dies, so a ``kill -9`` never leaves a stale lock) on ``<lock_dir>/<video_id>.lock``.
Processes on one host share it through the folder; a deployment spread over several hosts
points ``lock_dir`` at a shared filesystem.  Within a process a ``threading.Lock`` per video
is taken first, so threads queue in memory instead of polling the file.

Locks are per video: callers on different videos never wait for each other.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from granalign.errors import InputError

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_REGISTRY = threading.Lock()


def lock_path(lock_dir: Path, video_id: str) -> Path:
    """The lock file of one video; the id is reduced to a safe file name (ids are content hashes)."""
    name = _SAFE.sub("_", video_id)[:200] or "video"
    return lock_dir / f"{name}.lock"


def _thread_lock(path: Path) -> threading.Lock:
    with _REGISTRY:
        return _THREAD_LOCKS.setdefault(str(path), threading.Lock())


@contextmanager
def video_lock(
    lock_dir: Path,
    video_id: str,
    timeout_s: float,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[float]:
    """Hold the ingest lock of ``video_id``; yields the seconds spent waiting for it.

    ``on_wait`` is called once when another caller holds the lock, so a progress stream can
    say why nothing happens.  Waiting longer than ``timeout_s`` raises :class:`InputError`
    naming the video (the other ingest goes on; a retry later finds its clips finished).
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(lock_dir, video_id)
    start = time.monotonic()
    local = _thread_lock(path)
    if not local.acquire(blocking=False):
        if on_wait is not None:
            on_wait()
            on_wait = None
        if not local.acquire(timeout=timeout_s):
            raise _busy(video_id, timeout_s)
    try:
        file_lock = FileLock(str(path), thread_local=False)
        try:
            file_lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            left = max(0.0, timeout_s - (time.monotonic() - start))
            try:
                file_lock.acquire(timeout=left, poll_interval=0.2)
            except Timeout:
                raise _busy(video_id, timeout_s) from None
        try:
            yield time.monotonic() - start
        finally:
            file_lock.release()
    finally:
        local.release()


def _busy(video_id: str, timeout_s: float) -> InputError:
    return InputError(
        f"video {video_id} is being ingested by another caller and did not finish within "
        f"{timeout_s:g} s (ingest_lock_timeout); retry later: finished clips are kept"
    )
