"""The Chroma store: frame and caption embeddings, video records and cached rewrites.

Why Chroma: one embedded folder for a laptop (``PersistentClient``) and the same API against a
server (``chroma run``) for a deployment shared by many callers.  Every collection is opened
with ``embedding_function=None`` and every write carries its embeddings: a collection opened
without one makes Chroma fetch its default ONNX model, which fails offline.

Ids are deterministic (``video_id:clip:model:prompt_hash``), so re-running an import upserts
the same records and adds nothing.  A video record is written *after* all its captions and
carries ``complete=True``: a killed import leaves at most an incomplete video, which the next
run redoes from scratch (its captions are upserted again under the same ids).

Videos ingested from files add two collections and a per-clip rule:

* ``frames.<clip model>``: one CLIP image embedding per clip (id
  ``video_id:clip:model:sampling_key``); one collection per CLIP model, because Chroma fixes a
  collection's dimensionality.
* ``aware_captions.<embedder>``: query-aware captions of key clips, one per (clip, captioner,
  prompt, query) (id ``video_id:clip:captioner:prompt_hash:query_hash``).

A clip is *finished* when its agnostic caption record exists: the frame embedding is written
first, the caption record (text + sentence embedding + metadata, one Chroma record, so it is
written whole or not at all) last.  A killed ingest therefore leaves at most frame records
without captions, which the next run completes; it never leaves a caption whose frame is
missing.  The video record (``complete=True``) is written after the last clip.

One process per embedded folder: opening one takes a lock on it for the life of the Store (see
:func:`granalign.io.locks.acquire_store_lock`); several processes share a Chroma server instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import urlparse

import numpy as np
from numpy.typing import NDArray

from granalign.errors import BackendError, ConfigError, InputError
from granalign.io.locks import acquire_store_lock, release_store_lock
from granalign.text import without_markup

VIDEOS = "videos"
REWRITES = "rewrites"
_PER_CLIP = ("captions", "aware_captions", "frames")  # collections with per-clip records, deletion order
_PLACEHOLDER = [1.0]  # records looked up by id only still need an embedding in Chroma


def default_store_dir() -> Path:
    """``GRANALIGN_STORE`` or a folder under the user's cache directory."""
    env = os.environ.get("GRANALIGN_STORE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("granalign")) / "store"


def text_hash(text: str, n: int = 12) -> str:
    """Short stable hash of a text, for ids and cache keys."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def collection_slug(name: str) -> str:
    """A Chroma-legal collection name part (3-512 chars of [a-zA-Z0-9._-])."""
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", name).strip("-._")
    return slug or "model"


@dataclass(frozen=True)
class VideoRecord:
    """What the store knows about one video; ``has_frames`` is False for imported captions."""

    video_id: str
    n_clips: int
    clip_len_s: float
    duration_s: float
    caption_source: str
    caption_embedder: str = ""
    has_frames: bool = False
    complete: bool = True
    path: str = ""
    clip_model: str = ""
    caption_prompt: str = ""
    ingest_key: str = ""
    content_key: str = ""  # imported captions: hash of clip_len_s, duration and the captions

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> VideoRecord:
        return cls(
            video_id=str(meta["video_id"]),
            n_clips=int(meta["n_clips"]),
            clip_len_s=float(meta["clip_len_s"]),
            duration_s=float(meta["duration_s"]),
            caption_source=str(meta["caption_source"]),
            caption_embedder=str(meta.get("caption_embedder", "")),
            has_frames=bool(meta.get("has_frames", False)),
            complete=bool(meta.get("complete", True)),
            path=str(meta.get("path", "")),
            clip_model=str(meta.get("clip_model", "")),
            caption_prompt=str(meta.get("caption_prompt", "")),
            ingest_key=str(meta.get("ingest_key", "")),
            content_key=str(meta.get("content_key", "")),
        )


class CaptionKeys(TypedDict):
    """Which captions of a clip: captioner (``source``), caption prompt and sentence embedder.

    The keyword arguments every caption read and write takes, declared once here."""

    source: str
    prompt_hash: str
    embedder_name: str


def caption_id(video_id: str, clip: int, source: str, prompt_hash: str) -> str:
    return f"{video_id}:{clip:06d}:{source}:{prompt_hash}"


def frame_id(video_id: str, clip: int, model: str, sampling_key: str) -> str:
    """Id of one clip's CLIP image embedding; ``sampling_key`` covers the clip length."""
    return f"{video_id}:{clip:06d}:{model}:{sampling_key}"


def aware_id(video_id: str, clip: int, source: str, prompt_hash: str, query_hash: str) -> str:
    """Id of one query-aware caption: the agnostic id plus the query (and its focus) hash."""
    return f"{video_id}:{clip:06d}:{source}:{prompt_hash}:{query_hash}"


def _check_captions(
    video_id: str, clips: Sequence[int], captions: Sequence[str], embeddings: NDArray[np.float32], what: str
) -> None:
    """One caption and one embedding per clip, or an InputError naming the video and the counts."""
    if not len(clips) == len(captions) == len(embeddings):
        raise InputError(
            f"video {video_id}: {len(clips)} clips, {len(captions)} {what}, {len(embeddings)} embeddings"
        )


def _aware_ids(video_id: str, clips: Sequence[int], query_hash: str, keys: CaptionKeys) -> list[str]:
    return [aware_id(video_id, c, keys["source"], keys["prompt_hash"], query_hash) for c in clips]


DEFAULT_LOCK_TIMEOUT_S = 10.0
"""Seconds a process waits for another one's embedded store before giving up (short: the
holder is usually a long import or a server; the message names it and what to do instead)."""


def _seconds_from_env(name: str, default: float, *, zero_ok: bool) -> float:
    """A number of seconds from ``$name`` (at most a day; 0 only where ``zero_ok``), or ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    above_floor = value >= 0 if zero_ok else value > 0  # False for NaN too
    if not (above_floor and value <= 86400):
        bounds = "[0, 86400]" if zero_ok else "(0, 86400]"
        raise ConfigError(f"{name}={raw!r} must be a number of seconds in {bounds}")
    return value


def lock_timeout_from_env() -> float:
    """``GRANALIGN_STORE_LOCK_TIMEOUT`` (seconds, 0 = fail at once) or the default."""
    return _seconds_from_env("GRANALIGN_STORE_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S, zero_ok=True)


DEFAULT_SERVER_TIMEOUT_S = 120.0
"""Seconds one request to a Chroma server may take: chromadb's own client waits forever, so a
stopped or wedged server, or a lost network path, would hang every caller for good."""


def server_timeout_from_env() -> float:
    """``GRANALIGN_CHROMA_TIMEOUT`` (seconds per request to a Chroma server) or the default."""
    return _seconds_from_env("GRANALIGN_CHROMA_TIMEOUT", DEFAULT_SERVER_TIMEOUT_S, zero_ok=False)


def _say_waiting(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


ENV_CHROMA_TOKEN = "GRANALIGN_CHROMA_TOKEN"
ENV_CHROMA_TOKEN_FILE = "GRANALIGN_CHROMA_TOKEN_FILE"
ENV_CHROMA_AUTH_HEADER = "GRANALIGN_CHROMA_AUTH_HEADER"


def chroma_headers(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The header the store client sends to the authenticating proxy in front of ``chroma run``.

    Chroma 1.x's server checks no credentials, so a deployment keeps it on a private network
    behind a proxy that does.  The token comes from ``GRANALIGN_CHROMA_TOKEN_FILE`` (a mounted
    secret) or ``GRANALIGN_CHROMA_TOKEN``, never from :class:`graphs.context.Context` (which
    Studio shows, clients send and ``granalign settings`` prints).  It goes out as
    ``Authorization: Bearer <token>``, or bare under ``GRANALIGN_CHROMA_AUTH_HEADER`` when that
    names another header (e.g. ``X-Chroma-Token``).  No token: no header.
    """
    env = os.environ if environ is None else environ
    file = env.get(ENV_CHROMA_TOKEN_FILE, "").strip()
    if file:
        try:
            token = Path(file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{ENV_CHROMA_TOKEN_FILE}={file!r}: cannot read it ({exc.strerror or exc})"
            ) from None
        where = ENV_CHROMA_TOKEN_FILE
    else:
        token, where = env.get(ENV_CHROMA_TOKEN, "").strip(), ENV_CHROMA_TOKEN
    if not token:
        return {}
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ConfigError(f"{where}: the token must be printable characters without spaces")
    name = env.get(ENV_CHROMA_AUTH_HEADER, "").strip() or "Authorization"
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise ConfigError(f"{ENV_CHROMA_AUTH_HEADER}={name!r} must be a header name like X-Chroma-Token")
    return {name: f"Bearer {token}" if name.lower() == "authorization" else token}


def _heartbeat_status(chroma_url: str, headers: dict[str, str]) -> tuple[int, bool] | None:
    """(HTTP status, whether the body is Chroma's heartbeat JSON) of ``/api/v2/heartbeat``, or
    None when nothing answered (a probe made only after the client failed: chromadb's error
    loses the status code)."""
    import httpx

    try:
        resp = httpx.get(f"{chroma_url.rstrip('/')}/api/v2/heartbeat", headers=headers, timeout=5)
    except httpx.HTTPError:
        return None
    try:
        chroma = "nanosecond heartbeat" in resp.json()
    except (ValueError, TypeError):
        chroma = False
    return resp.status_code, chroma


def _server_reason(exc: BaseException) -> str:
    """The first line of a server's error, without HTML markup, at most 200 characters."""
    text = without_markup(str(exc))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    return line if len(line) <= 200 else line[:199] + "…"


def _http_client(chroma_url: str) -> Any:
    import chromadb
    import httpx
    from chromadb.config import Settings

    parsed = urlparse(chroma_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"CHROMA_URL {chroma_url!r} must look like http://host:port")
    port = parsed.port or (443 if parsed.scheme == "https" else 8000)
    headers = chroma_headers()
    timeout = server_timeout_from_env()
    try:  # chromadb's client sets itself up with requests that wait forever: ask first, timed
        httpx.get(f"{chroma_url.rstrip('/')}/api/v2/heartbeat", headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise StoreUnavailable(
            f"Chroma server at {chroma_url} did not answer GET /api/v2/heartbeat within {timeout:g} s "
            "(GRANALIGN_CHROMA_TIMEOUT); try again once it answers"
        ) from None
    except httpx.HTTPError:
        pass  # refused, reset, ...: the client's own error says so below
    try:
        client = chromadb.HttpClient(
            host=parsed.hostname,
            port=port,
            ssl=parsed.scheme == "https",
            headers=headers or None,
            settings=Settings(anonymized_telemetry=False),
        )
    except Exception as exc:
        probe = _heartbeat_status(chroma_url, headers)
        status = probe[0] if probe else None
        if status in (401, 403, 407):
            sent = f"the {next(iter(headers))} header it was sent" if headers else "no token"
            raise ConfigError(
                f"Chroma server at {chroma_url} refused the store client (HTTP {status}, {sent}); "
                f"set {ENV_CHROMA_TOKEN} or {ENV_CHROMA_TOKEN_FILE} to the token its proxy expects"
            ) from None
        if status is not None and status >= 500:  # a proxy or a server that is (re)starting
            raise StoreUnavailable(
                f"Chroma server at {chroma_url} is unavailable: GET /api/v2/heartbeat answered "
                f"HTTP {status} ({_server_reason(exc)}); try again once it answers"
            ) from None
        if probe is not None and not (status == 200 and probe[1]):
            # something answers on that port, but not Chroma's v2 API: another service, or a
            # Chroma older than 1.0 (API v1 only)
            raise ConfigError(
                f"CHROMA_URL {chroma_url}: GET /api/v2/heartbeat answered HTTP {status} without "
                f"Chroma's heartbeat: not a Chroma server chromadb {chromadb.__version__} can use "
                "(another service on that port, or a Chroma without the v2 API)"
            ) from None
        reason = _server_reason(exc)
        if probe is not None:  # a Chroma server that failed the client's setup requests
            raise StoreUnavailable(
                f"Chroma server at {chroma_url} answered with an error: {reason}"
            ) from None
        raise ConfigError(f"Chroma server at {chroma_url} is not reachable: {reason}") from None
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):  # a request never answered: httpx.ReadTimeout, one line
        session.timeout = httpx.Timeout(timeout)
    return client


def _embedded_client(path: Path, lock_timeout: float) -> Any:
    """A PersistentClient on ``path``, opened only once this process holds the folder's lock."""
    import chromadb
    from chromadb.config import Settings

    if path.exists() and not path.is_dir():
        raise ConfigError(f"store folder {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    acquire_store_lock(path, lock_timeout, on_wait=_say_waiting)
    try:
        return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    except BaseException:
        release_store_lock(path)
        raise


def count_record(tally: dict[str, dict[tuple[str, str], int]], meta: Mapping[str, Any]) -> None:
    """Count one record in ``tally`` under its ``video_id`` and (``source``, ``prompt_hash``)
    (empty where it has none): the tally of :meth:`Store.records_per_video`, shared with
    ``store recover``, which reads the same metadata from SQLite when Chroma cannot open."""
    keys = (str(meta.get("source", "")), str(meta.get("prompt_hash", "")))
    per_keys = tally.setdefault(str(meta.get("video_id", "")), {})
    per_keys[keys] = per_keys.get(keys, 0) + 1


class StoreUnavailable(BackendError):
    """The Chroma server stopped answering mid-run (down, restarted, network lost)."""


class _ServerCollection:
    """A server collection whose lost connections become :class:`StoreUnavailable`, one line
    naming the server, instead of an httpx traceback (finished clips stay in the store)."""

    def __init__(self, collection: Any, location: str) -> None:
        self._collection, self._location = collection, location

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._collection, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with _server_errors(self._location):
                return attr(*args, **kwargs)

        return call


@contextmanager
def _server_errors(location: str) -> Iterator[None]:
    """Failures of a Chroma server call as one :class:`StoreUnavailable` naming the server.

    chromadb raises ``httpx.TransportError`` when the connection is lost, a ``ChromaError``
    for Chroma's own JSON errors (HTTP 5xx/4xx), a bare ``Exception`` holding the body of any
    other HTTP error (a proxy's 502 while the server restarts, a 404 of another service) and a
    ``JSONDecodeError`` when a 200 body is not JSON (another service on the port).
    """
    import httpx
    from chromadb.errors import ChromaError

    try:
        yield
    except httpx.TransportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreUnavailable(
            f"lost the Chroma server at {location} ({type(exc).__name__}: {reason}); "
            "finished work is kept in the store: re-run once the server answers again"
        ) from None
    except (ChromaError, json.JSONDecodeError) as exc:  # orjson's is one
        what = "an error" if isinstance(exc, ChromaError) else "a body that is not Chroma's JSON"
        raise StoreUnavailable(
            f"the Chroma server at {location} answered with {what} "
            f"({type(exc).__name__}: {_server_reason(exc)}); "
            "finished work is kept in the store: re-run once the server answers again"
        ) from None
    except Exception as exc:
        if type(exc) is not Exception:  # chromadb's HTTP errors are bare Exceptions; others are bugs
            raise
        raise StoreUnavailable(
            f"the Chroma server at {location} answered with an HTTP error ({_server_reason(exc)}); "
            "finished work is kept in the store: re-run once the server answers again"
        ) from None


class Store:
    """Typed access to the project's Chroma collections (thread-safe for our use)."""

    def __init__(
        self,
        store_dir: Path | None = None,
        chroma_url: str | None = None,
        *,
        lock_timeout: float | None = None,
    ) -> None:
        """Open the store; an embedded folder is locked for this process until :meth:`close`.

        ``lock_timeout``: seconds to wait for another process's hold on the folder (default
        ``GRANALIGN_STORE_LOCK_TIMEOUT`` or 10 s); see :func:`granalign.io.locks.acquire_store_lock`.
        """
        self.folder: Path | None = None if chroma_url else (store_dir or default_store_dir())
        self.location = chroma_url or str(self.folder)
        if chroma_url:
            self._client = _http_client(chroma_url)
        else:
            assert self.folder is not None
            timeout = lock_timeout_from_env() if lock_timeout is None else lock_timeout
            self._client = _embedded_client(self.folder, timeout)
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._max_batch = int(getattr(self._client, "get_max_batch_size", lambda: 4000)())

    def close(self) -> None:
        """Release Chroma's files and the folder lock, so another process may open the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._collections.clear()
        close = getattr(self._client, "close", None)
        if close is not None:
            close()
        if self.folder is not None:
            release_store_lock(self.folder)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _errors(self) -> AbstractContextManager[None]:
        """A Chroma server's failures as one line (:func:`_server_errors`); an embedded store's
        errors as they are (no server to blame)."""
        return _server_errors(self.location) if self.folder is None else nullcontext()

    def _collection(self, name: str) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"store {self.location} was closed")
            col = self._collections.get(name)
            if col is None:
                with self._errors():
                    col = self._client.get_or_create_collection(
                        name, embedding_function=None, metadata={"hnsw:space": "cosine"}
                    )
                if self.folder is None:  # a Chroma server
                    col = _ServerCollection(col, self.location)
                self._collections[name] = col
            return col

    def _upsert(self, name: str, **fields: Any) -> None:
        col = self._collection(name)
        n = len(fields["ids"])
        step = max(1, self._max_batch)
        for lo in range(0, n, step):
            col.upsert(**{k: v[lo : lo + step] for k, v in fields.items()})

    def _get_by_ids(self, name: str, ids: Sequence[str], include: list[str]) -> Iterator[Any]:
        """Chroma ``get`` of ``ids`` in collection ``name``, 1000 ids a call (SQLite caps the
        variables of one query)."""
        col = self._collection(name)
        ids = list(ids)
        for lo in range(0, len(ids), 1000):
            yield col.get(ids=ids[lo : lo + 1000], include=include)

    def _put_clips(
        self,
        name: str,
        video_id: str,
        clips: Sequence[int],
        ids: list[str],
        embeddings: NDArray[np.float32],
        documents: Sequence[str] | None = None,
        **meta: str,
    ) -> None:
        """Upsert one record a clip; ``meta`` joins the ``video_id`` and ``clip`` every per-clip
        record carries (and :meth:`delete_video` finds it by)."""
        if not clips:
            return
        fields: dict[str, Any] = {
            "ids": ids,
            "embeddings": np.asarray(embeddings, dtype=np.float32),
            "metadatas": [{"video_id": video_id, "clip": int(c), **meta} for c in clips],
        }
        if documents is not None:
            fields["documents"] = list(documents)
        self._upsert(name, **fields)

    def _clip_records(
        self, name: str, conditions: list[dict[str, Any]], *, documents: bool = False
    ) -> tuple[list[int], list[str], NDArray[np.float32]]:
        """Per-clip records matching all ``conditions``, in clip order: (clips, texts, embeddings);
        texts are empty unless ``documents``."""
        include = ["embeddings", "metadatas", "documents"] if documents else ["embeddings", "metadatas"]
        got = self._collection(name).get(where={"$and": conditions}, include=include)
        if not got["ids"]:
            return [], [], np.zeros((0, 0), dtype=np.float32)
        clips = [int(m["clip"]) for m in got["metadatas"]]
        order = np.argsort(clips, kind="stable")
        texts = [got["documents"][i] for i in order] if documents else []
        return [clips[i] for i in order], texts, np.asarray(got["embeddings"], dtype=np.float32)[order]

    # -- videos ------------------------------------------------------------------------------
    def video(self, video_id: str) -> VideoRecord | None:
        got = self._collection(VIDEOS).get(ids=[video_id], include=["metadatas"])
        if not got["ids"]:
            return None
        return VideoRecord.from_metadata(got["metadatas"][0])

    def put_video(self, record: VideoRecord) -> None:
        self._upsert(
            VIDEOS, ids=[record.video_id], embeddings=[_PLACEHOLDER], metadatas=[record.to_metadata()]
        )

    def complete_video_ids(
        self,
        video_ids: Sequence[str],
        *,
        source: str,
        embedder_name: str,
        content_keys: dict[str, str] | None = None,
    ) -> set[str]:
        """Which of ``video_ids`` are fully stored for this caption source and embedder (and,
        with ``content_keys``, with exactly this content: an edited file, or another file of the
        same name and ids, is not "done")."""
        done: set[str] = set()
        for got in self._get_by_ids(VIDEOS, video_ids, ["metadatas"]):
            done.update(
                i
                for i, m in zip(got["ids"], got["metadatas"], strict=True)
                if m.get("complete")
                and m.get("caption_source") == source
                and m.get("caption_embedder") == embedder_name
                and (content_keys is None or m.get("content_key") == content_keys.get(i))
            )
        return done

    def videos(self, video_ids: Sequence[str]) -> dict[str, VideoRecord]:
        """The records of those of ``video_ids`` that the store holds."""
        out: dict[str, VideoRecord] = {}
        for got in self._get_by_ids(VIDEOS, video_ids, ["metadatas"]):
            out.update(
                (i, VideoRecord.from_metadata(m)) for i, m in zip(got["ids"], got["metadatas"], strict=True)
            )
        return out

    def list_videos(self) -> list[VideoRecord]:
        got = self._collection(VIDEOS).get(include=["metadatas"])
        return sorted((VideoRecord.from_metadata(m) for m in got["metadatas"]), key=lambda r: r.video_id)

    def delete_video(self, video_id: str) -> dict[str, int]:
        """Remove a video: its record first, then its captions, aware captions and frames.

        Records per collection removed.  The record goes first, so a run killed half way leaves
        an unfinished video (which the next ingest or import redoes), never a complete one with
        missing clips; frames go last, so no caption is left without its frame.
        """
        removed = {VIDEOS: len(self.existing_ids(VIDEOS, [video_id]))}
        self._collection(VIDEOS).delete(ids=[video_id])
        names = list(self.collection_names())
        for prefix in _PER_CLIP:
            for name in sorted(n for n in names if n.split(".")[0] == prefix):
                col = self._collection(name)
                ids = col.get(where={"video_id": video_id}, include=[])["ids"]
                for lo in range(0, len(ids), max(1, self._max_batch)):
                    col.delete(ids=ids[lo : lo + self._max_batch])
                if ids:
                    removed[name] = len(ids)
        return removed

    # -- captions ----------------------------------------------------------------------------
    def captions_collection(self, embedder_name: str) -> str:
        """One collection per embedder: Chroma fixes a collection's dimensionality."""
        return f"captions.{collection_slug(embedder_name)}"

    def put_captions(
        self,
        video_id: str,
        captions: Sequence[str],
        embeddings: NDArray[np.float32],
        **keys: Unpack[CaptionKeys],
    ) -> None:
        """All captions of a video, clip i at index i (an imported captions file)."""
        self.put_clip_captions(video_id, range(len(captions)), captions, embeddings, **keys)

    def get_captions(
        self, video_id: str, *, source: str, embedder_name: str, prompt_hash: str | None = None
    ) -> tuple[list[str], NDArray[np.float32]]:
        """Captions of a video in clip order with their embeddings (of one caption prompt, if given)."""
        conditions: list[dict[str, Any]] = [{"video_id": video_id}, {"source": source}]
        if prompt_hash is not None:
            conditions.append({"prompt_hash": prompt_hash})
        _, docs, emb = self._clip_records(self.captions_collection(embedder_name), conditions, documents=True)
        return docs, emb

    def put_clip_captions(
        self,
        video_id: str,
        clips: Sequence[int],
        captions: Sequence[str],
        embeddings: NDArray[np.float32],
        **keys: Unpack[CaptionKeys],
    ) -> None:
        """Agnostic captions of some clips of an ingested video (the record that finishes a clip)."""
        _check_captions(video_id, clips, captions, embeddings, "captions")
        source, prompt_hash = keys["source"], keys["prompt_hash"]
        self._put_clips(
            self.captions_collection(keys["embedder_name"]),
            video_id,
            clips,
            [caption_id(video_id, c, source, prompt_hash) for c in clips],
            embeddings,
            captions,
            source=source,
            prompt_hash=prompt_hash,
        )

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored in collection ``name`` (no payload is read)."""
        found: set[str] = set()
        for got in self._get_by_ids(name, ids, []):
            found.update(got["ids"])
        return found

    # -- caption texts (one embedding per distinct text, for imports) -------------------------
    def texts_collection(self, embedder_name: str) -> str:
        """Distinct caption texts and their embeddings: an import embeds each text once per store."""
        return f"caption_texts.{collection_slug(embedder_name)}"

    def get_text_embeddings(
        self, texts: Sequence[str], *, embedder_name: str
    ) -> dict[str, NDArray[np.float32]]:
        """``{text: embedding}`` for those of ``texts`` already embedded by ``embedder_name``.

        Ids are hashes of the text; the stored text is compared too, so a hash collision is a
        miss (re-embedded), never a wrong vector.
        """
        found: dict[str, NDArray[np.float32]] = {}
        wanted = set(texts)
        ids = [text_hash(t, 32) for t in texts]
        for got in self._get_by_ids(self.texts_collection(embedder_name), ids, ["embeddings", "documents"]):
            found.update(
                (doc, np.asarray(emb, dtype=np.float32))
                for doc, emb in zip(got["documents"], got["embeddings"], strict=True)
                if doc in wanted
            )
        return found

    def put_text_embeddings(
        self, texts: Sequence[str], embeddings: NDArray[np.float32], *, embedder_name: str
    ) -> None:
        """Record distinct texts' embeddings (upsert: re-recording a text changes nothing)."""
        if len(texts) != len(embeddings):
            raise InputError(f"{len(texts)} caption texts but {len(embeddings)} embeddings")
        if not len(texts):
            return
        self._upsert(
            self.texts_collection(embedder_name),
            ids=[text_hash(t, 32) for t in texts],
            embeddings=np.asarray(embeddings, dtype=np.float32),
            documents=list(texts),
        )

    # -- frames ------------------------------------------------------------------------------
    def frames_collection(self, clip_model: str) -> str:
        """One collection per CLIP model: Chroma fixes a collection's dimensionality."""
        return f"frames.{collection_slug(clip_model)}"

    def put_frames(
        self,
        video_id: str,
        clips: Sequence[int],
        embeddings: NDArray[np.float32],
        *,
        clip_model: str,
        sampling_key: str,
    ) -> None:
        """CLIP image embeddings of some clips (written before the clips' captions)."""
        if len(clips) != len(embeddings):
            raise InputError(f"video {video_id}: {len(clips)} clips but {len(embeddings)} frame embeddings")
        self._put_clips(
            self.frames_collection(clip_model),
            video_id,
            clips,
            [frame_id(video_id, c, clip_model, sampling_key) for c in clips],
            embeddings,
            sampling=sampling_key,
        )

    def get_frames(
        self, video_id: str, *, clip_model: str, sampling_key: str
    ) -> tuple[list[int], NDArray[np.float32]]:
        """(clip indices, embeddings) of a video's frames in clip order."""
        conditions: list[dict[str, Any]] = [{"video_id": video_id}, {"sampling": sampling_key}]
        clips, _, emb = self._clip_records(self.frames_collection(clip_model), conditions)
        return clips, emb

    # -- query-aware captions ----------------------------------------------------------------
    def aware_collection(self, embedder_name: str) -> str:
        return f"aware_captions.{collection_slug(embedder_name)}"

    def put_aware_captions(
        self,
        video_id: str,
        clips: Sequence[int],
        captions: Sequence[str],
        embeddings: NDArray[np.float32],
        *,
        query_hash: str,
        **keys: Unpack[CaptionKeys],
    ) -> None:
        """Query-aware captions of some clips for one query (and focus): ``query_hash``."""
        _check_captions(video_id, clips, captions, embeddings, "aware captions")
        self._put_clips(
            self.aware_collection(keys["embedder_name"]),
            video_id,
            clips,
            _aware_ids(video_id, clips, query_hash, keys),
            embeddings,
            captions,
            source=keys["source"],
            query_hash=query_hash,
        )

    def get_aware_captions(
        self, video_id: str, clips: Sequence[int], *, query_hash: str, **keys: Unpack[CaptionKeys]
    ) -> dict[int, tuple[str, NDArray[np.float32]]]:
        """Cached aware captions of ``clips`` for one query: ``{clip: (text, embedding)}``."""
        ids = _aware_ids(video_id, clips, query_hash, keys)
        if not ids:
            return {}
        got = self._collection(self.aware_collection(keys["embedder_name"])).get(
            ids=ids, include=["embeddings", "metadatas", "documents"]
        )
        return {
            int(m["clip"]): (doc, np.asarray(emb, dtype=np.float32))
            for m, doc, emb in zip(got["metadatas"], got["documents"], got["embeddings"], strict=True)
        }

    # -- rewrites ----------------------------------------------------------------------------
    def get_rewrite(self, key: str) -> dict[str, Any] | None:
        got = self._collection(REWRITES).get(ids=[key], include=["metadatas"])
        if not got["ids"]:
            return None
        value: dict[str, Any] = json.loads(got["metadatas"][0]["json"])
        return value

    def get_rewrites(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for got in self._get_by_ids(REWRITES, keys, ["metadatas"]):
            out.update({i: json.loads(m["json"]) for i, m in zip(got["ids"], got["metadatas"], strict=True)})
        return out

    def put_rewrites(self, items: dict[str, dict[str, Any]], query_texts: dict[str, str]) -> None:
        if not items:
            return
        keys = list(items)
        self._upsert(
            REWRITES,
            ids=keys,
            embeddings=[_PLACEHOLDER] * len(keys),
            documents=[query_texts.get(k, "") for k in keys],
            metadatas=[{"json": json.dumps(items[k], ensure_ascii=False)} for k in keys],
        )

    def count(self, name: str) -> int:
        return int(self._collection(name).count())

    # -- whole-store reads (store check, videos rm) -------------------------------------------
    def records_per_video(self, name: str, page: int = 5000) -> dict[str, dict[tuple[str, str], int]]:
        """Page through every record of collection ``name``: records per ``video_id``, split by
        (``source``, ``prompt_hash``) (empty where a record has none, e.g. frames).

        Split because a video's captions are read for its record's source (and prompt): rows of
        another captioner or caption prompt stay in the store without being read, so only the
        rows of the record's keys say whether it has as many captions as clips."""
        col = self._collection(name)
        tally: dict[str, dict[tuple[str, str], int]] = {}
        offset = 0
        while True:
            got = col.get(include=["metadatas"], limit=page, offset=offset)
            for meta in got["metadatas"]:
                count_record(tally, meta or {})
            if len(got["ids"]) < page:
                return tally
            offset += page

    def search_once(self, name: str) -> None:
        """One nearest-neighbour search in ``name`` (loads its index, which is what breaks)."""
        col = self._collection(name)
        first = col.get(limit=1, include=["embeddings"])
        if first["ids"]:
            col.query(query_embeddings=[first["embeddings"][0]], n_results=1, include=[])

    def has_clip_records(self, video_id: str) -> bool:
        """Captions or frames of ``video_id`` exist (an unfinished ingest has no video record)."""
        names = [n for n in self.collection_names() if n.split(".")[0] in _PER_CLIP]
        return any(
            self._collection(n).get(where={"video_id": video_id}, limit=1, include=[])["ids"] for n in names
        )

    def collection_names(self) -> Iterator[str]:
        with self._errors():
            cols = self._client.list_collections()
        for col in cols:
            yield col if isinstance(col, str) else col.name


_STORES: dict[tuple[str, str], Store] = {}
_STORES_LOCK = threading.Lock()


def _where(store_dir: str | Path | None, chroma_url: str | None) -> tuple[str | None, Path]:
    """(server URL or None, folder) of the store :func:`open_store` opens for these arguments."""
    url = chroma_url if chroma_url is not None else os.environ.get("CHROMA_URL") or None
    return url, Path(store_dir).expanduser() if store_dir else default_store_dir()


def store_location(store_dir: str | Path | None = None, chroma_url: str | None = None) -> str:
    """The :attr:`Store.location` of the store :func:`open_store` opens for these arguments,
    without opening it (one that failed to open would be tried, and waited for, again)."""
    url, path = _where(store_dir, chroma_url)
    return url or str(path)


def open_store(
    store_dir: str | Path | None = None,
    chroma_url: str | None = None,
    *,
    lock_timeout: float | None = None,
) -> Store:
    """One Store per location per process (a Chroma client is costly and holds the SQLite file).

    An embedded folder stays locked for this process until :func:`close_stores` (or exit).
    """
    url, path = _where(store_dir, chroma_url)
    key = (url or "", "" if url else str(path.resolve()))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = Store(None if url else path, url, lock_timeout=lock_timeout)
            _STORES[key] = store
        return store


def close_stores() -> None:
    """Close every store :func:`open_store` opened, freeing their folders for other processes."""
    with _STORES_LOCK:
        stores = list(_STORES.values())
        _STORES.clear()
    for store in stores:
        store.close()
