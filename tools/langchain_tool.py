"""GranAlign as LangChain tools: ``retrieve_moments`` and ``list_videos``.

A chat agent asks "when does X happen in video V?"; ``retrieve_moments`` runs the retrieval
graph and answers with a short text for the model (the windows, best first, in seconds) and
the structured result as the tool message's *artifact* (moments, saliency curve, mode, notes,
query variants), which programs read and the model never sees
(``response_format="content_and_artifact"``).

Where the graph runs:

* in this process by default (the compiled ``graphs.retrieval.graph``), with the retrieval
  :class:`~graphs.context.Context` taken from ``GRANALIGN_*`` variables;
* on a LangGraph server (``langgraph dev`` or a deployment) through
  :class:`~langgraph.pregel.remote.RemoteGraph` when ``GRANALIGN_GRAPH_URL`` is set (graph id
  ``GRANALIGN_GRAPH_ID``, default ``retrieval``; an API key, if any, from ``LANGGRAPH_API_KEY``).
  The deployment then owns every setting except ``top_n``.

Why the core is a plain class (:class:`MomentRetriever`) under thin wrappers: the LangChain tool
and the MCP server (``tools/mcp_server.py``) must validate, run and report in exactly the same
way, and only their error and progress channels differ.

Arguments come from an LLM, so they are validated by :mod:`tools.safety` before anything is
read (see there); every failure becomes a tool error whose text the model can act on, never an
exception that ends the agent's run, and which names no server internals (folders, lock holders,
server addresses: :mod:`tools.redact`; the log keeps the full message).  Progress events of the
graph (``{"stage": ...}``) are forwarded to the caller's stream: LangGraph's custom stream when
the tool runs inside a graph (``stream_mode="custom"``), LangChain custom events
(``astream_events``: ``granalign_progress``) and, for MCP, progress notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack, cast

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field, ValidationError

from granalign.backends.openai_llm import cancel_scope
from granalign.core.match import match_reading
from granalign.errors import ConfigError, GranAlignError, InputError
from granalign.io.video import parse_roots
from granalign.text import MAX_QUERY_CHARS, clean_query, clean_text, seconds_text
from graphs.state import RetrievalOutput
from tools import redact
from tools.safety import (
    MAX_VIDEO_ARG_CHARS,
    VideoArg,
    bounded_int,
    check_url,
    clean_thread_id,
    parse_video_arg,
    url_allowlist,
)

if TYPE_CHECKING:
    from graphs.durable import StreamOptions

__all__ = [
    "DEFAULT_TOP_K",
    "ENV_DOWNLOAD_CACHE_MB",
    "ENV_GRAPH_ID",
    "ENV_GRAPH_URL",
    "ENV_URL_MAX_MB",
    "MAX_CONTAINS_CHARS",
    "MAX_LIST_LIMIT",
    "MAX_TOP_K",
    "ListVideosInput",
    "MomentRetriever",
    "MomentsResult",
    "RemoteRefusal",
    "RetrievalFailed",
    "RetrieveMomentsInput",
    "ToolSettings",
    "VideoList",
    "granalign_tools",
    "list_videos",
    "make_list_videos_tool",
    "make_retrieve_moments_tool",
    "retrieve_moments",
    "validation_message",
]

log = logging.getLogger(__name__)

ENV_GRAPH_URL = "GRANALIGN_GRAPH_URL"
ENV_GRAPH_ID = "GRANALIGN_GRAPH_ID"
ENV_URL_MAX_MB = "GRANALIGN_URL_MAX_MB"
#: Largest video a URL may download (MiB) unless ``GRANALIGN_URL_MAX_MB`` says otherwise: an hour
#: of 1080p H.264 is about 2–4 GiB; an agent's URL must not fill the disk.
DEFAULT_URL_MAX_MB = 4096
ENV_DOWNLOAD_CACHE_MB = "GRANALIGN_DOWNLOAD_CACHE_MB"
#: Budget of the download folder (MiB) unless ``GRANALIGN_DOWNLOAD_CACHE_MB`` says otherwise: four
#: downloads of the largest size; older ones are evicted (``granalign.io.download.prune_downloads``).
DEFAULT_DOWNLOAD_CACHE_MB = 4 * DEFAULT_URL_MAX_MB
DEFAULT_TOP_K = 5
MAX_TOP_K = 20
MAX_LIST_LIMIT = 200
MAX_CONTAINS_CHARS = 64
PROGRESS_EVENT = "granalign_progress"
"""Name of the LangChain custom event that carries retrieval progress (``astream_events``)."""

T = TypeVar("T")

Progress = Callable[[dict[str, Any]], Any]
"""A progress sink: called with each event; may return an awaitable (awaited in async runs)."""


class RunOptions(TypedDict, total=False):
    """Keyword options of :meth:`MomentRetriever.run` and :meth:`MomentRetriever.arun`.

    ``on_progress``: a :data:`Progress` sink for the run's events.  ``thread_id``: names the
    checkpointed run: a failed run under it is resumed (in-process runs only).  ``resume_only``:
    a ``thread_id`` that holds no unfinished run is refused instead of starting a new run there
    (the tools' setting: a model may resume what an error named, but a new run under an id it
    made up would replace a finished run kept under that id).
    """

    on_progress: Progress | None
    thread_id: str | None
    resume_only: bool


_OUTPUT_KEYS = tuple(RetrievalOutput.__annotations__)  # the graph's output schema, one list

RETRIEVE_DESCRIPTION = (
    "Find WHEN something happens in a video. Give the video (an id from list_videos) and a short "
    "description of what is visible (people, objects, actions), e.g. 'a girl stirs a pot with her mom'. "
    "Returns time windows in seconds from the start of the video, best first, each with a score in "
    "[0, 1]. The score only ranks windows within this video: windows come back even when the video "
    "never shows the described moment, with scores as high as for one it does, so it is not a "
    "confidence that the moment happens: for that, read the answer's match value (how well the "
    "video's captions match the description at all). Use it for questions like 'when does ... happen' or "
    "'what happens around ...'. Errors come back as text explaining what to fix."
)
THREAD_ID_DESCRIPTION = (
    "Only to resume a retrieval that failed: the thread_id its error named, with the same video "
    "and query. Omit it otherwise."
)
LIST_DESCRIPTION = (
    "List the videos that retrieve_moments can search (their ids, durations and mode). "
    "Optionally filter ids by a substring."
)


class RetrievalFailed(GranAlignError):
    """The graph run failed for a reason other than a bad argument (a backend, the server)."""


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSettings:
    """Where the graph runs and what inputs are allowed (see the module docstring)."""

    graph_url: str = ""
    graph_id: str = "retrieval"
    context: Any = None
    """In-process retrieval Context (``graphs.context.Context``); None = ``Context.from_env()``."""
    roots: tuple[Path, ...] | None = None
    """Allowed video roots; None = the context's ``video_roots`` setting (in-process) or
    ``GRANALIGN_VIDEO_ROOTS`` (remote), default the cwd, read at call time.  In-process, roots
    given here replace the context's for the run too (the graph reads files, a stored video's
    included, only inside them); ``()`` refuses every path and leaves the context's roots to
    the stored videos' files.  A remote deployment checks paths against its own roots."""
    url_allowlist: tuple[str, ...] | None = None
    """Hosts a video URL may name; None = ``GRANALIGN_URL_ALLOWLIST`` at call time."""
    timeout_s: float = 600.0
    """Limit of one call's run, sync or async, and separately of the steps before it (opening
    the store, a URL's download): past either the caller gets RetrievalFailed at once."""
    download_dir: Path | None = None
    """Where allowed video URLs are fetched to (in-process runs); None = ``downloads`` beside
    the store (the embedded store's folder, or the user cache with a Chroma server)."""
    url_max_mb: float | None = None
    """Largest download in MiB; None = ``GRANALIGN_URL_MAX_MB``, default :data:`DEFAULT_URL_MAX_MB`."""
    download_cache_mb: float | None = None
    """Budget of ``download_dir`` in MiB (least recently used downloads go first); None =
    ``GRANALIGN_DOWNLOAD_CACHE_MB``, default :data:`DEFAULT_DOWNLOAD_CACHE_MB`."""
    remote_headers: Mapping[str, str] = field(default_factory=dict)
    """Extra HTTP headers for the LangGraph server (e.g. an auth proxy's)."""

    def __post_init__(self) -> None:
        if self.graph_url and not self.graph_url.startswith(("http://", "https://")):
            raise ConfigError(f"{ENV_GRAPH_URL}={self.graph_url!r} must start with http:// or https://")
        if not self.graph_id.strip():
            raise ConfigError(f"{ENV_GRAPH_ID} must name a graph or assistant id")
        if not 0 < self.timeout_s <= 3600:
            raise ConfigError(f"tool timeout {self.timeout_s} s is out of range; allowed: (0, 3600]")
        for name in ("url_max_mb", "download_cache_mb"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= _MAX_MIB:  # NaN fails too
                raise ConfigError(f"{name} {value} is out of range; allowed: (0, {_MAX_MIB}]")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ToolSettings:
        env = os.environ if environ is None else environ
        return cls(
            graph_url=env.get(ENV_GRAPH_URL, "").strip(),
            graph_id=env.get(ENV_GRAPH_ID, "retrieval").strip() or "retrieval",
        )

    @property
    def remote(self) -> bool:
        return bool(self.graph_url)


_MAX_MIB = 1_048_576  # 1 TiB


def _mib(given: float | None, env: str, default: float) -> float:
    """A size setting in MiB: the ToolSettings value, else the environment, else the default."""
    if given is not None:
        return given
    raw = os.environ.get(env, "").strip()
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= _MAX_MIB:  # NaN fails too
        raise ConfigError(f"{env}={raw!r} must be a number of MiB in (0, {_MAX_MIB}]")
    return value


def _url_max_mb(settings: ToolSettings) -> float:
    return _mib(settings.url_max_mb, ENV_URL_MAX_MB, DEFAULT_URL_MAX_MB)


def _download_cache_mb(settings: ToolSettings) -> float:
    return _mib(settings.download_cache_mb, ENV_DOWNLOAD_CACHE_MB, DEFAULT_DOWNLOAD_CACHE_MB)


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MomentsResult:
    """What one retrieval returned: the artifact (structured) and a short text for a model."""

    artifact: dict[str, Any]

    @property
    def content(self) -> str:
        """Windows best first, in seconds; only numbers, ids and the caller's own query.

        Rewrites (LLM output) and notes stay in the artifact: text a model reads should not carry
        another model's output that nobody asked it to trust.
        """
        a = self.artifact
        moments = a["moments"]
        head = f"Video {a['video_id']}, query {json.dumps(a['query'], ensure_ascii=False)}: "
        # whether the video shows the query at all, before the windows (a deployment from
        # before the match value has none); its upper level depends on the video's caption count
        captions = len(a.get("saliency") or []) or None
        got = a.get("match")
        match = [match_reading(got, a.get("match_embedder"), captions)] if got is not None else []
        if not moments:
            return "\n".join([head + "no matching moment found.", *match])
        lines = [head + f"{len(moments)} moment(s), best first (seconds from the start of the video):"]
        lines += match
        lines += [
            f"{i}. {seconds_text(s)}–{seconds_text(e)} s (score {score:.2f})"
            for i, (s, e, score) in enumerate(moments, start=1)
        ]
        if a.get("mode") == "caption-only":
            lines.append("(matched against stored captions of the video; no frames were analysed)")
        return "\n".join(lines)


@dataclass(frozen=True)
class VideoList:
    """Indexed videos (``list_videos``): artifact rows and a short text for a model."""

    videos: list[dict[str, Any]]
    total: int

    @property
    def artifact(self) -> dict[str, Any]:
        return {"videos": self.videos, "total": self.total, "truncated": self.total > len(self.videos)}

    @property
    def content(self) -> str:
        if not self.videos:
            return "No indexed video matches."
        lines = [
            f"{self.total} indexed video(s)"
            + (f", first {len(self.videos)}:" if self.total > len(self.videos) else ":")
        ]
        # durations as windows are printed (seconds_text): "13 s" for a 13.1-s video would make
        # its last window, 10.0–13.1 s, read as running past the end
        lines += [f"- {v['video_id']} ({seconds_text(v['duration_s'])} s, {v['mode']})" for v in self.videos]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the core
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    video: VideoArg
    query: str
    top_k: int
    context: Any  # graphs.context.Context (in-process) or None (remote)
    thread_id: str | None = None  # resume this checkpointed run (in-process only)


def _isolated_config(run_name: str) -> RunnableConfig:
    """A config that makes the retrieval graph its own root run.

    Called inside an agent's tool node, the graph would otherwise inherit the agent's task
    config and run as its subgraph: checkpoints written into the agent's thread, and events
    doubled in a parent that streams subgraphs.  A fresh ``thread_id`` drops the inherited
    task keys (``ensure_config`` treats it as a new checkpoint lineage) while callbacks are kept,
    so traces still nest under the tool call.  In-process runs are checkpointed in the tool's
    own SQLite file under their own thread id (:mod:`graphs.durable`), never in the agent's.
    """
    return {"configurable": {"thread_id": f"granalign-tool-{uuid.uuid4()}"}, "run_name": run_name}


def _project(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in _OUTPUT_KEYS if k in values}


def _parent_sinks() -> list[Callable[[dict[str, Any]], None]]:
    """The caller's LangGraph custom stream, when the tool runs inside a graph node.

    Looked up before the retrieval graph starts, in the caller's context; LangChain callbacks
    get the same events through :func:`_dispatch`.
    """
    sinks: list[Callable[[dict[str, Any]], None]] = []
    try:
        from langgraph.config import get_stream_writer

        sinks.append(get_stream_writer())
    except (RuntimeError, KeyError, AttributeError):  # not inside a LangGraph run
        pass
    return sinks


def _dispatch(event: dict[str, Any]) -> None:
    from langchain_core.callbacks.manager import dispatch_custom_event

    with contextlib.suppress(RuntimeError):  # no parent run (called outside a Runnable): nobody to tell
        dispatch_custom_event(PROGRESS_EVENT, event)


async def _adispatch(event: dict[str, Any]) -> None:
    from langchain_core.callbacks.manager import adispatch_custom_event

    with contextlib.suppress(RuntimeError):
        await adispatch_custom_event(PROGRESS_EVENT, event)


class RemoteRefusal(InputError):
    """A remote retrieval server refused the call's arguments; its message is that server's.

    ``foreign``: :mod:`tools.redact` treats the text as another host's (absolute paths and
    URLs outside the caller's own arguments are replaced, see :func:`_remote_error`)."""

    foreign = True


def _remote_error(exc: Exception) -> GranAlignError:
    """A LangGraph server's run error as a message a model may read.

    What the server says decides what a model may see of it:

    * it refused an argument (``InputError``, ``UnsafeInputError``, a builtin ``ValueError``):
      the caller can fix the call, and the server's words say how ("video 'x' is neither an
      indexed video id ... call list_videos"), so they are kept, as a :class:`RemoteRefusal`;
      but that server wrote them for its own operator and may name its video roots, store or
      model servers, which this host cannot know to replace by name.  So besides this host's
      own values (the usual :class:`tools.redact.Redactor`), every absolute path and URL that
      is not inside the caller's own arguments becomes ``<server path>``/``<server address>``:
      the sentence keeps its sense and the model still reads the path it passed.
    * its own settings are wrong (``ConfigError``: the tool validates the only settings it
      sends, ``top_n`` and the answer profile, before the call) or it failed otherwise (a busy
      store, a model server down): nothing the model can change in its call, so it reads the
      kind of failure only, never the text (logged in full by the front end).
    """
    data, kind = getattr(exc, "args", [None])[0], ""
    if isinstance(data, dict):
        kind, message = str(data.get("error", "")), str(data.get("message", ""))
        if kind in ("InputError", "UnsafeInputError", "ValueError"):
            return RemoteRefusal(message)
        failed = RetrievalFailed(f"the retrieval server failed ({kind or 'error'}): {message}")
    else:
        failed = RetrievalFailed(f"the retrieval server failed: {type(exc).__name__}: {exc}")
    if kind == "ConfigError":
        failed.public = (
            "the retrieval server refused its own settings (ConfigError), not the arguments; "
            "retrying will not help until its operator fixes them"
        )
    else:
        failed.public = f"the retrieval server failed ({kind or type(exc).__name__}); retry later"
    return failed


class _Events:
    """One run's stream: progress events go to the caller's sinks, the last values are kept."""

    def __init__(
        self,
        on_progress: Progress | None,
        redactor: redact.Redactor,
        keep: tuple[str, ...],
        foreign: bool = False,
    ) -> None:
        self.sinks = _parent_sinks()
        self.on_progress = on_progress
        self.values: Mapping[str, Any] | None = None
        self.redactor, self.keep = redactor, keep
        self.foreign = foreign
        """A remote server's events: its folders are not known here (see :func:`_remote_error`)."""

    def take(self, mode: str, chunk: Any) -> dict[str, Any] | None:
        """The progress payload of a ``custom`` chunk (None for others; ``values`` are kept)."""
        if mode == "values" and isinstance(chunk, dict):
            self.values = chunk
        if mode != "custom" or not isinstance(chunk, dict):
            return None
        # an ingest's events name the file's real path: the caller sees it under a root's stand-in
        # (a remote server's path as <server path>)
        payload = {
            "tool": "retrieve_moments",
            **{
                k: self.redactor.text(v, self.keep, foreign=self.foreign) if isinstance(v, str) else v
                for k, v in chunk.items()
            },
        }
        for sink in self.sinks:
            sink(payload)
        return payload

    def notify(self, payload: dict[str, Any]) -> Any:
        """Tell ``on_progress`` (after the LangChain callbacks); returns what it returned."""
        return None if self.on_progress is None else self.on_progress(payload)


class _Overtime(Exception):
    """A synchronous run passed the tool's timeout (turned into RetrievalFailed by the caller)."""


def _within(parts: Iterable[Any], timeout_s: float) -> Iterator[Any]:
    """The items of ``parts``, produced by a worker thread, until ``timeout_s`` seconds have passed.

    A synchronous graph run cannot be interrupted from outside, so it runs in a worker thread
    (with the caller's context variables, so callbacks still find their parent run) while the
    caller waits on a queue: at the deadline the caller gets :class:`_Overtime` at once, as
    ``arun`` does, and the worker closes the stream at its next chunk, which stops the run.
    ``parts`` with a ``stop`` method (:class:`_AsyncParts`) are told at once, from the caller's
    thread, when it stops waiting.
    """
    box: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            for part in parts:
                if stop.is_set():
                    break
                box.put(("part", part))
        except BaseException as exc:
            box.put(("error", exc))
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()
            box.put(("end", None))

    runner = contextvars.copy_context()
    threading.Thread(target=runner.run, args=(work,), name="granalign-tool-run", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                kind, value = box.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise _Overtime from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        interrupt = getattr(parts, "stop", None)
        if interrupt is not None:
            interrupt()


class _AsyncParts:
    """An async stream's items for :func:`_within`'s worker: it runs the stream on an event loop
    of its own, and :meth:`stop` (from the caller's thread) cancels the step in progress.

    Why: the sync client of a served graph (``RemoteGraph.stream``) waits in a socket read that
    no other thread can interrupt, so a timed-out call left its worker reading the HTTP stream
    until the server's run ended, and the server, seeing no disconnect, ran it to the end.
    Cancelled, the async stream closes its connection at once; the server then cancels the
    run (``on_disconnect="cancel"``) and the worker ends.  One :class:`asyncio.Runner` for all
    steps: one loop and one context, as if a single task iterated the stream.
    """

    def __init__(self, stream: Callable[[], AsyncIterator[Any]]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._step: asyncio.Task[Any] | None = None
        self._stopped = False

    def __iter__(self) -> Iterator[Any]:
        with asyncio.Runner() as runner:  # closing it closes the stream (shutdown_asyncgens)
            parts = aiter(self._stream())
            while True:
                try:
                    yield runner.run(self._next(parts))
                except StopAsyncIteration:
                    return

    async def _next(self, parts: AsyncIterator[Any]) -> Any:
        with self._lock:
            if self._stopped:
                raise asyncio.CancelledError
            self._loop, self._step = asyncio.get_running_loop(), asyncio.current_task()
        try:
            return await anext(parts)
        finally:
            with self._lock:
                self._step = None

    def stop(self) -> None:
        """Cancel the step in progress, and any later one (called from the caller's thread)."""
        with self._lock:
            self._stopped = True
            if self._step is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._step.cancel)


def _call_within(work: Callable[[], T], timeout_s: float) -> T:
    """``work()`` in a worker thread (see :func:`_within`), or :class:`_Overtime` at the deadline."""

    def once() -> Iterator[T]:
        yield work()

    for value in _within(once(), timeout_s):
        return cast(T, value)
    raise AssertionError("unreachable")  # pragma: no cover


class MomentRetriever:
    """Validate untrusted arguments, run the retrieval graph, shape the result.

    ``settings=None`` reads :class:`ToolSettings` from the environment at every call, so a
    long-lived agent process follows configuration changes; tests pass explicit settings.
    """

    def __init__(self, settings: ToolSettings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> ToolSettings:
        return self._settings if self._settings is not None else ToolSettings.from_env()

    # -- validation -----------------------------------------------------------------------------
    def _context(self, settings: ToolSettings) -> Any:
        from graphs.context import Context

        ctx = settings.context if settings.context is not None else Context.from_env()
        if not isinstance(ctx, Context):
            raise ConfigError(
                f"tool settings: context must be a graphs.context.Context, got {type(ctx).__name__}"
            )
        return ctx

    def _store(self, ctx: Any) -> Any:
        from graphs import resources

        return resources.store_for(ctx)

    def prepare(self, video: object, query: object, top_k: object) -> _Request:
        """Validate the arguments (see :mod:`tools.safety`); raises InputError with a reason."""
        settings = self.settings
        k = bounded_int("top_k", top_k, 1, MAX_TOP_K)
        text = clean_query(query)
        allow = settings.url_allowlist if settings.url_allowlist is not None else url_allowlist()
        if settings.remote:
            # the deployment's store decides; an id-shaped name is passed on as an id
            roots = settings.roots if settings.roots is not None else parse_roots()
            arg = parse_video_arg(video, is_known_id=lambda _id: True, roots=roots, allowlist=allow)
            if arg.kind == "url":  # the deployment reads its own files; it cannot see a download here
                raise InputError(
                    f"video URL {arg.value!r} refused: this tool calls a remote deployment "
                    f"({ENV_GRAPH_URL}), which answers only about videos in its store; "
                    "ingest the video there, or call list_videos"
                )
            return _Request(arg, text, k, None)
        ctx = self._context(settings).with_overrides(top_n=k).for_answers()  # distinct windows
        # the same roots the graph checks the path against (one roots parser, one setting)
        roots = settings.roots if settings.roots is not None else parse_roots(ctx.video_roots)
        if roots:  # the tool's own roots replace the context's: a path it accepts, the graph does
            ctx = ctx.with_overrides(video_roots=os.pathsep.join(str(root) for root in roots))
        store = self._store(ctx)

        def known(video_id: str) -> bool:
            record = store.video(video_id)
            return record is not None and record.complete

        arg = parse_video_arg(video, is_known_id=known, roots=roots, allowlist=allow)
        if arg.kind == "url":
            arg, ctx = self._downloaded(arg, ctx, roots, allow, settings)
        return _Request(arg, text, k, ctx)

    def _downloaded(
        self, arg: VideoArg, ctx: Any, roots: tuple[Path, ...], allow: tuple[str, ...], settings: ToolSettings
    ) -> tuple[VideoArg, Any]:
        """The URL fetched into the download folder, and a context whose roots include that folder
        (the graph reads files only inside its roots; the folder holds nothing a caller named)."""
        from granalign.io.download import download_video
        from graphs import resources

        folder = settings.download_dir or resources.local_state_dir(ctx) / "downloads"
        path = download_video(
            arg.value,
            folder,
            check=lambda url: check_url(url, allow),
            max_bytes=int(_url_max_mb(settings) * 2**20),
            timeout_s=settings.timeout_s,
            cache_bytes=int(_download_cache_mb(settings) * 2**20),
        )
        widened = os.pathsep.join(str(root) for root in (*roots, folder.resolve()))
        return VideoArg("path", str(path)), ctx.with_overrides(video_roots=widened)

    def _finish(self, req: _Request, values: Mapping[str, Any] | None, elapsed: float) -> MomentsResult:
        if not values or "moments" not in values:
            raise RetrievalFailed("the retrieval graph returned no result")
        out = _project(values)
        out["moments"] = [[float(s), float(e), float(sc)] for s, e, sc in out["moments"][: req.top_k]]
        out["saliency"] = [float(x) for x in out.get("saliency", [])]
        out.setdefault("notes", [])
        out.setdefault("variants", [])
        out["match"] = float(out["match"]) if out.get("match") is not None else None
        out.setdefault("match_embedder", None)
        clip_len = values.get("clip_len_s")  # the stored video's grid, not Context.clip_len
        out["clip_len_s"] = float(clip_len) if clip_len is not None else None
        out["elapsed_s"] = round(elapsed, 4)
        out["backend"] = "remote" if req.context is None else "in-process"
        out["thread_id"] = req.thread_id
        return MomentsResult(out)

    def _not_indexed(self, req: _Request, exc: InputError) -> InputError:
        """A path or URL refused by a deployment that answers only from its store (``auto_ingest``
        off) reads as 'not indexed', with the graph's reason.  One that ingests new files
        refused it for the reason it gives (a file that does not decode, a resume under another
        video, ...): that reason is the answer, not 'not indexed'."""
        if req.video.kind == "id" or req.context is None or req.context.auto_ingest:
            return exc
        return InputError(
            f"video {req.video.value!r} is not indexed: this deployment answers only about videos in "
            f"its store (call list_videos to see them). Reason: {exc}"
        )

    def _graph_input(self, req: _Request) -> dict[str, Any]:
        return {"video": req.video.value, "query": req.query}

    # -- sync -------------------------------------------------------------------------------------
    def run(
        self, video: object, query: object, top_k: object = DEFAULT_TOP_K, **options: Unpack[RunOptions]
    ) -> MomentsResult:
        """Retrieve moments synchronously (progress to the caller's stream and ``on_progress``).

        Options (``on_progress``, ``thread_id``): :class:`RunOptions`.
        """
        tid, resume_only = options.get("thread_id"), options.get("resume_only", False)
        try:  # opening the store, a download: limited as the run is (a hung Chroma server)
            req = _call_within(
                lambda: self._with_thread(self.prepare(video, query, top_k), tid, resume_only),
                self.settings.timeout_s,
            )
        except _Overtime:
            raise self._overtime(None) from None
        events = self._events(video, options.get("on_progress"), req.context is None)
        t0 = time.perf_counter()
        try:
            with cancel_scope():  # a timed-out run's model requests stop with it (CancelScope)
                for mode, chunk in _within(self._stream_sync(req), self.settings.timeout_s):
                    payload = events.take(mode, chunk)
                    if payload is not None:
                        _dispatch(payload)
                        events.notify(payload)
        except Exception as exc:
            raise self._failed(req, exc, _Overtime) from exc
        return self._finish(req, events.values, time.perf_counter() - t0)

    def _stream_sync(self, req: _Request) -> Iterable[Any]:
        if self.settings.remote:  # the async stream: a timed-out call can close it (_AsyncParts)
            return _AsyncParts(lambda: self._stream_async(req))
        return self._stream_local(req)

    def _stream_local(self, req: _Request) -> Iterator[Any]:
        from graphs.durable import stream_retrieval

        yield from stream_retrieval(req.context, self._graph_input(req), **self._durable_args(req))

    # -- async (the same steps; only the waiting differs) -----------------------------------------
    async def arun(
        self, video: object, query: object, top_k: object = DEFAULT_TOP_K, **options: Unpack[RunOptions]
    ) -> MomentsResult:
        """Retrieve moments without blocking the event loop (the graph's sync nodes use threads)."""
        import asyncio

        # prepare reads the store and the file system: in a thread, off the event loop, and
        # limited as the run is (a hung Chroma server)
        tid, resume_only = options.get("thread_id"), options.get("resume_only", False)
        try:
            async with asyncio.timeout(self.settings.timeout_s) as limit:
                prepared = await asyncio.to_thread(self.prepare, video, query, top_k)
                if tid is None:
                    req = self._with_thread(prepared, None)
                else:  # a resume reads the checkpoint file: in a thread too
                    req = await asyncio.to_thread(self._with_thread, prepared, tid, resume_only)
        except TimeoutError:
            if limit.expired():
                raise self._overtime(None) from None
            raise
        events = self._events(video, options.get("on_progress"), req.context is None)
        t0 = time.perf_counter()
        try:
            # a timed-out or cancelled run's model requests stop with it (CancelScope)
            with cancel_scope():
                async with asyncio.timeout(self.settings.timeout_s):
                    async for mode, chunk in self._stream_async(req):
                        payload = events.take(mode, chunk)
                        if payload is not None:
                            await _adispatch(payload)
                            got = events.notify(payload)
                            if inspect.isawaitable(got):
                                await got
        except asyncio.CancelledError:
            if options.get("thread_id") is None:  # an id made here: nobody could resume the run
                self._forget(req)
            raise
        except Exception as exc:
            raise self._failed(req, exc, TimeoutError) from exc
        return self._finish(req, events.values, time.perf_counter() - t0)

    def _events(self, video: object, on_progress: Progress | None, remote: bool) -> _Events:
        return _Events(on_progress, self.redactor(), (video,) if isinstance(video, str) else (), remote)

    def _forget(self, req: _Request) -> None:
        """Delete the checkpoint thread of a cancelled in-process run (the caller chose to stop)."""
        if req.context is None or req.thread_id is None:
            return
        from graphs.durable import finish_thread

        try:
            finish_thread(req.context, req.thread_id)
        except Exception:  # a cancellation must stay a cancellation
            log.exception("could not delete the checkpoint thread %s", req.thread_id)

    async def _stream_async(self, req: _Request) -> Any:
        if self.settings.remote:
            remote = self._remote(self.settings)
            try:
                async for part in remote.astream(self._graph_input(req), **self._remote_kwargs(req)):
                    yield part[0], part[1]
            finally:  # each call has its own client: its pooled connection must not outlive it
                await remote.client.aclose()  # (a sync call's loop is closed right after)
            return
        from graphs.durable import astream_retrieval

        async for mode, chunk in astream_retrieval(
            req.context, self._graph_input(req), **self._durable_args(req)
        ):
            yield mode, chunk

    def _failed(self, req: _Request, exc: Exception, overtime: type[Exception]) -> Exception:
        """The error a failed run raises: a timeout, a video not indexed, a library error as
        it is (re-raised unchanged), anything else wrapped as a tool failure."""
        if isinstance(exc, overtime):
            return self._overtime(req)
        if isinstance(exc, InputError):
            return self._not_indexed(req, exc)
        if isinstance(exc, GranAlignError):
            raise exc
        return self._wrap_failure(exc)

    def _overtime(self, req: _Request | None) -> RetrievalFailed:
        """A timed-out run is a failed run: in-process, its checkpoint is kept and named, so the
        caller can resume it (as after any other failure) instead of starting over.  ``None``:
        the call timed out before its run started (nothing to resume)."""
        text = f"retrieval took longer than {self.settings.timeout_s:g} s"
        tid = None
        if req is not None and req.context is not None and req.thread_id is not None:
            from graphs.durable import checkpointer_for

            tid = req.thread_id if checkpointer_for(req.context) is not None else None
        failed = RetrievalFailed(text + (f" (resume with thread_id={tid})" if tid else ""))
        failed.thread_id = tid  # type: ignore[attr-defined]
        return failed

    def _remote_kwargs(self, req: _Request) -> dict[str, Any]:
        """What a served graph's ``astream`` gets besides the input.

        ``on_disconnect="cancel"``: a call that times out or is cancelled closes its stream, and
        the server then cancels the run (its default, "continue", ran it to the end for nobody)."""
        context = {"top_n": req.top_k, "answer_profile": "distinct"}  # the tool profile
        return {"context": context, "stream_mode": ["custom", "values"], "on_disconnect": "cancel"}

    def _durable_args(self, req: _Request) -> StreamOptions:
        return {"thread_id": req.thread_id, "config": _isolated_config("retrieve_moments")}

    # -- what a calling model may read -----------------------------------------------------------
    def redactor(self) -> redact.Redactor:
        """This deployment's folders and addresses, to be kept out of what a model reads.

        Best effort by design: a setting that cannot be read is reported by the call itself, and
        must not turn the report of another failure into a crash."""
        pairs: list[tuple[str, str]] = []
        with contextlib.suppress(Exception):
            settings = self.settings
            pairs += redact.server(settings.graph_url, "<retrieval server>")
            pairs += [p for root in settings.roots or () for p in redact.paths(root, "<video root>")]
            pairs += redact.paths(settings.download_dir, "<download folder>")
            pairs += redact.context_values(self._context(settings))
        with contextlib.suppress(Exception):
            pairs += [p for root in parse_roots() for p in redact.paths(root, "<video root>")]
        return redact.Redactor.of(pairs)

    def model_message(self, exc: BaseException, tool: str, args: Mapping[str, object] | None = None) -> str:
        """``exc`` logged in full, and as the text the model that called ``tool`` may read; text
        inside its own string arguments ``args`` stays as it passed it."""
        keep = tuple(v for v in (args or {}).values() if isinstance(v, str))
        return redact.model_message(exc, self.redactor(), log=log, what=tool, keep=keep)

    # -- helpers ----------------------------------------------------------------------------------
    def _remote(self, settings: ToolSettings) -> Any:
        from langgraph.pregel.remote import RemoteGraph

        return RemoteGraph(
            settings.graph_id, url=settings.graph_url, headers=dict(settings.remote_headers) or None
        )

    def _with_thread(self, req: _Request, thread_id: str | None, resume_only: bool = False) -> _Request:
        if thread_id is None:  # in-process runs get their id up front: the result carries it
            from graphs.durable import new_thread_id

            return req if req.context is None else dataclasses.replace(req, thread_id=new_thread_id())
        if req.context is None:
            raise InputError("thread_id: only in-process runs can be resumed (not a remote graph)")
        tid = clean_thread_id(thread_id)
        if resume_only:
            from graphs.durable import pending_run

            if not pending_run(req.context, tid):
                raise InputError(
                    f"thread_id {tid!r} holds no unfinished retrieval to resume; call again without thread_id"
                )
        return dataclasses.replace(req, thread_id=tid)

    def _wrap_failure(self, exc: Exception) -> GranAlignError:
        from langgraph.pregel.remote import RemoteException

        if isinstance(exc, RemoteException):
            return _remote_error(exc)
        log.exception("retrieve_moments failed")
        reason = str(exc).splitlines()[0] if str(exc) else ""
        tid = getattr(exc, "thread_id", None)
        resume = f" (resume with thread_id={tid})" if tid else ""
        failed = RetrievalFailed(
            f"retrieval failed ({type(exc).__name__}){': ' + reason if reason else ''}{resume}"
        )
        failed.thread_id = tid  # type: ignore[attr-defined]
        return failed

    def list_videos(self, contains: object = "", limit: object = 20) -> VideoList:
        """Complete videos of the configured store whose id contains ``contains`` (case-insensitive).

        Limited by ``timeout_s`` as a retrieval is (a Chroma server that stops answering)."""
        timeout_s = self.settings.timeout_s
        try:
            return _call_within(lambda: self._list_videos(contains, limit), timeout_s)
        except _Overtime:
            raise RetrievalFailed(f"list_videos took longer than {timeout_s:g} s") from None

    def _list_videos(self, contains: object, limit: object) -> VideoList:
        n = bounded_int("limit", limit, 1, MAX_LIST_LIMIT)
        needle = clean_text(contains, name="contains", max_chars=MAX_CONTAINS_CHARS, allow_empty=True).lower()
        from graphs import resources

        ctx = self._context(self.settings)
        if self.settings.remote and not resources.chroma_url(ctx):
            raise ConfigError(
                f"list_videos: with {ENV_GRAPH_URL} set, the videos are in the deployment's store, not "
                "this process's; set CHROMA_URL to the deployment's Chroma server (chroma run) to list them"
            )
        store = self._store(ctx)
        try:
            records = [r for r in store.list_videos() if r.complete and needle in r.video_id.lower()]
        except GranAlignError:
            raise
        except Exception as exc:
            raise self._wrap_failure(exc) from exc
        rows = [
            {
                "video_id": r.video_id,
                "duration_s": float(r.duration_s),
                "n_clips": int(r.n_clips),
                "clip_len_s": float(r.clip_len_s),
                "mode": self._mode(ctx, r),
            }
            for r in records[:n]
        ]
        return VideoList(rows, len(records))

    def _mode(self, ctx: Any, record: Any) -> str:
        """'caption-only', 'full', or 'full' with why its clips do not fit the current settings.

        A video ingested under other CLIP/captioner settings must be ingested again before it
        can be queried here; saying so in the listing lets the caller act before a failed call.
        """
        if not record.has_frames:
            return "caption-only"
        if self.settings.remote:  # the deployment's settings decide, not this process's
            return "full"
        from graphs.retrieval import REINGEST_ADVICE, ingest_mismatch

        mismatch = ingest_mismatch(ctx, record)
        return f"full ({mismatch}; {REINGEST_ADVICE})" if mismatch else "full"


# ---------------------------------------------------------------------------------------------
# LangChain tools
# ---------------------------------------------------------------------------------------------


class RetrieveMomentsInput(BaseModel):
    """Arguments of ``retrieve_moments`` (the JSON schema a model sees)."""

    video: str = Field(
        description=(
            "The video to search: a video id exactly as list_videos returns it "
            "(e.g. 'NUsG9BgSes0_210.0_360.0'), or a file path inside the allowed video folders."
        ),
        min_length=1,
        max_length=MAX_VIDEO_ARG_CHARS,
    )
    query: str = Field(
        description=(
            "What to find, as a short visual description of the moment: who, what they do, "
            "which objects (e.g. 'a man chops onions in a kitchen'). Not a question."
        ),
        min_length=1,
        max_length=MAX_QUERY_CHARS,
    )
    top_k: int = Field(
        default=DEFAULT_TOP_K,
        strict=True,  # as bounded_int: true would be 1 and "5" 5 in pydantic's lax mode
        ge=1,
        le=MAX_TOP_K,
        description=f"How many time windows to return, best first (1-{MAX_TOP_K}).",
    )
    thread_id: str | None = Field(
        default=None,
        max_length=128,
        description=THREAD_ID_DESCRIPTION,
    )


class ListVideosInput(BaseModel):
    """Arguments of ``list_videos``."""

    contains: str = Field(
        default="",
        max_length=MAX_CONTAINS_CHARS,
        description="Only ids containing this text (case-insensitive); empty lists all.",
    )
    limit: int = Field(
        default=20,
        strict=True,  # as top_k: true would be 1 and "3" 3 in pydantic's lax mode
        ge=1,
        le=MAX_LIST_LIMIT,
        description=f"At most this many ids (1-{MAX_LIST_LIMIT}).",
    )


def validation_message(tool: str) -> Callable[[Any], str]:
    """Pydantic errors as one line a model can act on, without echoing the (untrusted) input.

    Shared by the LangChain tools and the MCP server, so both word a bad argument alike.
    """

    def message(exc: Any) -> str:
        if isinstance(exc, ValidationError):
            parts = [f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()]
        else:
            parts = [str(exc)]
        return f"Invalid arguments for {tool}: " + "; ".join(parts)

    return message


def _tool_error(exc: ToolException) -> str:
    return f"Error: {exc.args[0] if exc.args else 'tool failed'}"


@contextlib.contextmanager
def _tool_errors(core: MomentRetriever, tool: str, args: Mapping[str, object]) -> Iterator[None]:
    """Any failure of a tool's call as the ToolException LangChain hands to the model.

    Not only the library's errors: opening the store, reading a video root or the checkpoint
    file, or a Chroma client may raise ``OSError``, ``sqlite3`` or chromadb errors while the
    arguments are still being checked, and LangChain passes anything but a ToolException on
    raw: a plain ``ToolNode`` then ends the agent's run or shows a traceback to the model.
    The model reads :meth:`MomentRetriever.model_message` (the log keeps the traceback).
    Cancellation (``CancelledError``, ``KeyboardInterrupt``: not ``Exception``) and LangGraph's
    control flow (``GraphBubbleUp``: an interrupt) pass through.
    """
    from langgraph.errors import GraphBubbleUp

    try:
        yield
    except (ToolException, GraphBubbleUp):
        raise
    except Exception as exc:
        raise ToolException(core.model_message(exc, tool, args)) from exc


def make_retrieve_moments_tool(retriever: MomentRetriever | None = None) -> BaseTool:
    """The ``retrieve_moments`` tool over ``retriever`` (default: settings from the environment)."""
    core = retriever or MomentRetriever()

    def run(
        video: str, query: str, top_k: int = DEFAULT_TOP_K, thread_id: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        with _tool_errors(core, "retrieve_moments", {"video": video, "query": query}):
            result = core.run(video, query, top_k, thread_id=thread_id, resume_only=True)
        return result.content, result.artifact

    async def arun(
        video: str, query: str, top_k: int = DEFAULT_TOP_K, thread_id: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        with _tool_errors(core, "retrieve_moments", {"video": video, "query": query}):
            result = await core.arun(video, query, top_k, thread_id=thread_id, resume_only=True)
        return result.content, result.artifact

    return _content_tool("retrieve_moments", RETRIEVE_DESCRIPTION, RetrieveMomentsInput, run, arun)


def _content_tool(
    name: str, description: str, schema: type[BaseModel], run: Callable[..., Any], arun: Callable[..., Any]
) -> BaseTool:
    """A tool answering (content, artifact) whose failures and bad arguments are one-line messages."""
    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=name,
        description=description,
        args_schema=schema,
        response_format="content_and_artifact",
        handle_tool_error=_tool_error,
        handle_validation_error=validation_message(name),
    )


def make_list_videos_tool(retriever: MomentRetriever | None = None) -> BaseTool:
    """The ``list_videos`` tool (ids the store can answer about)."""
    core = retriever or MomentRetriever()

    def run(contains: str = "", limit: int = 20) -> tuple[str, dict[str, Any]]:
        with _tool_errors(core, "list_videos", {"contains": contains}):
            found = core.list_videos(contains, limit)
        return found.content, found.artifact

    async def arun(contains: str = "", limit: int = 20) -> tuple[str, dict[str, Any]]:
        import asyncio

        return await asyncio.to_thread(run, contains, limit)

    return _content_tool("list_videos", LIST_DESCRIPTION, ListVideosInput, run, arun)


def granalign_tools(retriever: MomentRetriever | None = None) -> list[BaseTool]:
    """Both tools over one retriever, ready for ``model.bind_tools`` or an agent."""
    core = retriever or MomentRetriever()
    return [make_retrieve_moments_tool(core), make_list_videos_tool(core)]


retrieve_moments = make_retrieve_moments_tool()
"""``retrieve_moments`` configured from the environment (in-process unless GRANALIGN_GRAPH_URL)."""
list_videos = make_list_videos_tool()
"""``list_videos`` over the store configured in the environment."""
