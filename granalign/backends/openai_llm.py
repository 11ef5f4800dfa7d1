"""OpenAI-compatible servers (vLLM in production): the shared client rules and the rewriter.

Spec ``openai:<base_url>#<model>``, e.g. ``openai:http://gpu-host:8000/v1#meta-llama/Meta-Llama-3-8B-Instruct``.
The API key is ``$OPENAI_API_KEY`` (vLLM's ``--api-key``), ``EMPTY`` when unset.

Rules every network backend here follows (DESIGN.md §3):

* **Explicit retries.**  Only HTTP 5xx answers and timeouts are retried, with exponential
  backoff (:data:`RETRY_ON`); the openai client's own retries are off so the policy is in one
  place.  A 4xx answer is the caller's mistake and a refused connection is a server that is not
  there: retrying either only delays the error.  After the last attempt a
  :class:`BackendError` names the server and what it answered.
* **A timeout per request** (``timeout_s``), not per batch, so one stuck request cannot hold a
  whole ingest.
* **Many requests in flight** through ``AsyncOpenAI`` and a semaphore (``concurrency``): vLLM
  batches concurrent requests on the GPU, so sequential calls would waste it.

:class:`OpenAIRewriter` asks for both rewrites of a prompt pair in one request, as JSON
constrained by ``response_format`` (``json_schema``; vLLM enforces it with guided decoding).
Servers that ignore ``response_format`` (``transformers serve`` does) may answer free text: the
answer is validated all the same, and an unusable one falls back to the original query with
the reason recorded (see :func:`granalign.rewrite.rewrite_from_outputs`), never an exception.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from granalign.errors import ConfigError, GranAlignError
from granalign.rewrite import Rewrite, rewrite_from_outputs
from prompts import PromptPair

__all__ = [
    "FOCUS_SCHEMA",
    "REWRITE_SCHEMA",
    "BackendError",
    "OpenAIRewriter",
    "ServerSettings",
    "call_with_retries",
    "parse_json_object",
    "retry_on",
    "run_sync",
]

T = TypeVar("T")


class BackendError(GranAlignError):
    """A model server could not answer (down, timed out, HTTP error) after the allowed retries."""


@dataclass(frozen=True)
class ServerSettings:
    """Where a server is and how patiently to talk to it."""

    base_url: str
    model: str
    timeout_s: float = 60.0
    attempts: int = 3
    backoff_s: float = 0.5
    concurrency: int = 8

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.attempts < 1 or self.backoff_s < 0 or self.concurrency < 1:
            raise ConfigError(
                f"server settings for {self.base_url}: timeout_s > 0, attempts ≥ 1, backoff_s ≥ 0 and "
                f"concurrency ≥ 1 are required, got {self.timeout_s}, {self.attempts}, {self.backoff_s}, "
                f"{self.concurrency}"
            )


def retry_on() -> tuple[type[BaseException], ...]:
    """The exceptions worth another attempt: HTTP 5xx and timeouts (never ValueError/OSError)."""
    import openai

    return (openai.InternalServerError, openai.APITimeoutError)


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("message") or body.get("error") or body
        return str(detail)[:300]
    return (str(getattr(exc, "message", "")) or str(exc))[:300]


async def call_with_retries(call: Callable[[], Awaitable[T]], settings: ServerSettings, *, what: str) -> T:
    """Await ``call()``; retry 5xx and timeouts with backoff; turn every failure into BackendError."""
    import openai

    retryable = retry_on()
    last: BaseException | None = None
    for attempt in range(settings.attempts):
        try:
            return await call()
        except retryable as exc:
            last = exc
            if attempt + 1 < settings.attempts:
                await asyncio.sleep(settings.backoff_s * (2**attempt))
        except openai.APIConnectionError as exc:
            raise BackendError(
                f"{what}: the server at {settings.base_url} is not reachable ({exc.__cause__ or exc})"
            ) from None
        except openai.APIStatusError as exc:
            raise BackendError(
                f"{what}: the server at {settings.base_url} answered HTTP {exc.status_code}: "
                f"{_status_message(exc)}"
            ) from None
    if isinstance(last, openai.APITimeoutError):
        kind = f"timed out {settings.attempts} time(s) (timeout {settings.timeout_s:g} s per request)"
    else:
        status = getattr(last, "status_code", "5xx")
        kind = f"failed {settings.attempts} time(s), last with HTTP {status}: {_status_message(last)}"
    raise BackendError(f"{what}: the server at {settings.base_url} {kind}")


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, also inside a running event loop.

    Graph nodes are synchronous; ``langgraph dev`` runs them in worker threads, but a caller may
    invoke the graph from a loop thread, where ``asyncio.run`` is not allowed: then a helper
    thread runs the coroutine.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="granalign-openai", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def async_client(settings: ServerSettings) -> Any:
    """An AsyncOpenAI client with our timeout and without the SDK's own retries."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        base_url=settings.base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
        timeout=settings.timeout_s,
        max_retries=0,
    )


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def parse_json_object(text: object) -> dict[str, Any] | None:
    """The JSON object in a model answer (code fences and text around it tolerated), else None."""
    if not isinstance(text, str):
        return None
    body = _FENCE.sub("", text.strip())
    for candidate in (body, body[body.find("{") : body.rfind("}") + 1] if "{" in body else ""):
        if not candidate:
            continue
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# ---------------------------------------------------------------------------------------------
# Rewriter
# ---------------------------------------------------------------------------------------------

REWRITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"simplified": {"type": "string"}, "detailed": {"type": "string"}},
    "required": ["simplified", "detailed"],
    "additionalProperties": False,
}
"""JSON schema of one prompt pair's answer (vLLM enforces it through ``response_format``)."""

FOCUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "entities": {"type": "array", "items": {"type": "string"}, "maxItems": 12},
        "actions": {"type": "array", "items": {"type": "string"}, "maxItems": 12},
    },
    "required": ["entities", "actions"],
    "additionalProperties": False,
}
"""JSON schema of the query focus (entities and actions that guide the query-aware captions)."""

_PAIR_TEMPLATE = """Write two rewrites of the same query.

Task "simplified":
{simplify}

Task "detailed":
{detail}

Answer with one JSON object and nothing else:
{{"simplified": "<answer to the first task>", "detailed": "<answer to the second task>"}}"""

_FOCUS_SYSTEM = "You extract search terms from video search queries. Answer with JSON only."
_FOCUS_TEMPLATE = """List what a camera would show for this video search query.
"entities": the people, animals, objects and places (short noun phrases).
"actions": what they do (short verb phrases).
Example: "A woman in a red coat feeds ducks at a pond." ->
{{"entities": ["woman", "red coat", "ducks", "pond"], "actions": ["feeds ducks"]}}
Query: "{query}"
Answer with one JSON object and nothing else: {{"entities": [...], "actions": [...]}}"""

_MAX_TERM_CHARS = 60
_MAX_TERMS = 12


def _response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


_WORDS = re.compile(r"[a-z0-9]+")


def _grounded(term: str, query: str) -> bool:
    """True when a word of ``term`` shares its first 4 letters with a word of the query.

    Small models copy the prompt's example ("woman, red coat, ducks") instead of reading the
    query; a term with no word from the query (up to inflection: "rides"/"riding") is such a
    copy, or an invention that would steer the captioner toward something not asked for.
    """
    stems = {w[:4] for w in _WORDS.findall(query.lower()) if len(w) > 2}
    return any(w[:4] in stems for w in _WORDS.findall(term.lower()) if len(w) > 2)


def _terms(value: object, query: str) -> list[str] | None:
    """Validated short search terms grounded in the query; None when ``value`` is not a list of strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    out: list[str] = []
    for v in value:
        term = " ".join(v.split()).strip(" .,;:\"'")
        if (
            term
            and len(term) <= _MAX_TERM_CHARS
            and _grounded(term, query)
            and term.lower() not in (t.lower() for t in out)
        ):
            out.append(term)
    return out[:_MAX_TERMS]


class OpenAIRewriter:
    """Spec ``openai:<base_url>#<model>``: GranAlign's rewriting by a served LLM (Llama-3-8B in the paper)."""

    def __init__(self, settings: ServerSettings, *, max_tokens: int = 160) -> None:
        self.settings = settings
        self.max_tokens = max_tokens
        # the model, not the URL: the same model behind another host gives the same rewrites
        self.name = f"openai:{settings.model}"

    async def _chat(
        self, client: Any, system: str, user: str, schema_name: str, schema: dict[str, Any]
    ) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]

        async def call() -> Any:
            return await client.chat.completions.create(
                model=self.settings.model,
                messages=messages,
                temperature=0.0,
                max_tokens=self.max_tokens,
                response_format=_response_format(schema_name, schema),
                # a server without guided decoding may ramble on after a free-text answer
                stop=["\n\n"],
            )

        response = await call_with_retries(call, self.settings, what=f"rewriter {self.settings.model}")
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices else None
        return content if isinstance(content, str) else ""

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        """One request per query (all in flight at once); a server failure raises BackendError."""
        if not queries:
            return []
        return run_sync(lambda: self._rewrite_all(queries, pair))

    async def _rewrite_all(self, queries: Sequence[str], pair: PromptPair) -> list[Rewrite]:
        gate = asyncio.Semaphore(self.settings.concurrency)
        async with async_client(self.settings) as client:

            async def one(query: str) -> Rewrite:
                simplify, detail = pair.render_simplify(query), pair.render_detail(query)
                user = _PAIR_TEMPLATE.format(simplify=simplify, detail=detail)
                async with gate:
                    raw = await self._chat(client, pair.system, user, "rewrite_pair", REWRITE_SCHEMA)
                return self._to_rewrite(pair, query, raw, (simplify, detail))

            return list(await asyncio.gather(*(one(q) for q in queries)))

    @staticmethod
    def _to_rewrite(pair: PromptPair, query: str, raw: str, prompts: tuple[str, str]) -> Rewrite:
        obj = parse_json_object(raw)
        if obj is None:
            snippet = " ".join(raw.split())[:80]
            return Rewrite(
                pair.id, query, query, fallback=True, reason=f"invalid JSON from the server: {snippet!r}"
            )
        return rewrite_from_outputs(
            pair.id, query, obj.get("simplified"), obj.get("detailed"), prompts=prompts
        )

    def extract_focus(self, query: str) -> tuple[list[str], list[str], str]:
        """(entities, actions, problem) of a query; ``problem`` is empty when the answer was usable."""
        raw = run_sync(lambda: self._focus(query))
        obj = parse_json_object(raw)
        if obj is None:
            return [], [], f"invalid JSON from the server: {' '.join(raw.split())[:80]!r}"
        entities, actions = _terms(obj.get("entities"), query), _terms(obj.get("actions"), query)
        if entities is None or actions is None:
            return [], [], "the server's JSON has no lists of strings 'entities' and 'actions'"
        if not entities and not actions:
            return [], [], "the server gave no entities or actions that occur in the query"
        return entities, actions, ""

    async def _focus(self, query: str) -> str:
        async with async_client(self.settings) as client:
            return await self._chat(
                client, _FOCUS_SYSTEM, _FOCUS_TEMPLATE.format(query=query), "query_focus", FOCUS_SCHEMA
            )
