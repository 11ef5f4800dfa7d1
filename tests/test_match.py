"""The answer's ``match``: whether the video shows the query at all.

Every score an answer carries is min–max normalised per video, so a query the video never shows
gets windows scored like real ones (``tests/test_tool.py``); ``match`` is the raw cosine of the
query with the video's best agnostic captions.  Unit tests of the function, then the real
shipped MiniLM through the graph, the LangChain tool and the MCP server on a demo video.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from granalign.core.match import CALIBRATED_EMBEDDER, caption_match, likely_from, match_reading
from granalign.errors import InputError
from tests.test_tool import DOG_VIDEO, _settings, demo_store  # noqa: F401  (fixture)


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_match_is_the_mean_of_the_three_best_raw_cosines() -> None:
    q = np.array([1.0, 0.0])
    cosines = [0.9, -0.2, 0.5, 0.7, 0.1]
    captions = np.array([[c, np.sqrt(1 - c * c)] for c in cosines]) * 3.0  # magnitudes do not count
    assert caption_match(q, captions) == round((0.9 + 0.7 + 0.5) / 3, 4)
    assert caption_match(q * 7.0, captions, k=1) == 0.9


def test_fewer_captions_than_three_average_them_all() -> None:
    q = np.array([1.0, 0.0])
    assert caption_match(q, np.array([[0.6, 0.8], [0.0, 1.0]])) == 0.3
    assert caption_match(q, np.array([[-1.0, 0.0]])) == -1.0  # in [-1, 1], a plain float
    assert isinstance(caption_match(q, np.array([[0.6, 0.8]])), float)


def test_match_is_rounded_to_four_decimals() -> None:
    q = _unit([1.0, 2.0, 3.0])
    captions = np.array([_unit([3.0, 2.0, 1.0]), _unit([1.0, 1.0, 1.0]), _unit([0.0, 1.0, 5.0])])
    got = caption_match(q, captions)
    assert got == round(float(np.mean(captions @ q)), 4) and got != float(np.mean(captions @ q))


@pytest.mark.parametrize(
    ("query", "captions", "message"),
    [
        (np.ones((1, 2)), np.ones((3, 2)), "query_emb must be a 1-D array"),
        (np.ones(2), np.ones(2), "captions must be a 2-D array"),
        (np.ones(2), np.ones((0, 2)), "captions must hold at least one embedding"),
        (np.ones(3), np.ones((4, 2)), "same embedding size, got 3 and 2"),
        (np.array([np.nan, 1.0]), np.ones((4, 2)), "query_emb contains 1 NaN"),
        (np.ones(2), np.array([[1.0, np.inf]]), "captions contains 1 NaN or infinite"),
    ],
)
def test_bad_shapes_and_values_are_named(query: Any, captions: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        caption_match(query, captions)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_k_must_be_a_positive_integer(k: Any) -> None:
    with pytest.raises(InputError, match="k must be an integer >= 1"):
        caption_match(np.ones(2), np.ones((4, 2)), k=k)


def test_the_reading_is_calibrated_only_for_minilm() -> None:
    assert match_reading(0.5712, CALIBRATED_EMBEDDER, 75) == (
        "match 0.5712 (all-MiniLM-L6-v2: below 0.30 the video rarely shows it; "
        "at or above 0.45, for a video of 75 captions, it usually does)"
    )
    # a value just below a threshold must not print as the threshold
    assert match_reading(0.2996, CALIBRATED_EMBEDDER, 75).startswith("match 0.2996 ")
    other = match_reading(0.5712, "minilm-3f9a1c2b#onnx-int8", 75)
    assert other == "match 0.5712 (uncalibrated: the text embedder is not all-MiniLM-L6-v2)"
    assert "below" not in other and "3f9a1c2b" not in other
    with pytest.raises(InputError, match="match must be a finite number"):
        match_reading(float("nan"), CALIBRATED_EMBEDDER, 75)


def test_the_upper_level_rises_with_the_videos_caption_count() -> None:
    """The best of many unrelated captions is higher: one level fitted to 150-s videos (0.44)
    called 62 % of unrelated 1-h recordings a match; the level grows with ln(captions)."""
    levels = [likely_from(n) for n in (15, 30, 75, 600, 1800)]
    assert levels == [0.36, 0.40, 0.45, 0.58, 0.64]
    assert likely_from(1) == 0.20 and likely_from(np.int64(75)) == 0.45
    long = match_reading(0.5, CALIBRATED_EMBEDDER, 1800)
    assert long.endswith("at or above 0.64, for a video of 1800 captions, it usually does)")
    # no curve to count the captions by (an answer without saliency): the lower level only
    assert match_reading(0.5, CALIBRATED_EMBEDDER) == (
        "match 0.5 (all-MiniLM-L6-v2: below 0.30 the video rarely shows it)"
    )


@pytest.mark.parametrize("captions", [0, -3, 2.5, True, "75"])
def test_the_caption_count_must_be_a_positive_integer(captions: Any) -> None:
    with pytest.raises(InputError, match="captions must be an integer >= 1"):
        likely_from(captions)


def test_the_fusion_stage_gives_the_match_of_the_original_query() -> None:
    from granalign.stages.fusion import FusionSettings, fuse

    settings = FusionSettings(3, 0.5, 1.0, "zero", False, 0.5)
    captions = np.array([_unit([1.0, 0.2, 0.0]), _unit([0.0, 1.0, 0.0]), _unit([0.3, 0.0, 1.0])])
    q = _unit([1.0, 0.0, 0.0])
    variants = np.array([_unit([0.0, 1.0, 0.0])])  # the variants do not count, the query does
    got = fuse(variants, variants, captions.astype(np.float32), settings, query_emb=q.astype(np.float32))
    assert got.match == caption_match(q, captions)
    assert fuse(variants, variants, captions.astype(np.float32), settings).match is None


# -- through the graph and the tools, real MiniLM on a demo video ------------------------------

SHOWN = "friends play with a black dog"
ABSENT = "a rocket launches into space"


def test_the_graph_matches_a_query_the_video_shows_above_one_it_does_not(demo_store) -> None:  # noqa: F811
    from graphs.context import Context
    from graphs.retrieval import graph

    store, _ = demo_store
    ctx = Context(store_dir=str(store), rewriter="none")
    shown = graph.invoke({"video": DOG_VIDEO, "query": SHOWN}, context=ctx)
    absent = graph.invoke({"video": DOG_VIDEO, "query": ABSENT}, context=ctx)
    assert shown["match_embedder"] == absent["match_embedder"] == CALIBRATED_EMBEDDER
    assert -1.0 <= absent["match"] < shown["match"] <= 1.0
    # the README's reading holds here: the upper level for this video's 75 captions is 0.45
    assert shown["match"] >= likely_from(len(shown["saliency"])) == 0.45 and absent["match"] < 0.30
    # the scores cannot tell them apart (both normalised over this video's clips)
    assert absent["moments"][0][2] >= shown["moments"][0][2] - 0.1
    assert {"match", "match_embedder"} <= set(graph.get_output_jsonschema()["properties"])


def test_the_tool_text_artifact_and_mcp_output_carry_the_match(demo_store) -> None:  # noqa: F811
    from mcp.shared.memory import create_connected_server_and_client_session

    from tools.langchain_tool import MomentRetriever, make_retrieve_moments_tool
    from tools.mcp_server import build_server

    store, _ = demo_store
    core = MomentRetriever(_settings(store, rewriter="none"))
    msg = make_retrieve_moments_tool(core).invoke(
        {
            "type": "tool_call",
            "id": "c1",
            "name": "retrieve_moments",
            "args": {"video": DOG_VIDEO, "query": ABSENT},
        }
    )
    art = msg.artifact
    assert art["match_embedder"] == CALIBRATED_EMBEDDER and art["match"] < 0.30
    assert match_reading(art["match"], CALIBRATED_EMBEDDER, len(art["saliency"])) in msg.content
    assert "the video rarely shows it; at or above 0.45, for a video of 75 captions" in msg.content
    assert "match value" in make_retrieve_moments_tool(core).description

    async def call() -> Any:
        async with create_connected_server_and_client_session(build_server(core)) as session:
            listed = await session.list_tools()
            res = await session.call_tool("retrieve_moments", {"video": DOG_VIDEO, "query": SHOWN})
            return listed, res

    listed, res = asyncio.run(call())
    assert not res.isError, res.content
    out = res.structuredContent
    assert out["match"] > art["match"] and out["match_embedder"] == CALIBRATED_EMBEDDER
    assert match_reading(out["match"], CALIBRATED_EMBEDDER, len(out["saliency"])) in out["summary"]
    schema = next(t for t in listed.tools if t.name == "retrieve_moments").outputSchema
    described = schema["properties"]["match"]["description"]
    assert "below 0.30 the video rarely shows it" in described and "0.64 at 1,800" in described
