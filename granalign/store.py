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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from numpy.typing import NDArray

from granalign.errors import ConfigError, InputError

VIDEOS = "videos"
REWRITES = "rewrites"
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
        )


def caption_id(video_id: str, clip: int, source: str, prompt_hash: str) -> str:
    return f"{video_id}:{clip:06d}:{source}:{prompt_hash}"


def frame_id(video_id: str, clip: int, model: str, sampling_key: str) -> str:
    """Id of one clip's CLIP image embedding; ``sampling_key`` covers the clip length."""
    return f"{video_id}:{clip:06d}:{model}:{sampling_key}"


def aware_id(video_id: str, clip: int, source: str, prompt_hash: str, query_hash: str) -> str:
    """Id of one query-aware caption: the agnostic id plus the query (and its focus) hash."""
    return f"{video_id}:{clip:06d}:{source}:{prompt_hash}:{query_hash}"


def _client_for(store_dir: Path | None, chroma_url: str | None) -> Any:
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if chroma_url:
        parsed = urlparse(chroma_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"CHROMA_URL {chroma_url!r} must look like http://host:port")
        port = parsed.port or (443 if parsed.scheme == "https" else 8000)
        try:
            return chromadb.HttpClient(
                host=parsed.hostname, port=port, ssl=parsed.scheme == "https", settings=settings
            )
        except Exception as exc:
            raise ConfigError(f"Chroma server at {chroma_url} is not reachable: {exc}") from None
    path = store_dir or default_store_dir()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"store folder {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=settings)


class Store:
    """Typed access to the project's Chroma collections (thread-safe for our use)."""

    def __init__(self, store_dir: Path | None = None, chroma_url: str | None = None) -> None:
        self.location = chroma_url or str(store_dir or default_store_dir())
        self._client = _client_for(store_dir, chroma_url)
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._max_batch = int(getattr(self._client, "get_max_batch_size", lambda: 4000)())

    def _collection(self, name: str) -> Any:
        with self._lock:
            col = self._collections.get(name)
            if col is None:
                col = self._client.get_or_create_collection(
                    name, embedding_function=None, metadata={"hnsw:space": "cosine"}
                )
                self._collections[name] = col
            return col

    def _upsert(self, name: str, **fields: Any) -> None:
        col = self._collection(name)
        n = len(fields["ids"])
        step = max(1, self._max_batch)
        for lo in range(0, n, step):
            col.upsert(**{k: v[lo : lo + step] for k, v in fields.items()})

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

    def complete_video_ids(self, video_ids: Sequence[str], *, source: str, embedder_name: str) -> set[str]:
        """Which of ``video_ids`` are fully stored for this caption source and embedder."""
        done: set[str] = set()
        col = self._collection(VIDEOS)
        ids = list(video_ids)
        for lo in range(0, len(ids), 1000):
            got = col.get(ids=ids[lo : lo + 1000], include=["metadatas"])
            done.update(
                i
                for i, m in zip(got["ids"], got["metadatas"], strict=True)
                if m.get("complete")
                and m.get("caption_source") == source
                and m.get("caption_embedder") == embedder_name
            )
        return done

    def list_videos(self) -> list[VideoRecord]:
        got = self._collection(VIDEOS).get(include=["metadatas"])
        return sorted((VideoRecord.from_metadata(m) for m in got["metadatas"]), key=lambda r: r.video_id)

    # -- captions ----------------------------------------------------------------------------
    def captions_collection(self, embedder_name: str) -> str:
        """One collection per embedder: Chroma fixes a collection's dimensionality."""
        return f"captions.{collection_slug(embedder_name)}"

    def put_captions(
        self,
        video_id: str,
        captions: Sequence[str],
        embeddings: NDArray[np.float32],
        *,
        source: str,
        prompt_hash: str,
        embedder_name: str,
    ) -> None:
        """All captions of a video, clip i at index i (an imported captions file)."""
        self.put_clip_captions(
            video_id,
            range(len(captions)),
            captions,
            embeddings,
            source=source,
            prompt_hash=prompt_hash,
            embedder_name=embedder_name,
        )

    def get_captions(
        self, video_id: str, *, source: str, embedder_name: str, prompt_hash: str | None = None
    ) -> tuple[list[str], NDArray[np.float32]]:
        """Captions of a video in clip order with their embeddings (of one caption prompt, if given)."""
        conditions: list[dict[str, Any]] = [{"video_id": video_id}, {"source": source}]
        if prompt_hash is not None:
            conditions.append({"prompt_hash": prompt_hash})
        got = self._collection(self.captions_collection(embedder_name)).get(
            where={"$and": conditions},
            include=["embeddings", "metadatas", "documents"],
        )
        if not got["ids"]:
            return [], np.zeros((0, 0), dtype=np.float32)
        order = np.argsort([m["clip"] for m in got["metadatas"]], kind="stable")
        docs = [got["documents"][i] for i in order]
        emb = np.asarray(got["embeddings"], dtype=np.float32)[order]
        return docs, emb

    def put_clip_captions(
        self,
        video_id: str,
        clips: Sequence[int],
        captions: Sequence[str],
        embeddings: NDArray[np.float32],
        *,
        source: str,
        prompt_hash: str,
        embedder_name: str,
    ) -> None:
        """Agnostic captions of some clips of an ingested video (the record that finishes a clip)."""
        if not len(clips) == len(captions) == len(embeddings):
            raise InputError(
                f"video {video_id}: {len(clips)} clips, {len(captions)} captions, "
                f"{len(embeddings)} embeddings"
            )
        if not clips:
            return
        self._upsert(
            self.captions_collection(embedder_name),
            ids=[caption_id(video_id, c, source, prompt_hash) for c in clips],
            embeddings=np.asarray(embeddings, dtype=np.float32),
            documents=list(captions),
            metadatas=[
                {"video_id": video_id, "clip": int(c), "source": source, "prompt_hash": prompt_hash}
                for c in clips
            ],
        )

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored in collection ``name`` (no payload is read)."""
        found: set[str] = set()
        col = self._collection(name)
        ids = list(ids)
        for lo in range(0, len(ids), 1000):
            found.update(col.get(ids=ids[lo : lo + 1000], include=[])["ids"])
        return found

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
        if not clips:
            return
        self._upsert(
            self.frames_collection(clip_model),
            ids=[frame_id(video_id, c, clip_model, sampling_key) for c in clips],
            embeddings=np.asarray(embeddings, dtype=np.float32),
            metadatas=[{"video_id": video_id, "clip": int(c), "sampling": sampling_key} for c in clips],
        )

    def get_frames(
        self, video_id: str, *, clip_model: str, sampling_key: str
    ) -> tuple[list[int], NDArray[np.float32]]:
        """(clip indices, embeddings) of a video's frames in clip order."""
        got = self._collection(self.frames_collection(clip_model)).get(
            where={"$and": [{"video_id": video_id}, {"sampling": sampling_key}]},
            include=["embeddings", "metadatas"],
        )
        if not got["ids"]:
            return [], np.zeros((0, 0), dtype=np.float32)
        clips = [int(m["clip"]) for m in got["metadatas"]]
        order = np.argsort(clips, kind="stable")
        return [clips[i] for i in order], np.asarray(got["embeddings"], dtype=np.float32)[order]

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
        source: str,
        prompt_hash: str,
        query_hash: str,
        embedder_name: str,
    ) -> None:
        if not len(clips) == len(captions) == len(embeddings):
            raise InputError(
                f"video {video_id}: {len(clips)} clips, {len(captions)} aware captions, "
                f"{len(embeddings)} embeddings"
            )
        if not clips:
            return
        self._upsert(
            self.aware_collection(embedder_name),
            ids=[aware_id(video_id, c, source, prompt_hash, query_hash) for c in clips],
            embeddings=np.asarray(embeddings, dtype=np.float32),
            documents=list(captions),
            metadatas=[
                {"video_id": video_id, "clip": int(c), "source": source, "query_hash": query_hash}
                for c in clips
            ],
        )

    def get_aware_captions(
        self,
        video_id: str,
        clips: Sequence[int],
        *,
        source: str,
        prompt_hash: str,
        query_hash: str,
        embedder_name: str,
    ) -> dict[int, tuple[str, NDArray[np.float32]]]:
        """Cached aware captions of ``clips`` for one query: ``{clip: (text, embedding)}``."""
        ids = [aware_id(video_id, c, source, prompt_hash, query_hash) for c in clips]
        if not ids:
            return {}
        got = self._collection(self.aware_collection(embedder_name)).get(
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
        col = self._collection(REWRITES)
        keys = list(keys)
        for lo in range(0, len(keys), 1000):
            got = col.get(ids=keys[lo : lo + 1000], include=["metadatas"])
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

    def collection_names(self) -> Iterator[str]:
        for col in self._client.list_collections():
            yield col if isinstance(col, str) else col.name


_STORES: dict[tuple[str, str], Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(store_dir: str | Path | None = None, chroma_url: str | None = None) -> Store:
    """One Store per location per process (a Chroma client is costly and holds the SQLite file)."""
    url = chroma_url if chroma_url is not None else os.environ.get("CHROMA_URL") or None
    path = Path(store_dir).expanduser() if store_dir else default_store_dir()
    key = (url or "", "" if url else str(path.resolve()))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = Store(None if url else path, url)
            _STORES[key] = store
        return store
