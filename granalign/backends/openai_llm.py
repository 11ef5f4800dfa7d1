"""OpenAI-compatible servers (vLLM in production): the shared client rules and the rewriter.

Spec ``openai:<base_url>#<model>``, e.g. ``openai:http://gpu-host:8000/v1#meta-llama/Meta-Llama-3-8B-Instruct``.
The API key is ``$OPENAI_API_KEY`` (vLLM's ``--api-key``), ``EMPTY`` when unset.

Rules every network backend here follows (DESIGN.md §3):

* **Explicit retries.**  Only HTTP 5xx answers, 429 (after its ``Retry-After``, at most
  ``timeout_s``), timeouts and 200 answers without a usable completion (a proxy's page, a body
  cut short) are retried, with exponential
  backoff (:data:`RETRY_ON`); the openai client's own retries are off so the policy is in one
  place.  Another 4xx answer is the caller's mistake and a refused connection is a server that is not
  there: retrying either only delays the error.  After the last attempt a
  :class:`BackendError` names the server and what it answered.
* **A timeout per request** (``timeout_s``), not per batch, so one stuck request cannot hold a
  whole ingest.
* **Many requests in flight, but at most ``concurrency`` per server per process**: each backend
  has one ``AsyncOpenAI`` client (:class:`Channel`), and every backend that talks to a server
  shares its one semaphore (:func:`server_gate`), on one event loop that every run shares
  (:func:`backend_loop`).  vLLM batches concurrent requests on the GPU, so
  sequential calls would waste it; unbounded ones across runs would swamp it.

:class:`OpenAIRewriter` asks for both rewrites of a prompt pair in one request, as JSON
constrained by ``response_format`` (``json_schema``; vLLM enforces it with guided decoding).
Servers that ignore ``response_format`` (``transformers serve`` does) may answer free text: the
answer is validated all the same, and an unusable one falls back to the original query with
the reason recorded (see :func:`granalign.rewrite.rewrite_from_outputs`), never an exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import hashlib
import json
import os
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from granalign.errors import MISCONFIGURED_STATUSES, BackendError, ConfigError
from granalign.prompt_files import prompt_text
from granalign.rewrite import Rewrite, rewrite_from_outputs
from granalign.text import without_markup
from granalign.tokens import alnum_words
from prompts import PromptPair

__all__ = [
    "FOCUS_SCHEMA",
    "FOCUS_SYSTEM",
    "FOCUS_TEMPLATE",
    "REWRITE_SCHEMA",
    "Abandoned",
    "CancelScope",
    "Channel",
    "OpenAIRewriter",
    "ServerSettings",
    "backend_loop",
    "call_with_retries",
    "cancel_scope",
    "completion_text",
    "parse_json_object",
    "retry_on",
    "run_sync",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSettings:
    """Where a server is and how patiently to talk to it."""

    base_url: str
    model: str
    timeout_s: float = 60.0
    attempts: int = 3
    backoff_s: float = 0.5
    concurrency: int = 8

    @property
    def shown_url(self) -> str:
        """``base_url`` without a ``user:password@`` part: errors reach callers' notes and logs."""
        parts = urlsplit(self.base_url)
        if parts.username is None and parts.password is None:
            return self.base_url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.attempts < 1 or self.backoff_s < 0 or self.concurrency < 1:
            raise ConfigError(
                f"server settings for {self.shown_url}: timeout_s > 0, attempts ≥ 1, backoff_s ≥ 0 and "
                f"concurrency ≥ 1 are required, got {self.timeout_s}, {self.attempts}, {self.backoff_s}, "
                f"{self.concurrency}"
            )


def retry_on() -> tuple[type[BaseException], ...]:
    """The exceptions worth another attempt: HTTP 5xx, 429 and timeouts (never ValueError/OSError).

    429 is a server (or the gateway in front of it) asking to come back later, not a mistake in
    the request: it is retried after its ``Retry-After`` (:func:`_retry_after`).
    """
    import openai

    return (openai.InternalServerError, openai.RateLimitError, openai.APITimeoutError)


def _retry_after(exc: BaseException, cap_s: float) -> float:
    """The seconds a 429's ``Retry-After`` (or ``retry-after-ms``) asks for, at most ``cap_s``; 0 if none."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return 0.0
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) * scale
        except ValueError:
            continue  # absent, or an HTTP date: the backoff is used
        if seconds == seconds:  # not NaN
            return min(max(seconds, 0.0), cap_s)
    return 0.0


class NoCompletion(Exception):
    """A 200 answer that holds no completion's text (no choices, no message, content null)."""


def completion_text(response: Any) -> str:
    """The text of a chat completion's first choice; NoCompletion when the answer has none.

    An empty caption or rewrite taken from such an answer would be stored as a result (an
    agnostic caption is kept forever), so it is a server failure, retried like a 5xx.
    """
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        error = getattr(response, "error", None)
        raise NoCompletion(f"no choices{f' ({str(error)[:200]})' if error else ''}")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str):
        reason = getattr(choices[0], "finish_reason", None)
        raise NoCompletion(f"no message content (finish_reason {reason!r})")
    return content


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("message") or body.get("error") or body
        return str(detail)[:300]
    return (str(getattr(exc, "message", "")) or str(exc))[:300]


_MISCONFIGURED_HINTS = {
    401: "check its API key ($OPENAI_API_KEY)",
    403: "its API key ($OPENAI_API_KEY) may not use this model: check the key and its permissions",
    404: "check the model name after '#' and the base URL's path (vLLM serves under /v1)",
}


def misconfigured_message(role: str, settings: ServerSettings, status: int, detail: str) -> str:
    """One line for a 401/403/404: the setting (``role``), its spec, the status and what to check.

    Such an answer is this deployment's mistake, not a busy server (``BackendError.misconfigured``),
    so the message says what to fix rather than that the server failed.
    """
    from http import HTTPStatus

    try:
        answer = f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        answer = f"HTTP {status}"
    hint = _MISCONFIGURED_HINTS.get(status, "check its settings")
    spec = f"openai:{settings.shown_url}#{settings.model}"
    return f"{role} {spec} answered {answer}: {hint} (the server said: {detail})"


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    settings: ServerSettings,
    *,
    what: str,
    gate: asyncio.Semaphore | None = None,
    role: str | None = None,
) -> T:
    """Await ``call()``; retry 5xx, 429 and timeouts with backoff; turn every failure into BackendError.

    ``role``: the setting the server is given in (``rewriter``, ``captioner``); a 401, 403 or 404
    answer then names it and what to check (:func:`misconfigured_message`).

    ``gate`` (the backend's ``concurrency`` semaphore) is held per attempt, not around the
    retries: a request waiting out its backoff or a 429's ``Retry-After`` has nothing in
    flight, and keeping its slot would stall every other request to a server that answers
    them.  It is taken before the timeout starts: time queued behind our own requests is not
    a slow server.
    """
    import openai

    # a 200 whose body is not JSON (a proxy's page, a body cut short; the openai client lets
    # json's error through) or holds no completion's text is the server's fault, like a 5xx
    # TimeoutError: the whole request past timeout_s.  The client's own timeout bounds each
    # network wait, so a server that trickles its answer a byte at a time would never end.
    retryable: tuple[type[BaseException], ...] = (
        *retry_on(),
        json.JSONDecodeError,
        NoCompletion,
        TimeoutError,
    )
    last: BaseException | None = None
    for attempt in range(settings.attempts):
        try:
            async with gate if gate is not None else contextlib.nullcontext():
                return await asyncio.wait_for(call(), settings.timeout_s)
        except retryable as exc:
            last = exc
            if attempt + 1 < settings.attempts:
                wait = settings.backoff_s * (2**attempt)
                await asyncio.sleep(max(wait, _retry_after(exc, settings.timeout_s)))
        except openai.APIConnectionError as exc:
            raise BackendError(
                f"{what}: the server at {settings.shown_url} is not reachable ({exc.__cause__ or exc})"
            ) from None
        except openai.APIStatusError as exc:
            if role is not None and exc.status_code in MISCONFIGURED_STATUSES:
                raise BackendError(
                    misconfigured_message(role, settings, exc.status_code, _status_message(exc)),
                    status=exc.status_code,
                ) from None
            raise BackendError(
                f"{what}: the server at {settings.shown_url} answered HTTP {exc.status_code}: "
                f"{_status_message(exc)}",
                status=exc.status_code,
            ) from None
    if isinstance(last, openai.APITimeoutError | TimeoutError):
        kind = f"timed out {settings.attempts} time(s) (timeout {settings.timeout_s:g} s per request)"
    elif isinstance(last, json.JSONDecodeError):
        snippet = " ".join(without_markup(str(last.doc)).split())[:80]
        kind = f"answered HTTP 200 {settings.attempts} time(s) with a body that is not JSON: {snippet!r}"
    elif isinstance(last, NoCompletion):
        kind = f"answered HTTP 200 {settings.attempts} time(s) without a completion: {last}"
    else:
        status = getattr(last, "status_code", "5xx")
        kind = f"failed {settings.attempts} time(s), last with HTTP {status}: {_status_message(last)}"
    code = getattr(last, "status_code", None)
    raise BackendError(
        f"{what}: the server at {settings.shown_url} {kind}", status=code if isinstance(code, int) else None
    )


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def backend_loop() -> asyncio.AbstractEventLoop:
    """The process's one event loop for served backends, running in a daemon thread.

    Every request of every run goes through this loop, so each backend's client and semaphore
    (:class:`Channel`) are shared by all runs and threads of the process: ``concurrency`` then
    bounds the requests in flight to a server, however many runs are going on.  (A loop per
    call, as ``asyncio.run`` gives, would need a client and a semaphore per call.)
    """
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="granalign-openai", daemon=True).start()
            _LOOP = loop
        return _LOOP


def _forget_loop_after_fork() -> None:
    """A forked child has no loop thread: it starts its own loop on first use."""
    global _LOOP
    _LOOP = None


os.register_at_fork(after_in_child=_forget_loop_after_fork)


class Abandoned(concurrent.futures.CancelledError):
    """A model-server request of a run whose caller stopped waiting (see :class:`CancelScope`).

    Not a :class:`BackendError`: the stages that degrade on a failed server (a rewrite falls
    back to the original query) must not carry an abandoned run on to its end."""


class CancelScope:
    """The model-server requests of one caller's run, which the caller can abandon at once.

    Why: graph nodes are synchronous and wait in worker threads, which nothing can interrupt.
    A tool call that times out or is cancelled stops waiting, but without this its nodes would
    keep waiting on a hung server for ``request_timeout`` × ``request_attempts`` (and an ingest
    on for every further batch, holding the video's ingest lock), filling the caller's thread
    pool: the next calls, even ones on other servers, would queue behind them.
    :meth:`cancel` cancels the requests in flight and refuses new ones (:class:`Abandoned`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            pending, self._futures = list(self._futures), set()
        for future in pending:
            future.cancel()

    def check(self) -> None:
        if self.cancelled:
            raise Abandoned("model-server request abandoned: the caller stopped waiting for this run")

    def track(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if not self.cancelled:
                self._futures.add(future)
                return
        future.cancel()

    def untrack(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)


_SCOPE: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "granalign_cancel_scope", default=None
)


@contextlib.contextmanager
def cancel_scope() -> Iterator[CancelScope]:
    """A :class:`CancelScope` for the requests made in this context (and the threads and tasks
    that copy it, as LangGraph's node runners do); cancelled on the way out, so whatever a
    finished, failed, timed-out or cancelled run left in flight stops with it."""
    scope = CancelScope()
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        scope.cancel()
        _SCOPE.reset(token)


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on :func:`backend_loop` and wait for it, from any synchronous code.

    Graph nodes are synchronous and run in worker threads (or under a caller's own event loop);
    all of them hand their requests to the one backend loop.  If the waiting thread is
    interrupted (Ctrl-C), or the caller's :func:`cancel_scope` is cancelled, the coroutine is
    cancelled (the latter raises :class:`Abandoned`).
    """
    scope = _SCOPE.get()
    if scope is not None:
        scope.check()
    future = asyncio.run_coroutine_threadsafe(factory(), backend_loop())
    if scope is not None:
        scope.track(future)
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        if scope is not None and scope.cancelled:
            scope.check()
        raise
    except BaseException:
        future.cancel()
        raise
    finally:
        if scope is not None:
            scope.untrack(future)


def async_client(settings: ServerSettings) -> Any:
    """An AsyncOpenAI client with our timeout and without the SDK's own retries."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        base_url=settings.base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
        timeout=settings.timeout_s,
        max_retries=0,
    )


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)
"""Per event loop, one ``concurrency`` semaphore per (model server, limit)."""


def server_gate(settings: ServerSettings) -> asyncio.Semaphore:
    """The running loop's semaphore for ``settings``' server and limit, shared by every backend
    that talks to that server: the rewriter's and the captioners' objects differ whenever a run
    changes a timeout or the aware captioner is the agnostic one's server, and each with a gate
    of its own would let ``concurrency`` requests per object, not per server, reach it."""
    gates = _GATES.setdefault(asyncio.get_running_loop(), {})
    key = (settings.base_url.rstrip("/"), settings.concurrency)
    if key not in gates:
        gates[key] = asyncio.Semaphore(settings.concurrency)
    return gates[key]


class Channel:
    """One client for one backend, and its server's ``concurrency`` semaphore (:func:`server_gate`).

    Both belong to :func:`backend_loop` and are made there on first use (and again in a
    forked child, whose loop is new).  Only coroutines on that loop touch them, so no lock.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._bound: tuple[asyncio.AbstractEventLoop, Any, asyncio.Semaphore] | None = None

    def parts(self) -> tuple[Any, asyncio.Semaphore]:
        """This backend's client and its server's semaphore on the running loop (the backend loop)."""
        loop = asyncio.get_running_loop()
        if self._bound is None or self._bound[0] is not loop:
            self._bound = (loop, async_client(self.settings), server_gate(self.settings))
        return self._bound[1], self._bound[2]

    def run(self, work: Callable[[Any, asyncio.Semaphore], Coroutine[Any, Any, T]]) -> T:
        """``work(client, gate)`` on the backend loop; the caller's thread waits for its result."""

        async def bound() -> T:
            client, gate = self.parts()
            return await work(client, gate)

        return run_sync(bound)


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

FOCUS_SYSTEM = prompt_text("focus/system")
FOCUS_TEMPLATE = prompt_text("focus/template")
"""The focus extraction prompt (``prompts/focus/``); ``{query}`` is the query."""

_MAX_TERM_CHARS = 60
_MAX_TERMS = 12


def _response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _grounded(term: str, query: str) -> bool:
    """True when a word of ``term`` shares its first 4 letters with a word of the query.

    Small models copy the prompt's example ("woman, red coat, ducks") instead of reading the
    query; a term with no word from the query (up to inflection: "rides"/"riding") is such a
    copy, or an invention that would steer the captioner toward something not asked for.
    """
    stems = {w[:4] for w in alnum_words(query) if len(w) > 2}
    return any(w[:4] in stems for w in alnum_words(term) if len(w) > 2)


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
        self.channel = Channel(settings)  # rewrites and focus share one client and semaphore
        # the model, not the URL: the same model behind another host gives the same rewrites
        self.name = f"openai:{settings.model}"

    async def _chat(
        self,
        client: Any,
        gate: asyncio.Semaphore,
        system: str,
        user: str,
        schema_name: str,
        schema: dict[str, Any],
    ) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]

        async def call() -> str:
            response = await client.chat.completions.create(
                model=self.settings.model,
                messages=messages,
                temperature=0.0,
                max_tokens=self.max_tokens,
                response_format=_response_format(schema_name, schema),
                # a server without guided decoding may ramble on after a free-text answer
                stop=["\n\n"],
            )
            return completion_text(response)

        return await call_with_retries(
            call, self.settings, what=f"rewriter {self.settings.model}", gate=gate, role="rewriter"
        )

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        """One request per query (all in flight at once); a server failure raises BackendError."""
        if not queries:
            return []
        return self.channel.run(lambda client, gate: self._rewrite_all(client, gate, queries, pair))

    async def _rewrite_all(
        self, client: Any, gate: asyncio.Semaphore, queries: Sequence[str], pair: PromptPair
    ) -> list[Rewrite]:
        async def one(query: str) -> Rewrite:
            simplify, detail = pair.render_simplify(query), pair.render_detail(query)
            user = _PAIR_TEMPLATE.format(simplify=simplify, detail=detail)
            raw = await self._chat(client, gate, pair.system, user, "rewrite_pair", REWRITE_SCHEMA)
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

    @property
    def focus_key(self) -> str:
        """What the focus answers depend on besides the model and the query: the focus prompt's
        text (``prompts/focus/``), so an edited prompt is asked again (part of the cache key)."""
        text = json.dumps([FOCUS_SYSTEM, FOCUS_TEMPLATE, self.max_tokens], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    def extract_focus(self, query: str) -> tuple[list[str], list[str], str]:
        """(entities, actions, problem) of a query; ``problem`` is empty when the answer was usable."""
        raw = self.channel.run(lambda client, gate: self._focus(client, gate, query))
        obj = parse_json_object(raw)
        if obj is None:
            return [], [], f"invalid JSON from the server: {' '.join(raw.split())[:80]!r}"
        entities, actions = _terms(obj.get("entities"), query), _terms(obj.get("actions"), query)
        if entities is None or actions is None:
            return [], [], "the server's JSON has no lists of strings 'entities' and 'actions'"
        if not entities and not actions:
            return [], [], "the server gave no entities or actions that occur in the query"
        return entities, actions, ""

    async def _focus(self, client: Any, gate: asyncio.Semaphore, query: str) -> str:
        return await self._chat(
            client, gate, FOCUS_SYSTEM, FOCUS_TEMPLATE.format(query=query), "query_focus", FOCUS_SCHEMA
        )
