"""``granalign mcp`` as a real server process, driven by real MCP clients (stdio and HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from agent.graph import build_agent
from tests.servers import free_port, server, store_copy
from tests.test_agent import _scripted
from tests.test_tool import DOG_VIDEO, FLIPFLOP_VIDEO, demo_store  # noqa: F401  (fixture)

BIN = Path(sys.executable).parent


def _env(store: Path, root: Path) -> dict[str, str]:
    return {
        "GRANALIGN_STORE": str(store),
        "GRANALIGN_VIDEO_ROOTS": str(root),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mcproot")
    (root / "notes.mp4").write_bytes(b"not a video")
    return root


@pytest.fixture(scope="module")
def http_server(demo_store, video_root, tmp_path_factory):  # noqa: F811
    store = store_copy(demo_store[0], tmp_path_factory.mktemp("mcp-http") / "store")  # its own folder
    port = free_port()
    log = tmp_path_factory.mktemp("mcplog") / "mcp.log"
    cmd = [str(BIN / "granalign"), "mcp", "--transport", "http", "--port", str(port)]
    with server(cmd, f"http://127.0.0.1:{port}/healthz", log, env=_env(store, video_root), timeout=120):
        yield f"http://127.0.0.1:{port}/mcp"


def test_http_server_lists_tools_with_json_schemas_and_answers(http_server, demo_store, video_root):  # noqa: F811
    """The ``mcp`` client over streamable HTTP: tools/list, a call with progress, JSON results."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    _, anns = demo_store
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async def scenario():
        async with (
            streamable_http_client(http_server) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = await session.list_tools()
            ok = await session.call_tool(
                "retrieve_moments",
                {"video": DOG_VIDEO, "query": anns[DOG_VIDEO]["query"], "top_k": 3},
                progress_callback=on_progress,
            )
            videos = await session.call_tool("list_videos", {"contains": "ez8k"})
            bad = {
                name: await session.call_tool("retrieve_moments", args)
                for name, args in {
                    "dotdot": {"video": "../etc/passwd", "query": "a dog"},
                    "absolute": {"video": "/etc/passwd", "query": "a dog"},
                    "url": {"video": "http://169.254.169.254/latest/meta-data", "query": "a dog"},
                    "top_k": {"video": DOG_VIDEO, "query": "a dog", "top_k": 1000},
                    "long": {"video": DOG_VIDEO, "query": "x" * 5000},
                    "unknown": {"video": "nope", "query": "a dog"},
                    "not_indexed": {"video": "notes.mp4", "query": "a dog"},
                    "made_up_thread": {"video": DOG_VIDEO, "query": "a dog", "thread_id": "t-nope"},
                }.items()
            }
            lax_limit = await session.call_tool("list_videos", {"limit": True})  # strict: not 1
            still_ok = await session.call_tool("list_videos", {})
            return listed, ok, videos, bad, lax_limit, still_ok

    listed, ok, videos, bad, lax_limit, still_ok = asyncio.run(scenario())
    assert lax_limit.isError and "limit: Input should be a valid integer" in lax_limit.content[0].text
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == {"retrieve_moments", "list_videos"}
    schema = tools["retrieve_moments"].inputSchema
    assert set(schema["required"]) == {"video", "query"}
    assert "resume a retrieval that failed" in schema["properties"]["thread_id"]["description"]
    assert (
        schema["properties"]["top_k"]["maximum"] == 20 and schema["properties"]["query"]["maxLength"] == 500
    )
    assert "moments" in tools["retrieve_moments"].outputSchema["properties"]
    hints = tools["retrieve_moments"].annotations  # may ingest (writes the store), may fetch a URL
    assert (hints.readOnlyHint, hints.idempotentHint, hints.openWorldHint) == (False, True, True)
    assert tools["list_videos"].annotations.readOnlyHint is True

    assert not ok.isError
    result = ok.structuredContent
    assert result["video_id"] == DOG_VIDEO and 1 <= len(result["moments"]) <= 3
    assert all(0 <= s < e <= 150 for s, e, _ in result["moments"]) and len(result["saliency"]) == 75
    assert json.loads(ok.content[0].text) == result  # the text block is the same JSON
    stages = [(m or "").split()[0] for _, m in progress]  # "stage key=value ..."
    assert stages[0] == "load_video" and stages[-1] == "nms"
    assert [v for v, _ in progress] == sorted(v for v, _ in progress)

    assert [v["video_id"] for v in videos.structuredContent["videos"]] == [FLIPFLOP_VIDEO]

    expected = {
        "dotdot": "'..' is not allowed",
        "absolute": "outside the allowed video roots",
        "url": "URLs are not accepted",
        "top_k": "less than or equal to 20",
        "long": "at most 500",
        "unknown": "neither an indexed video id",
        "not_indexed": "<video root>/notes.mp4 is not a video FFmpeg can read",  # it tried to ingest it
        "made_up_thread": "thread_id 't-nope' holds no unfinished retrieval to resume",
    }
    for name, res in bad.items():
        assert res.isError, name
        assert expected[name] in res.content[0].text, (name, res.content[0].text)
    assert "is not indexed" not in bad["not_indexed"].content[0].text
    assert str(video_root) not in bad["not_indexed"].content[0].text
    assert not still_ok.isError  # the server survived every refusal
    assert still_ok.structuredContent["total"] == 2


def test_bad_arguments_get_the_langchain_tools_one_line_answer(http_server):
    """FastMCP's multi-line pydantic reports become the one line the LangChain tool answers."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from tools.langchain_tool import make_retrieve_moments_tool

    cases = {
        "long query": {"video": DOG_VIDEO, "query": "x" * 5000},
        "empty query": {"video": DOG_VIDEO, "query": ""},
        "top_k=999": {"video": DOG_VIDEO, "query": "a dog", "top_k": 999},
        "top_k text": {"video": DOG_VIDEO, "query": "a dog", "top_k": "many"},
        "top_k true": {"video": DOG_VIDEO, "query": "a dog", "top_k": True},  # not 1
        "top_k '5'": {"video": DOG_VIDEO, "query": "a dog", "top_k": "5"},  # as the library refuses it
        "no video": {"query": "a dog"},
    }

    async def scenario() -> dict[str, Any]:
        async with (
            streamable_http_client(http_server) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return {name: await session.call_tool("retrieve_moments", args) for name, args in cases.items()}

    answers = asyncio.run(scenario())
    langchain = make_retrieve_moments_tool()  # validation happens before any setting is read
    for name, res in answers.items():
        text = res.content[0].text
        assert res.isError and "\n" not in text, (name, text)
        assert text == langchain.invoke(cases[name]), name
    assert answers["top_k=999"].content[0].text == (
        "Invalid arguments for retrieve_moments: top_k: Input should be less than or equal to 20"
    )
    assert "query: String should have at least 1 character" in answers["empty query"].content[0].text


def test_dns_rebinding_protection_refuses_foreign_host_headers(http_server):
    import httpx

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Host": "evil.example.com", "Accept": "application/json, text/event-stream"}
    resp = httpx.post(http_server, json=body, headers=headers, timeout=10)
    assert resp.status_code in (400, 403, 421)


def test_stdio_server_through_langchain_mcp_adapters(demo_store, video_root, tmp_path):  # noqa: F811
    """The adapters start ``granalign mcp`` (stdio) and expose its tools as LangChain tools."""
    from langchain_mcp_adapters.client import MultiServerMCPClient

    store = store_copy(demo_store[0], tmp_path / "store")  # one process per embedded folder
    client = MultiServerMCPClient(
        {
            "granalign": {
                "transport": "stdio",
                "command": str(BIN / "granalign"),
                "args": ["mcp", "--store", str(store)],
                "env": _env(store, video_root),
            }
        }
    )

    async def scenario():
        async with client.session("granalign") as session:
            from langchain_mcp_adapters.tools import load_mcp_tools

            tools = {t.name: t for t in await load_mcp_tools(session)}
            call = {"type": "tool_call", "id": "c1", "name": "retrieve_moments"}
            good = await tools["retrieve_moments"].ainvoke(
                {**call, "args": {"video": FLIPFLOP_VIDEO, "query": "a white dog plays with a flip flop"}}
            )
            refused = await tools["retrieve_moments"].ainvoke(
                {**call, "args": {"video": "/dev/zero", "query": "a dog"}}
            )
            # the video-QA agent runs on the MCP tools as well (they are async-only)
            args = {"video": FLIPFLOP_VIDEO, "query": "a dog plays with a flip flop"}
            model = _scripted(
                AIMessage(content="", tool_calls=[{"id": "m1", "name": "retrieve_moments", "args": args}]),
                AIMessage(content="Early on."),
            )
            chat = await build_agent(model=model, tools=list(tools.values())).ainvoke(
                {"messages": [HumanMessage("when does the dog play with the flip flop?")]}
            )
            return tools, good, refused, chat

    tools, good, refused, chat = asyncio.run(scenario())
    assert set(tools) == {"retrieve_moments", "list_videos"}
    assert good.status == "success"
    structured = good.artifact["structured_content"]
    assert structured["video_id"] == FLIPFLOP_VIDEO and structured["moments"]
    assert refused.status == "error" and "outside the allowed video roots" in str(refused.content)
    tool_msg = chat["messages"][2]
    assert (
        tool_msg.status == "success" and tool_msg.artifact["structured_content"]["video_id"] == FLIPFLOP_VIDEO
    )
    best = tool_msg.artifact["structured_content"]["moments"][0]
    answer = chat["messages"][-1].text  # the agent cites windows from MCP results too
    assert answer.startswith("Early on.") and f"{best[0]:.1f}–{best[1]:.1f} s" in answer
    assert chat["citations"][0]["moments"][0] == best
