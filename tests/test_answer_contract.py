"""The answer contract: the distinct profile in every proposal mode (the peer's too), a graph
``duration`` that no float can hold, and tool text that gives the artifact's seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from granalign.core.nms import temporal_iou
from granalign.errors import InputError
from graphs.context import Context
from graphs.retrieval import _duration
from tests.test_peer_vtg_gpt import _nodes, peer_store  # noqa: F401  (fixture)


def _overlapping_peer_curves() -> np.ndarray:
    """Two variants whose peer spans nearly coincide: clips 3–8 and 3–9 (clip-index IoU 0.83,
    kept by the peer's own NMS at 0.95; in seconds [6, 18] and [6, 20], IoU 0.86)."""
    curves = np.zeros((2, 30))
    curves[0, 3:9] = 1.0
    curves[1, 3:10] = 1.0
    return curves


def test_distinct_profile_holds_in_peer_mode(peer_store: Path) -> None:  # noqa: F811
    curves = _overlapping_peer_curves()
    fused = curves.mean(axis=0)
    bench = _nodes(peer_store, curves, fused, proposal_mode="vtg-gpt", answer_profile="benchmark")
    assert [m[:2] for m in bench["moments"]] == [[6.0, 18.0], [6.0, 20.0]]  # the peer's published rule, as is
    out = _nodes(peer_store, curves, fused, proposal_mode="vtg-gpt", answer_profile="distinct")
    rows = np.asarray(out["moments"])
    iou = temporal_iou(rows[:, :2], rows[:, :2])
    np.fill_diagonal(iou, 0.0)
    assert iou.max(initial=0.0) < 0.5, out["moments"]  # what the tool, CLI and MCP promise
    assert out["moments"][0] == bench["moments"][0]  # NMS never removes the top window


def test_graph_duration_too_large_for_a_float_is_an_input_error() -> None:
    state = {"video_id": "v", "duration": 10**400}
    with pytest.raises(InputError, match="duration"):
        _duration(state, Context())  # type: ignore[arg-type]


def test_tool_text_gives_the_artifacts_seconds() -> None:
    from tools.langchain_tool import MomentsResult

    moments = [[4.75, 5.5, 0.5161], [17.25, 18.5, 0.5056], [0.0, 18.0, 0.5], [1.0001, 2.0, 0.4]]
    text = MomentsResult({"video_id": "v", "query": "q", "moments": moments, "mode": "full"}).content
    assert "1. 4.75–5.5 s" in text
    assert "2. 17.25–18.5 s" in text  # not 17.2 (half to even) beside 4.8 (half up)
    assert "3. 0.0–18.0 s" in text
    assert "4. 1.0001–2.0 s" in text


def test_tool_text_gives_the_artifacts_match_before_the_windows() -> None:
    """The one value that says whether the video shows the query at all, as the artifact has it
    (4 decimals: 0.2996 printed as 0.30 would contradict "below 0.30"), read for MiniLM only,
    with the upper level for the video's caption count (the saliency curve's length)."""
    from tools.langchain_tool import MomentsResult

    art = {"video_id": "v", "query": "q", "moments": [[1.0, 2.0, 0.5]], "mode": "full"}
    art["saliency"] = [0.1] * 75
    text = MomentsResult(art | {"match": 0.2996, "match_embedder": "all-MiniLM-L6-v2"}).content
    assert text.splitlines()[1] == (
        "match 0.2996 (all-MiniLM-L6-v2: below 0.30 the video rarely shows it; "
        "at or above 0.45, for a video of 75 captions, it usually does)"
    )
    long = MomentsResult(art | {"saliency": [0.1] * 1800, "match": 0.5, "match_embedder": "all-MiniLM-L6-v2"})
    assert "at or above 0.64, for a video of 1800 captions" in long.content
    other = MomentsResult(art | {"match": 0.5, "match_embedder": "e5-small"}).content
    assert "match 0.5 (uncalibrated: the text embedder is not all-MiniLM-L6-v2)" in other
    nothing = MomentsResult(art | {"moments": [], "match": 0.1, "match_embedder": "all-MiniLM-L6-v2"}).content
    assert "no matching moment found.\nmatch 0.1 (all-MiniLM-L6-v2: below 0.30 the video" in nothing
    before = MomentsResult(art).content  # a deployment from before the match value
    assert "match" not in before and "1. 1.0–2.0 s" in before


def test_mcp_output_documents_the_match_field() -> None:
    from tools.mcp_server import MomentsOutput

    fields = MomentsOutput.model_json_schema()["properties"]
    assert "raw cosines" in fields["match"]["description"] and "match_embedder" in fields


def test_agent_citations_give_the_artifacts_seconds() -> None:
    from agent.graph import _footer

    text = _footer([{"video_id": "v", "moments": [[17.25, 18.5, 0.5], [0.0, 30.6973, 0.4]]}])
    assert "17.25–18.5 s, 0.0–30.6973 s" in text  # the citation's numbers, not 17.2 and 30.7


def test_seconds_text_keeps_four_decimals_and_one_at_least() -> None:
    from granalign.text import seconds_text

    assert [seconds_text(x) for x in (17.25, 4.0, 0.0, 30.69733, 1e-05, 1234.5)] == [
        "17.25",
        "4.0",
        "0.0",
        "30.6973",
        "0.0",
        "1234.5",
    ]


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**7 + 1, 0, 1e-4, float("nan"), True, "5"])
def test_one_seconds_check_refuses_what_no_window_can_use(value: object) -> None:
    """The graph's ``duration`` and the proposal stage share one check; an int past float's
    range is named, not an OverflowError, and a long value is cut in the message."""
    from granalign.core.moments import positive_seconds

    with pytest.raises(InputError, match="duration must be") as err:
        positive_seconds("duration", value)
    assert len(str(err.value)) < 120
    with pytest.raises(InputError, match="duration must be"):
        _duration({"duration": value}, Context())  # type: ignore[arg-type, typeddict-item]
