"""The graph served by ``langgraph dev`` (Studio's API) answers a real val query over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from granalign.backends.embedder import make_embedder
from granalign.captions_import import import_captions
from granalign.store import Store
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
    import_captions(Store(store_dir / "store"), make_embedder("local:all-MiniLM-L6-v2"), caps, source="demo")
    return store_dir / "store", ann


def test_langgraph_dev_serves_the_retrieval_graph(one_query, tmp_path):
    from langgraph_sdk import get_client

    store_dir, ann = one_query
    env = {"GRANALIGN_STORE": str(store_dir)}

    async def scenario(url: str) -> dict:
        client = get_client(url=url)
        assistants = await client.assistants.search(graph_id="retrieval")
        assert assistants, "the retrieval graph is not registered"
        schemas = await client.assistants.get_schemas(assistants[0]["assistant_id"])
        assert set(schemas["input_schema"]["properties"]) >= {"video", "query"}
        assert "nms_iou" in json.dumps(schemas.get("context_schema") or schemas.get("config_schema"))
        return await client.runs.wait(
            None,
            "retrieval",
            input={"video": ann["vid"], "query": ann["query"], "duration": ann["duration"]},
            context={"top_n": 5},
        )

    with langgraph_dev(env, tmp_path / "langgraph.log", timeout=180) as url:
        out = asyncio.run(scenario(url))
    assert out["video_id"] == ann["vid"]
    assert 1 <= len(out["moments"]) <= 5
    assert all(0 <= s < e <= ann["duration"] for s, e, _ in out["moments"])
    assert len(out["saliency"]) == int(ann["duration"] // 2)
