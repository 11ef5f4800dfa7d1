"""GranAlign as an MCP server: the same ``retrieve_moments`` and ``list_videos`` tools.

``granalign mcp`` serves them over stdio (a desktop client starts the process) or streamable
HTTP (``--transport http``, bound to 127.0.0.1 by default).  Both tools share the LangChain
tool's core (:class:`tools.langchain_tool.MomentRetriever`), so validation of untrusted
arguments (:mod:`tools.safety`), graph execution (in-process, or a LangGraph server through
``GRANALIGN_GRAPH_URL``) and error texts are identical on both surfaces.

MCP specifics:

* results are JSON: each tool declares an output schema and returns structured content (the
  text content is the same JSON, for clients that ignore ``structuredContent``);
* errors come back as tool results with ``isError: true`` and a one-line message the calling
  model can act on (bad arguments are worded as by the LangChain tool, never pydantic's
  multi-line report), without server internals (:mod:`tools.redact`: the log keeps them);
  the server process never dies of a bad argument;
* the graph's progress events become MCP progress notifications (when the client sent a
  progress token) and log messages;
* over HTTP the SDK's DNS-rebinding protection is on for loopback hosts, and a bearer token
  (:func:`load_token`: ``GRANALIGN_MCP_TOKEN`` or ``--token-file``) guards every path but
  ``GET /healthz``, which answers ``ok`` to supervisors and load balancers without one (it
  reveals nothing but liveness).  ``granalign mcp`` refuses a non-loopback bind without a
  token: replicas serving many agents listen beyond loopback, and an open tool endpoint would
  let anyone on the network run queries (and ingest files under the video roots).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import AnyFunction, ContentBlock, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from granalign.errors import ConfigError
from granalign.text import MAX_QUERY_CHARS
from tools.langchain_tool import (
    DEFAULT_TOP_K,
    LIST_DESCRIPTION,
    MAX_CONTAINS_CHARS,
    MAX_LIST_LIMIT,
    MAX_TOP_K,
    RETRIEVE_DESCRIPTION,
    THREAD_ID_DESCRIPTION,
    MomentRetriever,
    validation_message,
)
from tools.safety import MAX_VIDEO_ARG_CHARS

__all__ = [
    "ENV_TOKEN",
    "LOOPBACK_HOSTS",
    "OPEN_PATHS",
    "BearerAuth",
    "GranAlignMCP",
    "MomentsOutput",
    "VideoInfo",
    "VideosOutput",
    "build_server",
    "http_app",
    "load_token",
    "progress_message",
    "serve_http",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ENV_TOKEN = "GRANALIGN_MCP_TOKEN"
MIN_TOKEN_CHARS = 16
OPEN_PATHS = frozenset({"/healthz"})
"""Paths served without a token: liveness only, no data."""

INSTRUCTIONS = (
    "GranAlign finds when something happens in a video. Call list_videos to get video ids, then "
    "retrieve_moments(video, query) with a short visual description; windows are in seconds."
)


class MomentsOutput(BaseModel):
    """JSON result of ``retrieve_moments``."""

    video_id: str = Field(description="The video that was searched.")
    query: str = Field(description="The query as it was used (control characters removed).")
    moments: list[list[float]] = Field(
        description=(
            "Time windows [start_s, end_s, score], best first; seconds from the video's start. The "
            "score ranks windows within this video; it is not a confidence that the moment happens."
        )
    )
    saliency: list[float] = Field(description="Per-clip relevance curve in [0, 1], one value per clip.")
    clip_len_s: float | None = Field(description="Length of one saliency clip in seconds (null if unknown).")
    mode: str = Field(description="'full' (frames analysed) or 'caption-only' (stored captions only).")
    notes: list[str] = Field(description="What the run skipped or fell back on.")
    match: float | None = Field(
        default=None,
        description=(
            "Whether the video shows the query at all: the mean of the 3 best raw cosines between "
            "the query and the video's captions, in [-1, 1] (null from a deployment that predates it). "
            "With all-MiniLM-L6-v2 (match_embedder): below 0.30 the video rarely shows it; the level at "
            "or above which it usually does rises with the video's caption count (0.36 at 15 captions, "
            "0.45 at 75, 0.58 at 600, 0.64 at 1,800; the summary states it for this video); in between "
            "uncertain; other embedders are uncalibrated. A caption "
            "match: what the captions do not mention cannot match."
        ),
    )
    match_embedder: str | None = Field(default=None, description="The text embedder match was measured with.")
    summary: str = Field(description="The same result as a few lines of text.")


class VideoInfo(BaseModel):
    video_id: str
    duration_s: float
    n_clips: int
    clip_len_s: float
    mode: str


class VideosOutput(BaseModel):
    """JSON result of ``list_videos``."""

    videos: list[VideoInfo]
    total: int = Field(description="How many indexed videos matched (may exceed len(videos)).")
    truncated: bool


def progress_message(event: Mapping[str, Any]) -> str:
    """One progress event as text: the stage, then its scalar fields (``finalize encoded=5``),
    so a client sees how far an ingest got and whether this call did the work or waited."""
    details = " ".join(
        f"{k}={v}"
        for k, v in event.items()
        if k not in ("stage", "tool") and isinstance(v, str | int | float | bool) and len(str(v)) <= 200
    )
    stage = str(event.get("stage", "step"))
    return f"{stage} {details}" if details else stage


class GranAlignMCP(FastMCP):
    """FastMCP whose tool errors are one line, worded like the LangChain tool's.

    FastMCP validates a call's arguments against the tool's signature and answers a bad one
    with pydantic's multi-line report (input values, documentation URLs); a model acts better
    on ``Invalid arguments for retrieve_moments: top_k: Input should be less than or equal
    to 20``, and a log or a UI shows it on one line.  A tool that raises is answered with
    ``str(exc)``, which may name the store folder, the process holding it or a server's
    address: the calling model gets :meth:`MomentRetriever.model_message` instead, and the log
    the full message.
    """

    def __init__(self, *args: Any, retriever: MomentRetriever, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retriever = retriever

    async def call_tool(
        self, name: str, arguments: dict[str, Any]
    ) -> Sequence[ContentBlock] | dict[str, Any]:
        try:
            return await super().call_tool(name, arguments)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError) and cause.title.endswith("Arguments"):
                raise ToolError(validation_message(name)(cause)) from None
            if isinstance(cause, Exception):  # raised by the tool itself
                text = self.retriever.model_message(cause, name, arguments)
                raise ToolError(f"Error executing tool {name}: {text}") from None
            raise


def _tool(
    server: FastMCP, name: str, description: str, hints: ToolAnnotations
) -> Callable[[AnyFunction], AnyFunction]:
    """Register a tool with its behaviour hints and a structured result clients can validate."""
    return server.tool(name=name, description=description, annotations=hints, structured_output=True)


#: retrieve_moments may ingest a new file (it writes the store's cache) and fetch an allowed URL
#: (the open world); asking twice changes nothing more.  list_videos only reads the store.
RETRIEVE_HINTS = ToolAnnotations(
    title="Find moments in a video", readOnlyHint=False, idempotentHint=True, openWorldHint=True
)
LIST_HINTS = ToolAnnotations(title="List indexed videos", readOnlyHint=True, openWorldHint=False)


def build_server(
    retriever: MomentRetriever | None = None, *, host: str = "127.0.0.1", port: int = 8000
) -> FastMCP:
    """A FastMCP server exposing the tools over ``retriever`` (default: environment settings)."""
    core = retriever or MomentRetriever()
    server: FastMCP = GranAlignMCP(
        "granalign", instructions=INSTRUCTIONS, host=host, port=port, retriever=core
    )

    @_tool(server, "retrieve_moments", RETRIEVE_DESCRIPTION, RETRIEVE_HINTS)
    async def retrieve_moments(
        video: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_VIDEO_ARG_CHARS,
                description="A video id from list_videos, or a file path inside the allowed video folders.",
            ),
        ],
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_QUERY_CHARS,
                description="A short visual description of the moment (who, what, which objects).",
            ),
        ],
        ctx: Context,  # type: ignore[type-arg]
        top_k: Annotated[
            int,
            Field(
                strict=True,  # as bounded_int: true would be 1 and "5" 5 in pydantic's lax mode
                ge=1,
                le=MAX_TOP_K,
                description=f"Windows to return, best first (1-{MAX_TOP_K}).",
            ),
        ] = DEFAULT_TOP_K,
        thread_id: Annotated[str | None, Field(max_length=128, description=THREAD_ID_DESCRIPTION)] = None,
    ) -> MomentsOutput:
        done = 0

        async def progress(event: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            message = progress_message(event)
            await ctx.report_progress(done, None, message)
            await ctx.debug(f"retrieve_moments: {message}")

        result = await core.arun(
            video, query, top_k, on_progress=progress, thread_id=thread_id, resume_only=True
        )
        a = result.artifact
        return MomentsOutput(
            video_id=a["video_id"],
            query=a["query"],
            moments=a["moments"],
            saliency=a["saliency"],
            clip_len_s=a.get("clip_len_s"),
            mode=a.get("mode", ""),
            notes=a.get("notes", []),
            match=a.get("match"),
            match_embedder=a.get("match_embedder"),
            summary=result.content,
        )

    @_tool(server, "list_videos", LIST_DESCRIPTION, LIST_HINTS)
    async def list_videos(
        contains: Annotated[
            str,
            Field(max_length=MAX_CONTAINS_CHARS, description="Only ids containing this text; empty = all."),
        ] = "",
        limit: Annotated[
            int, Field(strict=True, ge=1, le=MAX_LIST_LIMIT, description="At most this many ids.")
        ] = 20,
    ) -> VideosOutput:
        import asyncio

        found = await asyncio.to_thread(core.list_videos, contains, limit)
        return VideosOutput(**found.artifact)

    async def healthz(request: Request) -> PlainTextResponse:
        """Liveness for supervisors and tests (the MCP endpoint itself needs a session)."""
        return PlainTextResponse("ok")

    server.custom_route("/healthz", methods=["GET"])(healthz)

    return server


# -- bearer-token authentication ---------------------------------------------------------------


def load_token(token_file: Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The MCP bearer token: ``token_file``'s content, else ``$GRANALIGN_MCP_TOKEN``, else None.

    A file keeps the secret out of the process table and shell history (a mounted secret in a
    container); surrounding whitespace (a trailing newline) is dropped.  A token shorter than
    16 characters or with whitespace inside is refused: it is a password a client guesses or
    a header no client can send.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            raw, where = token_file.read_text(encoding="utf-8"), f"--token-file {token_file}"
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc.strerror or exc})") from None
    else:
        raw, where = env.get(ENV_TOKEN, ""), ENV_TOKEN
        if not raw.strip():
            return None
    token = raw.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token) or not token.isprintable():
        raise ConfigError(
            f"{where}: the token must be at least {MIN_TOKEN_CHARS} printable characters without "
            "spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


class BearerAuth:
    """ASGI middleware: every HTTP request but :data:`OPEN_PATHS` needs ``Authorization: Bearer
    <token>``; anything else gets 401 before it reaches the MCP session manager.

    The comparison is :func:`hmac.compare_digest` on bytes (its time does not depend on where
    the strings differ, so the token cannot be guessed byte by byte).  A pure ASGI wrapper,
    not Starlette's ``BaseHTTPMiddleware``, so the streamed MCP responses pass through as is.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "unauthorized", "error_description": "missing or wrong bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="granalign"'},
        )
        await response(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        sent = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
        return len(sent) == 1 and hmac.compare_digest(sent[0], self._expected)


def http_app(server: FastMCP, token: str | None) -> ASGIApp:
    """The streamable-HTTP ASGI app of ``server``, behind :class:`BearerAuth` when ``token``."""
    app: ASGIApp = server.streamable_http_app()
    return BearerAuth(app, token) if token else app


def serve_http(server: FastMCP, token: str | None) -> None:
    """Serve ``server`` over streamable HTTP on its host and port (uvicorn, as FastMCP does)."""
    import uvicorn

    uvicorn.run(
        http_app(server, token),
        host=server.settings.host,
        port=server.settings.port,
        log_level=server.settings.log_level.lower(),
    )
