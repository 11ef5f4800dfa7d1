"""Captioner backends: query-agnostic captions of every clip, query-aware captions of key clips.

GranAlign captions each clip's frame twice: once *query-agnostic* at ingest (``C_agn``, generic,
cached forever), and once *query-aware* at query time for the CLIP filter's key clips only
(``C_awr``), with a prompt guided by the entities and actions extracted from the query
(:class:`QueryFocus`).  The aware prompt names what to look for but asks the model to mention
only what it sees, because a leading prompt otherwise invites the captioner to hallucinate the
query into every frame.

Specs:

``local:<hf-id-or-path>``   a transformers image-text model run here (AutoProcessor +
                            AutoModelForImageTextToText, e.g. Qwen2.5-VL), batched, greedy.
``openai:<url>#<model>``    an OpenAI-compatible server (vLLM serving Qwen2.5-VL-7B-Instruct):
                            frames as base64 JPEG data URLs, many requests in flight;
                            ``openai:<url1>,<url2>#<model>`` spreads them over replicas.

Both shrink frames to at most ``max_pixels`` before captioning (the cost of a VLM grows with
image tokens; Qwen2.5-VL spends one token per 28×28 pixels).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from granalign.backends.model_cache import LoadedModel, ModelCache, generate_greedy, pad_left
from granalign.backends.openai_llm import (
    Channel,
    ServerSettings,
    call_with_retries,
    completion_text,
    run_sync,
)
from granalign.backends.weights import (
    TRANSFORMERS_FILES,
    declared_test_weights,
    download_hint,
    require_hub_model,
)
from granalign.errors import BackendError, ConfigError
from granalign.prompt_files import prompt_text
from granalign.specs import parse_spec
from granalign.tokens import FOCUS_STOPWORDS, letter_words

__all__ = [
    "AGNOSTIC_PROMPT",
    "AWARE_PROMPT",
    "Captioner",
    "LocalVLMCaptioner",
    "OpenAICaptioner",
    "QueryFocus",
    "aware_prompt",
    "clean_caption",
    "focus_from_keywords",
    "make_captioner",
    "shrink",
]

AGNOSTIC_PROMPT = prompt_text("captions/agnostic")
"""The query-agnostic caption prompt (C_agn, ``prompts/captions/agnostic.txt``); part of every
agnostic caption's cache key."""

AWARE_PROMPT = prompt_text("captions/aware")
"""The query-aware caption prompt (C_awr, ``prompts/captions/aware.txt``); ``{focus}`` lists the
query's entities and actions."""

MAX_CAPTION_CHARS = 600


@dataclass(frozen=True)
class QueryFocus:
    """The entities and actions of a query that guide its query-aware captions.

    ``source`` says where they came from: ``llm`` (the rewriter's model) or ``keywords`` (the
    query's content words, when the rewriter cannot extract them or its answer was unusable).
    """

    entities: tuple[str, ...]
    actions: tuple[str, ...]
    source: str = "llm"
    note: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entities": list(self.entities),
            "actions": list(self.actions),
            "source": self.source,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Any) -> QueryFocus:
        if not isinstance(data, dict):
            raise ConfigError(f"a query focus must be a JSON object, got {type(data).__name__}")
        return cls(
            tuple(str(x) for x in data.get("entities", [])),
            tuple(str(x) for x in data.get("actions", [])),
            str(data.get("source", "llm")),
            str(data.get("note", "")),
        )


def focus_from_keywords(query: str, *, note: str = "") -> QueryFocus:
    """A fallback focus: the query's content words (``-ing`` words as actions, the rest as entities).

    Crude, but it only steers the captioner's attention and is recorded as ``source="keywords"``.
    """
    words: list[str] = []
    for w in letter_words(query.lower()):
        if w not in FOCUS_STOPWORDS and len(w) > 1 and w not in words:
            words.append(w)
    actions = tuple(w for w in words if w.endswith("ing") and len(w) > 4)
    entities = tuple(w for w in words if w not in actions)
    return QueryFocus(entities[:12], actions[:12], "keywords", note)


def aware_prompt(focus: QueryFocus, query: str) -> str:
    """The query-aware prompt for one query (the query itself when its focus is empty)."""
    parts = []
    if focus.entities:
        parts.append("these people, animals, objects or places: " + ", ".join(focus.entities))
    if focus.actions:
        parts.append("these actions: " + ", ".join(focus.actions))
    text = "; and ".join(parts) if parts else f'what the search "{query}" describes'
    return AWARE_PROMPT.format(focus=text)


def clean_caption(text: object) -> str:
    """One line of plain text, at most :data:`MAX_CAPTION_CHARS` characters ('' for non-text)."""
    if not isinstance(text, str):
        return ""
    return " ".join(text.split())[:MAX_CAPTION_CHARS]


def shrink(image: Any, max_pixels: int) -> Any:
    """``image`` as RGB with at most ``max_pixels`` pixels (aspect ratio kept; 0 = unchanged)."""
    image = image.convert("RGB")
    w, h = image.size
    if max_pixels > 0 and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
        image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))))
    return image


class Captioner(Protocol):
    """Captions images, one prompt per image; ``name`` identifies the model in cache keys."""

    name: str
    weights_note: str
    """Non-empty when the model's weights are random or test-only: runs on them must say so."""

    def caption(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        """One caption per image, in order; a server failure raises BackendError."""
        ...


# ---------------------------------------------------------------------------------------------
# local: transformers image-text models
# ---------------------------------------------------------------------------------------------


_VLMS = ModelCache("captioner")


def _require_vlm(location: str) -> None:
    """A hub id must be in the cache or the hub reachable (one try); a path must exist."""
    if Path(location).exists():
        return
    if location.startswith((".", "/", "~")) or location.count("/") > 1:
        raise ConfigError(f"captioner model {location!r}: no such model folder")
    require_hub_model(
        f"captioner model {location}",
        location,
        TRANSFORMERS_FILES,
        f"{download_hint(location)}, set captioner=local:/path/to/model-folder, or serve it with vLLM "
        f"and set captioner=openai:http://HOST:8000/v1#{location}",
    )


def _load_vlm(location: str, device: str) -> LoadedModel:
    """Processor (as ``tokenizer``) and model once per (model, device) per process; failures
    become ConfigError."""
    return _VLMS.get(location, device, lambda: _read_vlm(location, device))


def _read_vlm(location: str, device: str) -> tuple[Any, Any]:
    """(processor, model) of an image-text model from the hub cache or a folder."""
    _require_vlm(location)
    import transformers

    auto: Any = transformers  # untyped factories; the loaded objects are used duck-typed
    processor = auto.AutoProcessor.from_pretrained(location)
    model = auto.AutoModelForImageTextToText.from_pretrained(location).to(device).eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        pad_left(tokenizer)
    return processor, model


class LocalVLMCaptioner:
    """Spec ``local:<hf-id-or-path>``: an image-text model run in this process, batched and greedy."""

    def __init__(
        self,
        target: str,
        *,
        max_new_tokens: int = 48,
        max_pixels: int = 448 * 448,
        batch_size: int = 8,
        device: str = "cpu",
    ) -> None:
        if not target.strip():
            raise ConfigError("captioner model name is empty")
        path = Path(target).expanduser()
        self.location = str(path.resolve()) if path.exists() else target.strip()
        self.name = f"local:{path.resolve().name if path.exists() else target.strip()}"
        why = declared_test_weights(path) if path.is_dir() else ""
        self.weights_note = (
            f"captioner {self.name} has test-only weights ({why}): "
            "its captions are meaningless, for tests only"
            if why
            else ""
        )
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.device = device

    def caption(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out: list[str] = []
        for lo in range(0, len(images), self.batch_size):
            out.extend(self._batch(images[lo : lo + self.batch_size], prompts[lo : lo + self.batch_size]))
        return out

    def _render(self, processor: Any, prompt: str) -> str:
        # the prompt before the image: it is then a prefix shared by every frame (prefix caching)
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image"}]}]
        if getattr(processor, "chat_template", None):
            return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return prompt  # captioning models without a chat template take the prompt as a prefix

    def _batch(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        import torch

        loaded = _load_vlm(self.location, self.device)
        processor = loaded.tokenizer
        texts = [self._render(processor, p) for p in prompts]
        pictures = [shrink(im, self.max_pixels) for im in images]
        inputs = processor(text=texts, images=pictures, padding=True, return_tensors="pt").to(self.device)
        tokenizer = getattr(processor, "tokenizer", processor)
        with loaded.lock, torch.inference_mode():
            generated = generate_greedy(
                loaded.model,
                "captioning",
                **inputs,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = generated[:, inputs["input_ids"].shape[1] :]
        return [clean_caption(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------
# openai: an OpenAI-compatible server (vLLM)
# ---------------------------------------------------------------------------------------------


def jpeg_data_url(image: Any, max_pixels: int, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` of ``image`` shrunk to ``max_pixels``."""
    buf = io.BytesIO()
    shrink(image, max_pixels).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICaptioner:
    """Spec ``openai:<url>[,<url>...]#<model>``: one chat request per image, ``concurrency`` in
    flight per server.

    Several base URLs are replicas of one model (one vLLM per GPU): frame ``i`` goes to replica
    ``i mod n``, and a frame whose replica fails (down, timed out, 5xx after its retries) is
    asked of the next one; a replica that failed is tried last for :data:`REPLICA_REST_S`
    seconds.  Captions do not depend on the replica (``name`` holds the model only).
    """

    def __init__(
        self,
        settings: ServerSettings | Sequence[ServerSettings],
        *,
        max_tokens: int = 64,
        max_pixels: int = 448 * 448,
    ) -> None:
        self.replicas = [settings] if isinstance(settings, ServerSettings) else list(settings)
        if not self.replicas:
            raise ConfigError("captioner: no server base URL")
        self.settings = self.replicas[0]
        self.max_tokens = max_tokens
        self.max_pixels = max_pixels
        self.name = f"openai:{self.settings.model}"
        self.weights_note = ""  # a served model's weights are the server's business
        # one client and semaphore per replica for every run of the process
        self.channels = [Channel(r) for r in self.replicas]
        self.channel = self.channels[0]
        self._resting: dict[int, float] = {}  # replica → until when it is tried last (monotonic)

    def caption(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        # encode on this thread: PIL work, and the event loop then only waits on the network
        urls = [jpeg_data_url(im, self.max_pixels) for im in images]
        return run_sync(lambda: self._caption_all(urls, list(prompts)))

    def _order(self, first: int) -> list[int]:
        """Replicas to try for a frame: from ``first`` round the ring, resting ones last."""
        n = len(self.channels)
        ring = [(first + k) % n for k in range(n)]
        now = time.monotonic()
        return sorted(ring, key=lambda r: self._resting.get(r, 0.0) > now)

    async def _ask(self, replica: int, url: str, prompt: str) -> str:
        channel = self.channels[replica]
        client, gate = channel.parts()
        settings = channel.settings
        content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]

        async def call() -> str:
            response = await client.chat.completions.create(
                model=settings.model,
                messages=[{"role": "user", "content": content}],
                temperature=0.0,
                max_tokens=self.max_tokens,
            )
            return completion_text(response)  # none: a failure, never an empty caption

        return await call_with_retries(
            call, settings, what=f"captioner {settings.model}", gate=gate, role="captioner"
        )

    async def _caption_all(self, urls: list[str], prompts: list[str]) -> list[str]:
        async def one(i: int, url: str, prompt: str) -> str:
            order = self._order(i % len(self.channels))
            for k, replica in enumerate(order):
                try:
                    text = await self._ask(replica, url, prompt)
                except BackendError as exc:
                    self._resting[replica] = time.monotonic() + REPLICA_REST_S
                    if k + 1 == len(order):
                        tried = f"{exc}; {len(order)} replicas tried"
                        raise BackendError(tried, status=exc.status) if k else exc from None
                    continue
                self._resting.pop(replica, None)
                return clean_caption(text)
            raise AssertionError("unreachable")  # pragma: no cover

        results = await asyncio.gather(
            *(one(i, u, p) for i, (u, p) in enumerate(zip(urls, prompts, strict=True))),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            if not isinstance(first, BackendError):
                raise first
            failed = f"{first} ({len(errors)} of {len(results)} frames failed)"
            raise BackendError(failed, status=first.status)
        return [r for r in results if isinstance(r, str)]


REPLICA_REST_S = 30.0
"""How long a replica that failed is tried after the others (it is not given up: all may fail)."""


def make_captioner(
    spec: str,
    *,
    max_pixels: int = 448 * 448,
    max_tokens: int = 64,
    concurrency: int = 8,
    timeout_s: float = 60.0,
    attempts: int = 3,
    batch_size: int = 8,
) -> Captioner:
    """Build the captioner a spec names (``local:`` or ``openai:``)."""
    parsed = parse_spec(spec, role="captioner", allowed=("local", "openai"))
    if parsed.engine == "openai":
        replicas = []
        for url in (u.strip() for u in parsed.target.split(",")):
            if url:  # every replica's URL must be a base URL
                parse_spec(f"openai:{url}#{parsed.model}", role="captioner", allowed=("openai",))
                replicas.append(
                    ServerSettings(
                        url, parsed.model, timeout_s=timeout_s, attempts=attempts, concurrency=concurrency
                    )
                )
        return OpenAICaptioner(replicas, max_tokens=max_tokens, max_pixels=max_pixels)
    return LocalVLMCaptioner(
        parsed.target, max_new_tokens=max_tokens, max_pixels=max_pixels, batch_size=batch_size
    )
