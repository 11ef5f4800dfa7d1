"""A local model folder's identity by content (:func:`model_digest`).

Its own module because two backends key on it: the text embedder's name
(:mod:`granalign.backends.embedder`) and the ONNX export cache
(:mod:`granalign.backends.onnx_embedder`), which the embedder itself imports.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from granalign.errors import ConfigError

__all__ = ["model_digest"]

_WHOLE_FILE_BYTES = 4 << 20
"""Files up to this size (configs, tokenizers, vocabularies) are hashed whole."""
_SAMPLES, _BLOCK = 256, 4096
"""Larger files (weights) are hashed by size and this many evenly spaced blocks (1 MiB)."""


def _model_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix name, path) of the files a loader may read, in a fixed order.

    Hidden entries (``.git``, ``.cache``, ``.gitattributes``) and model cards (``*.md``) are
    left out: editing or adding them does not change a single vector.  A linked subfolder
    (``0_Transformer -> /shared/bert``) is read through, as the loader reads it; one whose
    target was already read (a link back up the tree) is not entered again."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and not name.lower().endswith(".md"):
                path = Path(root) / name
                yield path.relative_to(folder).as_posix(), path


def _file_digest(path: Path, size: int) -> bytes:
    """All of a small file; a large one's blocks at ``_SAMPLES`` evenly spaced offsets."""
    with path.open("rb") as f:
        if size <= _WHOLE_FILE_BYTES:
            return hashlib.sha256(f.read()).digest()
        h = hashlib.sha256()
        for i in range(_SAMPLES):
            f.seek((size - _BLOCK) * i // (_SAMPLES - 1))
            h.update(f.read(_BLOCK))
        return h.digest()


def model_digest(path: Path) -> str:
    """8 hex digits that identify a local model folder (or file) by its content.

    Why this input: a digest of every file's relative name and size, the small files
    (configs, tokenizer, vocabulary) whole and each weight file by 256 evenly spaced 4-KiB
    blocks.  Names and sizes tell architectures and tokenizers apart; the blocks tell a
    fine-tuned copy (same names, sizes and safetensors header) from its base, since training
    moves nearly every weight.  It reads ~1 MiB per weight file, so a 1-GB model costs
    milliseconds on every start, where hashing it whole would cost seconds.  The blocks lie
    size/255 bytes apart (356 KiB in MiniLM, less than its smallest weight matrix), so a
    changed span that long is seen wherever it lies; a smaller edit between two blocks (one
    bias vector set by hand) can go unseen: give such a model a folder of its own name.
    Neither the path nor mtimes enter it: a moved or copied folder keeps its name.
    """
    h = hashlib.sha256()
    files = [(path.name, path)] if path.is_file() else _model_files(path)
    for rel, file in files:
        try:
            size = file.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            h.update(_file_digest(file, size))
        except OSError as exc:
            raise ConfigError(f"text embedder {path}: cannot read its file {rel}: {exc.strerror}") from None
    return h.hexdigest()[:8]
