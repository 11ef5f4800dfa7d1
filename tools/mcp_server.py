"""GranAlign as an MCP server: the same ``retrieve_moments`` and ``list_videos`` tools.

``granalign mcp`` serves them over stdio (a desktop client starts the process) or streamable
HTTP (``--transport http``, bound to 127.0.0.1 by default).  Both tools share the LangChain
tool's core (:class:`tools.langchain_tool.MomentRetriever`), so validation of untrusted
arguments (:mod:`tools.safety`), graph execution (in-process, or a LangGraph server through
``GRANALIGN_GRAPH_URL``) and error texts are identical on both surfaces.

MCP specifics:

* results are JSON: each tool declares an output schema and returns structured content (the
  text content is the same JSON, for clients that ignore ``structuredContent``);
* errors come back as tool results with ``isError: true`` and a message the calling model can
  act on; the server process never dies of a bad argument;
* the graph's progress events become MCP progress notifications (when the client sent a
  progress token) and log messages;
* over HTTP the SDK's DNS-rebinding protection is on for loopback hosts; a non-loopback bind
  has no authentication of its own, so ``granalign mcp`` warns, and a deployment should put
  it behind an authenticating proxy.  ``GET /healthz`` answers ``ok`` for supervisors.
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from tools.langchain_tool import (
    DEFAULT_TOP_K,
    LIST_DESCRIPTION,
    MAX_CONTAINS_CHARS,
    MAX_LIST_LIMIT,
    MAX_TOP_K,
    RETRIEVE_DESCRIPTION,
    MomentRetriever,
)
from tools.safety import MAX_QUERY_CHARS, MAX_VIDEO_ARG_CHARS

__all__ = ["LOOPBACK_HOSTS", "MomentsOutput", "VideoInfo", "VideosOutput", "build_server"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

INSTRUCTIONS = (
    "GranAlign finds when something happens in a video. Call list_videos to get video ids, then "
    "retrieve_moments(video, query) with a short visual description; windows are in seconds."
)


class MomentsOutput(BaseModel):
    """JSON result of ``retrieve_moments``."""

    video_id: str = Field(description="The video that was searched.")
    query: str = Field(description="The query as it was used (control characters removed).")
    moments: list[list[float]] = Field(
        description="Time windows [start_s, end_s, score], best first; seconds from the video's start."
    )
    saliency: list[float] = Field(description="Per-clip relevance curve in [0, 1], one value per clip.")
    clip_len_s: float | None = Field(description="Length of one saliency clip in seconds (null if unknown).")
    mode: str = Field(description="'full' (frames analysed) or 'caption-only' (stored captions only).")
    notes: list[str] = Field(description="What the run skipped or fell back on.")
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


def build_server(
    retriever: MomentRetriever | None = None, *, host: str = "127.0.0.1", port: int = 8000
) -> FastMCP:
    """A FastMCP server exposing the tools over ``retriever`` (default: environment settings)."""
    core = retriever or MomentRetriever()
    server: FastMCP = FastMCP("granalign", instructions=INSTRUCTIONS, host=host, port=port)

    @server.tool(
        name="retrieve_moments",
        description=RETRIEVE_DESCRIPTION,
        annotations=ToolAnnotations(title="Find moments in a video", readOnlyHint=True, openWorldHint=False),
        structured_output=True,
    )
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
            int, Field(ge=1, le=MAX_TOP_K, description=f"Windows to return, best first (1-{MAX_TOP_K}).")
        ] = DEFAULT_TOP_K,
    ) -> MomentsOutput:
        done = 0

        async def progress(event: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            stage = str(event.get("stage", "step"))
            await ctx.report_progress(done, None, stage)
            await ctx.debug(f"retrieve_moments: {stage}")

        result = await core.arun(video, query, top_k, on_progress=progress)
        a = result.artifact
        return MomentsOutput(
            video_id=a["video_id"],
            query=a["query"],
            moments=a["moments"],
            saliency=a["saliency"],
            clip_len_s=a.get("clip_len_s"),
            mode=a.get("mode", ""),
            notes=a.get("notes", []),
            summary=result.content,
        )

    @server.tool(
        name="list_videos",
        description=LIST_DESCRIPTION,
        annotations=ToolAnnotations(title="List indexed videos", readOnlyHint=True, openWorldHint=False),
        structured_output=True,
    )
    async def list_videos(
        contains: Annotated[
            str,
            Field(max_length=MAX_CONTAINS_CHARS, description="Only ids containing this text; empty = all."),
        ] = "",
        limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT, description="At most this many ids.")] = 20,
    ) -> VideosOutput:
        import asyncio

        found = await asyncio.to_thread(core.list_videos, contains, limit)
        return VideosOutput(**found.artifact)

    async def healthz(request: Request) -> PlainTextResponse:
        """Liveness for supervisors and tests (the MCP endpoint itself needs a session)."""
        return PlainTextResponse("ok")

    server.custom_route("/healthz", methods=["GET"])(healthz)

    return server
