"""Per-video ingest locks that hold across threads and processes sharing one store.

Many chats may ask about the same new video at once: without a lock each caller would decode,
embed and caption every clip, paying the GPU cost N times and racing on the same store ids.
The lock is an OS file lock (``filelock``: ``flock``/``fcntl``, released by the kernel when a
holder dies, so a ``kill -9`` never leaves a stale lock) on ``<lock_dir>/<video_id>.lock``.
Processes on one host share it through the folder; a deployment spread over several hosts
points ``lock_dir`` at a shared filesystem.  Within a process a ``threading.Lock`` per video
is taken first, so threads queue in memory instead of polling the file.

Locks are per video: callers on different videos never wait for each other.

The embedded store folder has a lock of its own, held for the life of the process that opened
it (:func:`acquire_store_lock`): one process per embedded Chroma folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from granalign.errors import InputError
from granalign.io.jsonl import atomic_write_text

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


# -- the embedded store's process lock ----------------------------------------------------------
#
# An embedded Chroma folder (PersistentClient) is safe in one process only: two processes writing
# it at once have crashed both and left an index every later process segfaults on.  So the
# process that opens the folder holds an OS file lock on it until it closes the store or exits
# (the kernel drops it then, also on kill -9).  Within a process the lock is counted, so opening
# the same folder twice never waits for itself.  A Chroma server (CHROMA_URL) takes no lock.

STORE_LOCK = ".granalign.lock"
STORE_HOLDER = ".granalign.lock.holder"
_STORE_LOCKS: dict[str, tuple[FileLock, int]] = {}
_STORE_REGISTRY = threading.Lock()


class StoreBusyError(InputError):
    """Another process holds the embedded store folder.

    The message names the folder and the holder (pid, host, command line) for the operator;
    ``public`` says the same without them, for a caller outside this host (a model, through a
    tool), which can only wait and retry.
    """

    def __init__(self, store_dir: Path, holder: str, waited_s: float) -> None:
        self.store_dir, self.holder, self.waited_s = store_dir, holder, waited_s
        waited = f" (waited {waited_s:g} s, store_lock_timeout)" if waited_s > 0 else ""
        super().__init__(
            f"store {store_dir} is in use by {holder}{waited}; an embedded store serves one "
            f"process at a time: wait for it, or serve the folder with `chroma run --path {store_dir}` "
            "and set CHROMA_URL for several processes"
        )
        waited = f" (waited {waited_s:g} s)" if waited_s > 0 else ""
        self.public = (
            f"the video store is in use by another process{waited} and serves one process at a "
            "time; retry later"
        )

    def __reduce__(self) -> tuple[type[StoreBusyError], tuple[Path, str, float]]:
        return type(self), (self.store_dir, self.holder, self.waited_s)


def store_holder(store_dir: Path) -> str:
    """Who holds ``store_dir``'s lock, as written by that process: ``pid N on HOST (COMMAND)``."""
    try:
        info = json.loads((store_dir / STORE_HOLDER).read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its pid yet)"


def _write_holder(store_dir: Path) -> None:
    """Name this process in the sidecar file (written whole: a reader never sees half of it)."""
    command = " ".join(shlex.quote(a) for a in sys.argv)[:300]
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    atomic_write_text(store_dir / STORE_HOLDER, json.dumps(info))


def _busy_store(store_dir: Path, waited_s: float) -> StoreBusyError:
    return StoreBusyError(store_dir, store_holder(store_dir), waited_s)


def acquire_store_lock(
    store_dir: Path, timeout_s: float, on_wait: Callable[[str], None] | None = None
) -> None:
    """Take (or count once more) this process's lock on the embedded store folder ``store_dir``.

    Another process holding it: ``on_wait`` gets one line naming the holder and we wait up to
    ``timeout_s`` seconds (0: fail at once), then raise :class:`StoreBusyError`.
    """
    key = str(store_dir.resolve())
    with _STORE_REGISTRY:
        if key in _STORE_LOCKS:
            lock, count = _STORE_LOCKS[key]
            _STORE_LOCKS[key] = (lock, count + 1)
            return
        lock = FileLock(str(store_dir / STORE_LOCK), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if timeout_s <= 0:
                raise _busy_store(store_dir, 0) from None
            if on_wait is not None:
                on_wait(
                    f"store {store_dir} is in use by {store_holder(store_dir)}; waiting up to "
                    f"{timeout_s:g} s (store_lock_timeout) — for several processes use `chroma run` "
                    "and CHROMA_URL"
                )
            try:
                lock.acquire(timeout=timeout_s, poll_interval=0.2)
            except Timeout:
                raise _busy_store(store_dir, timeout_s) from None
        try:
            _write_holder(store_dir)
        except BaseException:
            lock.release(force=True)  # a store we cannot write must not stay locked
            raise
        _STORE_LOCKS[key] = (lock, 1)


def release_store_lock(store_dir: Path) -> None:
    """Undo one :func:`acquire_store_lock`; the last one frees the folder for other processes."""
    key = str(store_dir.resolve())
    with _STORE_REGISTRY:
        if key not in _STORE_LOCKS:
            return
        lock, count = _STORE_LOCKS[key]
        if count > 1:
            _STORE_LOCKS[key] = (lock, count - 1)
            return
        del _STORE_LOCKS[key]
        with contextlib.suppress(OSError):
            (store_dir / STORE_HOLDER).unlink()
        lock.release(force=True)
