"""CLIP backend (open_clip): image embeddings of clip frames and text embeddings of queries.

The CLIP filter (GranAlign step 3) ranks clips by the cosine of the query's CLIP text embedding
and each clip frame's CLIP image embedding.  Frame embeddings are computed once at ingest and
live in Chroma; only the query is embedded at retrieval time.

Spec: ``local:<open_clip model name>`` plus a *pretrained* tag (``laion2b_s34b_b79k``, any tag
open_clip knows, or a local checkpoint file).  The tag ``none`` builds the architecture with
random weights: tests use it because no CLIP weights ship on these machines.  Random weights are
drawn from a fixed seed (without touching the global RNG), so two processes build the same
model and a frame embedded by one matches a query embedded by another; the encoder's
:attr:`name` says ``random-seed0`` so such embeddings never mix with real ones in the store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from granalign.backends.weights import download_hint, require_hub_model
from granalign.errors import ConfigError
from granalign.specs import parse_spec

__all__ = ["RANDOM_WEIGHTS", "ClipEncoder", "OpenClipEncoder", "make_clip_encoder"]

RANDOM_WEIGHTS = ("", "none", "random")
"""Pretrained tags that mean "random weights" (tests only)."""

_SEED = 0


class ClipEncoder(Protocol):
    """Embeds images and texts into one L2-normalised space (float32 rows)."""

    name: str
    weights_note: str
    """Non-empty when the weights are random or test-only: runs on them must say so."""

    def embed_images(self, images: Sequence[Any]) -> NDArray[np.float32]: ...

    def embed_texts(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class OpenClipEncoder:
    """An open_clip model on the CPU (or the device given), loaded on first use, thread-safe."""

    def __init__(self, model: str, pretrained: str, *, device: str = "cpu", batch_size: int = 32) -> None:
        if not model.strip():
            raise ConfigError("CLIP model name is empty")
        self.model_name = model.strip()
        self.pretrained = pretrained.strip()
        self.random = self.pretrained.lower() in RANDOM_WEIGHTS
        tag = f"random-seed{_SEED}" if self.random else Path(self.pretrained).name
        self.name = f"{self.model_name}/{tag}"
        self.weights_note = (
            f"CLIP {self.model_name} has random weights (clip_pretrained={self.pretrained or 'none'}): "
            "its scores are meaningless, for tests only"
            if self.random
            else ""
        )
        self._device = device
        self._batch_size = batch_size
        self._loaded: tuple[Any, Any, Any] | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._build()
            return self._loaded

    def _build(self) -> tuple[Any, Any, Any]:
        try:
            import open_clip
            import torch
        except ImportError as exc:  # pragma: no cover - dependency is declared
            raise ConfigError(f"the CLIP backend needs open_clip_torch: {exc}") from None
        if self.model_name not in open_clip.list_models():
            raise ConfigError(
                f"CLIP model {self.model_name!r} is not an open_clip model (e.g. ViT-B-32, ViT-L-14)"
            )
        if not self.random:
            self._require_weights(open_clip)
        try:
            if self.random:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_SEED)
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        self.model_name, pretrained=None, device=self._device
                    )
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=self.pretrained, device=self._device
                )
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as exc:  # a missing checkpoint offline, an unknown tag: the user's setting
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"CLIP model {self.model_name!r} with pretrained={self.pretrained!r} could not be loaded: "
                f"{reason} (set clip_pretrained to a tag available offline or a checkpoint file)"
            ) from None
        model.eval()
        return model, preprocess, tokenizer

    def _require_weights(self, open_clip: Any) -> None:
        """Fail fast, with what to set, when a pretrained tag's hub weights cannot be had.

        A checkpoint file needs no hub; an unknown tag is left to open_clip's own error.
        """
        if Path(self.pretrained).expanduser().is_file():
            return
        hub = str(open_clip.get_pretrained_cfg(self.model_name, self.pretrained).get("hf_hub", ""))
        if not hub:
            return
        repo_id, filename = os.path.split(hub)  # open_clip's own reading of 'org/repo/file'
        filename = filename or "open_clip_pytorch_model.bin"
        weights = [filename]  # open_clip prefers a .safetensors twin when the hub has one
        if filename == "open_clip_pytorch_model.bin":
            weights.append("open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            weights.append(filename[:-4] + ".safetensors")
        require_hub_model(
            f"CLIP weights {self.model_name}/{self.pretrained} (hub repo {repo_id})",
            repo_id,
            [weights],
            f"{download_hint(repo_id)}, or set clip_pretrained to a checkpoint file "
            "(clip_pretrained=/path/to/open_clip_model.safetensors)",
        )

    def embed_images(self, images: Sequence[Any]) -> NDArray[np.float32]:
        """One unit row per PIL image."""
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        import torch

        model, preprocess, _ = self._load()
        rows: list[NDArray[np.float32]] = []
        with self._lock, torch.inference_mode():
            for lo in range(0, len(images), self._batch_size):
                batch = torch.stack(
                    [preprocess(im.convert("RGB")) for im in images[lo : lo + self._batch_size]]
                )
                rows.append(model.encode_image(batch.to(self._device)).float().cpu().numpy())
        return _unit(np.concatenate(rows).astype(np.float32))

    def embed_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """One unit row per text (truncated to CLIP's 77-token context by the tokenizer)."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        import torch

        model, _, tokenizer = self._load()
        with self._lock, torch.inference_mode():
            tokens = tokenizer(list(texts)).to(self._device)
            out = model.encode_text(tokens).float().cpu().numpy()
        return _unit(out.astype(np.float32))


@lru_cache(maxsize=4)
def make_clip_encoder(spec: str, pretrained: str) -> ClipEncoder:
    """One encoder per (spec, pretrained) per process: building ViT-B-32 costs seconds."""
    parsed = parse_spec(spec, role="CLIP model", allowed=("local",))
    return OpenClipEncoder(parsed.target, pretrained)
