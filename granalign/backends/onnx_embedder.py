"""ONNX Runtime backends of a local sentence-transformers model: float (``#onnx``) and int8 (``#onnx-int8``).

Why: importing a benchmark's captions is almost all sentence embedding, and MiniLM through ONNX
Runtime costs a fraction of the CPU time of PyTorch (int8 about half of float again).  Why not
``SentenceTransformer(backend="onnx")``: it needs ``optimum-onnx``, whose releases pin
``transformers<4.58``; this backend needs only ``onnxruntime`` (already a Chroma dependency) and,
for the one-time export and quantisation, ``onnx`` (the ``onnx`` extra).

The model folder is exported once with ``torch.onnx.export`` (nothing is downloaded) into a
cache folder keyed by the folder's basename and content digest (the one in the embedder's name),
then quantised with ONNX Runtime's dynamic int8 quantiser (per-channel weights of the MatMuls:
per-tensor weights or quantised embedding tables move MiniLM's vectors to cosine ~0.93 of the
float ones; per-channel keeps them > 0.99).
Tokenisation, mean pooling and L2 normalisation follow the folder's sentence-transformers
configuration, so the float variant matches ``SentenceTransformer`` to ~1e-7.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from granalign.backends.model_digest import model_digest
from granalign.errors import ConfigError

VARIANTS = ("onnx", "onnx-int8")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_cache_dir() -> Path:
    """``GRANALIGN_ONNX_CACHE`` or ``<user cache>/granalign/onnx``: exported models live here."""
    env = os.environ.get("GRANALIGN_ONNX_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("granalign")) / "onnx"


def _export_dir(folder: Path) -> Path:
    """The cache folder of ``folder``'s exports: its basename and its content digest.

    The digest is the one in the embedder's name (:func:`~granalign.backends.model_digest.model_digest`:
    every file's name and size, the small files whole, the weights sampled), so the export follows
    the model as the stored vectors do: a moved or copied folder reuses it, and another model at
    the same path gets its own whatever its files' mtimes (an archive or image with normalised
    timestamps, ``cp -p``) and wherever its weights lie (shards).  Path and mtimes keyed it
    before, which missed both.
    """
    resolved = folder.resolve()
    return onnx_cache_dir() / f"{resolved.name}-{model_digest(resolved)}"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    value: dict[str, Any] = json.loads(path.read_text())
    return value


def _check_mean_pooling(folder: Path) -> None:
    """This backend pools like all-MiniLM-L6-v2 (mean of tokens); other poolings would be wrong."""
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    if not pooling.get("pooling_mode_mean_tokens", False):
        raise ConfigError(
            f"text embedder {folder}: the onnx backends support mean-pooling sentence-transformers "
            "models only (1_Pooling/config.json says otherwise); drop the #onnx suffix"
        )


def _export_float(folder: Path, target: Path) -> None:
    """Trace the transformer to ONNX (eager attention: the SDPA path does not trace its mask)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    sample = tokenizer(
        ["a short one", "a longer sentence, so that the batch is padded"], padding=True, return_tensors="pt"
    )

    class _LastHidden(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(
            _LastHidden(model),
            tuple(sample[name] for name in _INPUTS),
            str(target),
            input_names=list(_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _quantize_int8(source: Path, target: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ConfigError(
            f"the #onnx-int8 text embedder needs the 'onnx' package (pip install onnx): {exc}"
        ) from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" warning: no gain measured for MiniLM
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
    finally:
        root.setLevel(level)


def exported_model(folder: Path, variant: str) -> Path:
    """The ``.onnx`` file of ``folder`` for ``variant``, exported (and quantised) on first use.

    Files are written under a temporary name and renamed, so a killed or concurrent export
    never leaves a half-written model where a later run would load it.
    """
    cache = _export_dir(folder)
    cache.mkdir(parents=True, exist_ok=True)
    float_path = cache / "model.onnx"
    if not float_path.exists():
        tmp = cache / f"model.{os.getpid()}.tmp.onnx"
        _export_float(folder, tmp)
        os.replace(tmp, float_path)
    if variant == "onnx":
        return float_path
    int8_path = cache / "model_int8.onnx"
    if not int8_path.exists():
        tmp = cache / f"model_int8.{os.getpid()}.tmp.onnx"
        _quantize_int8(float_path, tmp)
        os.replace(tmp, int8_path)
    return int8_path


def _threads() -> int:
    """``OMP_NUM_THREADS`` caps ONNX Runtime as it caps PyTorch (0 = ONNX Runtime's default)."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() else 0


class OnnxEmbedder:
    """A mean-pooling sentence-transformers folder run by ONNX Runtime on the CPU.

    ``name`` carries the variant (``all-MiniLM-L6-v2#onnx-int8``): it names the captions
    collection and is recorded on every imported video, so int8 and float vectors never mix.
    """

    def __init__(self, name: str, folder: Path, variant: str, *, batch_size: int = 64) -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"text embedder variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
        if not (folder / "tokenizer.json").exists():
            raise ConfigError(
                f"text embedder {name!r}: the onnx backends export from a local model folder with a "
                f"tokenizer.json; {folder} is not one (set embedder=local:/path/to/folder#{variant})"
            )
        self.name = f"{name}#{variant}"
        self._folder = folder
        self._variant = variant
        self._batch_size = batch_size
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort
                from tokenizers import Tokenizer

                _check_mean_pooling(self._folder)
                max_len = int(
                    _read_json(self._folder / "sentence_bert_config.json").get("max_seq_length", 256)
                )
                tokenizer = Tokenizer.from_file(str(self._folder / "tokenizer.json"))
                tokenizer.no_padding()  # tokenizer.json pads to a fixed 128; we pad per batch
                tokenizer.enable_truncation(max_len)
                options = ort.SessionOptions()
                options.intra_op_num_threads = _threads()
                model = exported_model(self._folder, self._variant)
                self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
                self._tokenizer = tokenizer
            return self._session, self._tokenizer

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit rows in input order; batches are length-sorted so little of each is padding."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        session, tokenizer = self._load()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: NDArray[np.float32] | None = None
        for lo in range(0, len(texts), self._batch_size):
            rows = order[lo : lo + self._batch_size]
            vectors = self._embed_batch(
                session, [e.ids for e in tokenizer.encode_batch([texts[i] for i in rows])]
            )
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        assert out is not None
        return out

    @staticmethod
    def _embed_batch(session: Any, token_ids: list[list[int]]) -> NDArray[np.float32]:
        width = max(len(ids) for ids in token_ids)
        input_ids = np.zeros((len(token_ids), width), dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        hidden = session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.asarray(pooled / norms, dtype=np.float32)
