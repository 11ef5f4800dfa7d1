"""The graph served by ``langgraph dev`` (Studio's API) answers a real val query over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from granalign.backends.embedder import make_embedder
from granalign.core.moments import MOMENT_BOUNDS
from granalign.io.captions_import import import_captions
from granalign.io.store import Store
from tests.servers import langgraph_dev
from tools.demo_data import DEMO


@pytest.fixture(scope="module")
def one_query(tmp_path_factory) -> tuple[Path, dict]:
    """A real QVHighlights val query whose video's captions are imported into a fresh store."""
    ann = json.loads(DEMO.annotations.read_text().splitlines()[0])
    store_dir = tmp_path_factory.mktemp("lgstore")
    caps = store_dir / "one.jsonl"
    line = next(x for x in DEMO.captions.read_text().splitlines() if json.loads(x)["vid"] == ann["vid"])
    caps.write_text(line + "\n")
    with Store(store_dir / "store") as store:  # closed: the server process opens it
        import_captions(store, make_embedder("local:all-MiniLM-L6-v2"), caps, source="demo")
    return store_dir / "store", ann


@pytest.fixture(scope="module")
def served(one_query, tmp_path_factory) -> Iterator[str]:
    """``langgraph dev`` serving the repo's graphs over the one-query store; yields its URL."""
    store_dir, _ = one_query
    log = tmp_path_factory.mktemp("langgraph") / "langgraph.log"
    with langgraph_dev({"GRANALIGN_STORE": str(store_dir)}, log, timeout=180) as url:
        yield url


def test_langgraph_dev_serves_the_retrieval_graph(one_query, served):
    from langgraph_sdk import get_client

    _, ann = one_query

    async def scenario(url: str) -> dict:
        client = get_client(url=url)
        assistants = await client.assistants.search(graph_id="retrieval")
        assert assistants, "the retrieval graph is not registered"
        schemas = await client.assistants.get_schemas(assistants[0]["assistant_id"])
        assert set(schemas["input_schema"]["properties"]) >= {"video", "query"}
        context_schema = schemas.get("context_schema") or schemas.get("config_schema")
        assert "nms_iou" in json.dumps(context_schema)
        top_n = context_schema["properties"]["top_n"]  # Studio's form shows the range a run checks
        assert (top_n["minimum"], top_n["maximum"]) == MOMENT_BOUNDS["top_n"]
        return await client.runs.wait(
            None,
            "retrieval",
            input={"video": ann["vid"], "query": ann["query"], "duration": ann["duration"]},
            context={"top_n": 5},
        )

    out = asyncio.run(scenario(served))
    assert out["video_id"] == ann["vid"]
    assert 1 <= len(out["moments"]) <= 5
    assert all(0 <= s < e <= ann["duration"] for s, e, _ in out["moments"])
    assert len(out["saliency"]) == int(ann["duration"] // 2)


def _run_error(served: str, graph_id: str, inputs: dict, **kwargs: object) -> dict:
    """The error a LangGraph client receives for a run that fails (``{"error", "message"}``)."""
    from langgraph.pregel.remote import RemoteException, RemoteGraph

    with pytest.raises(RemoteException) as err:
        RemoteGraph(graph_id, url=served).invoke(inputs, **kwargs)  # type: ignore[arg-type]
    return dict(err.value.args[0])


def test_unknown_context_keys_are_refused_as_the_cli_refuses_them(one_query, served):
    """The server would drop ``foo`` silently; the served graphs refuse it in the CLI's words,
    offering only the settings a client may set (not the operator's)."""
    from dataclasses import fields

    from langgraph_sdk import get_client

    from agent.context import AgentContext
    from graphs.context import Context
    from graphs.served import OPERATOR_ONLY

    _, ann = one_query
    client_keys = sorted({f.name for f in fields(Context)} - set(OPERATOR_ONLY))
    inputs = {"video": ann["vid"], "query": ann["query"]}
    for graph_id, graph_input in (("retrieval", inputs), ("ingest", {"video": "clip.mp4"})):
        got = _run_error(served, graph_id, graph_input, context={"top_n": 5, "foo": 1})
        message = f"unknown setting(s) ['foo']; allowed: {client_keys}"
        assert got == {"error": "ConfigError", "message": message}, graph_id

    agent_keys = sorted(f.name for f in fields(AgentContext) if f.name != "api_key_env")
    chat = {"messages": [{"role": "user", "content": "When does the dog jump?"}]}
    got = _run_error(served, "agent", chat, context={"max_tool_calls": 2, "foo": 1})
    expected = f"unknown setting(s) ['foo']; allowed: {agent_keys}"
    assert got == {"error": "ConfigError", "message": expected}

    async def through_configurable() -> None:  # the pre-context way of passing settings
        client = get_client(url=served)
        with pytest.raises(Exception, match=r"unknown setting\(s\) \['foo'\]"):
            await client.runs.wait(None, "retrieval", input=inputs, config={"configurable": {"foo": 1}})

    asyncio.run(through_configurable())


def test_a_client_cannot_move_the_video_roots_or_the_store(served):
    """Without this, ``context={"video_roots": "/"}`` would let any API client read any file."""
    moved = (("video_roots", "/"), ("store_dir", "/tmp/elsewhere"), ("checkpoint_db", "/tmp/x.db"))
    etc = {"video": "/etc/hostname", "query": "a dog"}
    for graph_id, graph_input in (("retrieval", etc), ("ingest", {"video": "/etc/hostname"})):
        for key, value in moved:
            got = _run_error(served, graph_id, graph_input, context={key: value})
            assert got["error"] == "ConfigError", (graph_id, key, got)
            assert f"['{key}'] are fixed by the server's environment" in got["message"], got
    ok = _run_error(served, "retrieval", etc, context={"video_roots": ""})
    assert "outside the allowed video roots" in ok["message"]  # "" (the default) is still allowed


def test_errors_that_reach_api_clients_name_settings_not_cli_flags(served):
    got = _run_error(served, "retrieval", {"video": "/etc/hostname", "query": "a dog"})
    assert "outside the allowed video roots" in got["message"]
    assert "video_roots setting" in got["message"] and "--set" not in got["message"]
