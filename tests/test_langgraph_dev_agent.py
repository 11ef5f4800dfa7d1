"""Both graphs of ``langgraph.json`` served by ``langgraph dev``: assistants, schemas, streamed runs
(``updates`` + ``custom``), and the tool calling the served retrieval graph through RemoteGraph.

The agent's model is the real SmolLM2 behind ``transformers serve`` (shared with test_agent.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from graphs.context import Context
from tests.conftest import ANSWER_TOL, approx_moments
from tests.servers import langgraph_dev, store_copy
from tests.test_agent import smollm2_endpoint  # noqa: F401  (fixture)
from tests.test_tool import DOG_VIDEO, demo_store, smollm2_folder  # noqa: F401  (fixtures)
from tools.langchain_tool import MomentRetriever, ToolSettings, make_retrieve_moments_tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dev_server(demo_store, smollm2_endpoint, tmp_path_factory):  # noqa: F811
    store = store_copy(demo_store[0], tmp_path_factory.mktemp("lgdev-store") / "store")  # its own folder
    env = {
        "GRANALIGN_STORE": str(store),
        "GRANALIGN_AGENT_MODEL": smollm2_endpoint,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path_factory.mktemp("lgdev") / "langgraph.log"
    with langgraph_dev(env, log, timeout=180) as url:
        yield url


async def _collect(stream: Any) -> list[tuple[str, Any]]:
    return [(part.event, part.data) async for part in stream]


@pytest.mark.slow
def test_both_graphs_are_listed_described_and_streamed(dev_server, demo_store):  # noqa: F811
    from langgraph_sdk import get_client

    _, anns = demo_store
    ann = anns[DOG_VIDEO]

    async def scenario() -> dict[str, Any]:
        client = get_client(url=dev_server)
        assistants = await client.assistants.search()
        by_graph = {a["graph_id"]: a for a in assistants}
        schemas = {g: await client.assistants.get_schemas(a["assistant_id"]) for g, a in by_graph.items()}
        retrieval = await _collect(
            client.runs.stream(
                None,
                "retrieval",
                input={"video": DOG_VIDEO, "query": ann["query"]},
                context={"top_n": 3},
                stream_mode=["updates", "custom"],
            )
        )
        agent = await _collect(
            client.runs.stream(
                None,
                "agent",
                input={
                    "messages": [{"role": "user", "content": "When do the friends play with the dog?"}],
                    "video": DOG_VIDEO,
                },
                context={"max_tokens": 16, "max_tool_calls": 0},
                stream_mode=["updates", "custom", "values"],
            )
        )
        return {"graphs": set(by_graph), "schemas": schemas, "retrieval": retrieval, "agent": agent}

    got = asyncio.run(scenario())
    assert got["graphs"] >= {"retrieval", "agent"}

    r_schema, a_schema = got["schemas"]["retrieval"], got["schemas"]["agent"]
    assert set(r_schema["input_schema"]["properties"]) >= {"video", "query"}
    assert set(a_schema["input_schema"]["properties"]) == {"messages", "video"}
    assert set(a_schema["output_schema"]["properties"]) == {"messages", "citations"}
    agent_ctx = a_schema.get("context_schema") or a_schema.get("config_schema") or {}
    assert set(agent_ctx["properties"]) == {
        "model",
        "api_key_env",
        "temperature",
        "max_tokens",
        "timeout_s",
        "max_tool_calls",
        "cite_windows",
        "system_prompt",
    }  # the API key itself is never a context field (contexts are shown and stored)
    assert "nms_iou" in json.dumps(r_schema.get("context_schema") or r_schema.get("config_schema"))

    events = got["retrieval"]
    assert not [d for e, d in events if e == "error"], events
    stages = [d["stage"] for e, d in events if e == "custom"]
    assert stages[0] == "load_video" and stages[-1] == "nms"
    nodes = [next(iter(d)) for e, d in events if e == "updates"]
    assert nodes[0] == "load_video" and nodes[-1] == "nms"
    final = next(d for e, d in reversed(events) if e == "updates")["nms"]
    assert 1 <= len(final["moments"]) <= 3

    events = got["agent"]
    assert not [d for e, d in events if e == "error"], events
    steps = [d.get("agent") for e, d in events if e == "custom"]
    assert steps[0] == "model" and steps[-1] == "answer"
    nodes = [next(iter(d)) for e, d in events if e == "updates"]
    assert nodes[0] == "agent" and nodes[-1] == "answer"
    # no tools for the model (max_tool_calls=0): the served agent's ground node retrieved for it
    assert nodes == ["agent", "ground", "tools", "agent", "ground", "answer"] and "ground" in steps
    last_values = [d for e, d in events if e == "values"][-1]
    retrieved = [m for m in last_values["messages"] if m["type"] == "tool" and m["status"] == "success"]
    assert [m["name"] for m in retrieved] == ["retrieve_moments"], [
        (m["type"], m.get("status"), m["content"]) for m in last_values["messages"]
    ]
    start, end, _ = last_values["citations"][0]["moments"][0]
    reply = last_values["messages"][-1]
    assert reply["type"] == "ai" and f"{start:.1f}–{end:.1f} s" in reply["content"]


@pytest.mark.slow
def test_the_tool_calls_the_served_graph_through_remote_graph(dev_server, demo_store):  # noqa: F811
    """GRANALIGN_GRAPH_URL mode: same moments as in-process, progress forwarded, errors readable."""
    store, anns = demo_store
    query = anns[DOG_VIDEO]["query"]
    remote = MomentRetriever(ToolSettings(graph_url=dev_server, roots=(), url_allowlist=()))
    local = MomentRetriever(ToolSettings(context=Context(store_dir=str(store)), roots=(), url_allowlist=()))

    events: list[dict] = []
    got = remote.run(DOG_VIDEO, query, 3, on_progress=events.append)
    want = local.run(DOG_VIDEO, query, 3)
    assert got.artifact["backend"] == "remote"
    # two processes: equal up to the last rounded digit (graph outputs are rounded to 4 decimals)
    assert got.artifact["moments"] == approx_moments(want.artifact["moments"])
    assert got.artifact["saliency"] == pytest.approx(want.artifact["saliency"], abs=ANSWER_TOL)
    assert events[0]["stage"] == "load_video" and events[-1]["stage"] == "nms"

    got_async = asyncio.run(remote.arun(DOG_VIDEO, query, 3))
    assert got_async.artifact["moments"] == approx_moments(want.artifact["moments"])

    tool = make_retrieve_moments_tool(remote)
    call = {"type": "tool_call", "id": "r1", "name": "retrieve_moments"}
    missing = tool.invoke({**call, "args": {"video": "not_indexed_anywhere", "query": "a dog"}})
    assert missing.status == "error" and "not_indexed_anywhere" in missing.content
    refused = tool.invoke({**call, "args": {"video": "../x.mp4", "query": "a dog"}})
    assert refused.status == "error" and "'..' is not allowed" in refused.content
