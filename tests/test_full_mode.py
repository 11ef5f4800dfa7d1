"""Full mode end to end on the three real videos, with the store embedded and behind ``chroma run``.

Ingest + retrieve through the compiled graph: open_clip ViT-S-32 with ``pretrained=None``
(seeded random weights), a tiny random-weight Qwen2.5-VL captioner built in the test, the real
SmolLM2 rewriter (``local:smollm2``, one prompt pair to bound CPU time) and the real MiniLM
embedder.  With random vision weights the windows mean nothing; the tests check the contract
(windows inside the video, one saliency value per clip, what is cached and what is computed).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from granalign.io.video import content_hash
from graphs import resources
from graphs.context import Context
from graphs.retrieval import graph
from tests.conftest import VIDEOS, needs_videos
from tests.test_ingest import Calls, build_tiny_vlm_random_weights, model_context
from tools.cli import app

pytestmark = needs_videos
CLIPS = {"bikes.mp4": (10.0, 5), "bigbuckbunny.mp4": (5.28, 3), "charades_univtg_example.mp4": (30.69733, 16)}
Q1 = "a person rides a bicycle"
Q2 = "someone opens a door and walks into the room"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm_random_weights(tmp_path_factory.mktemp("models") / "tiny-qwen25vl-random-weights")


@pytest.fixture(scope="module", params=["embedded", "chroma-server"])
def ctx(request, tmp_path_factory, vlm) -> Iterator[Context]:
    """The same models against an embedded store and against ``chroma run`` on loopback (CHROMA_URL)."""
    from tests.servers import chroma_server

    work = tmp_path_factory.mktemp(f"full-{request.param}")
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {}
        if request.param == "chroma-server":
            extra["chroma_url"] = stack.enter_context(chroma_server(work))
        yield model_context(
            work / "store", vlm, [VIDEOS, work], rewriter="local:smollm2", prompt_pairs="core", **extra
        )
        resources.clear_caches()


def _run(ctx: Context, video: str, query: str) -> tuple[dict, list[dict]]:
    events: list[dict] = []
    state: dict = {}
    for mode, chunk in graph.stream(
        {"video": video, "query": query}, context=ctx, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            events.append(chunk)
        else:
            state = chunk
    return state, events


def _check_contract(state: dict, duration: float, n_clips: int) -> None:
    assert state["mode"] == "full"
    assert 1 <= len(state["moments"]) <= 10
    assert all(0 <= s < e <= duration + 1e-6 for s, e, _ in state["moments"]), state["moments"]
    scores = [sc for _, _, sc in state["moments"]]
    assert scores == sorted(scores, reverse=True)
    assert len(state["saliency"]) == n_clips and all(0 <= v <= 1 for v in state["saliency"])
    json.dumps(
        {k: state[k] for k in ("video_id", "query", "moments", "saliency", "variants", "mode", "notes")}
    )


def test_three_real_videos_end_to_end_random_weights(ctx):
    for name, (duration, n_clips) in CLIPS.items():
        state, events = _run(ctx, str(VIDEOS / name), Q1)
        _check_contract(state, duration, n_clips)
        assert state["video_id"] == content_hash(VIDEOS / name)
        stages = [e["stage"] for e in events]
        assert stages[0] == "ingest_start" and "finalize" in stages and stages[-1] == "nms"  # ingested first
        assert {"rewrite", "focus", "clip_filter", "caption", "fuse", "propose"} <= set(stages)
        k = max(1, math.ceil(0.3 * n_clips))
        assert len(state["key_clips"]) == k and state["aware_clips"] == state["key_clips"]
        assert "clip_scores" not in state and "aware_captions" not in state  # written for nobody
        assert state["variants"][0]["pair_id"] == "original"
        assert any("keywords" in n for n in state["notes"])  # the local rewriter extracts no entities


def test_second_query_computes_no_frame_embedding_and_no_agnostic_caption_random_weights(ctx, monkeypatch):
    video = str(VIDEOS / "charades_univtg_example.mp4")
    _run(ctx, video, Q1)  # ingested (by the test above, or now)
    calls = Calls(monkeypatch, ctx)
    state, events = _run(ctx, video, Q2)
    _check_contract(state, *CLIPS["charades_univtg_example.mp4"])
    assert "ingest_start" not in [e["stage"] for e in events]
    assert (calls.frames, calls.agnostic) == (0, 0)
    assert calls.aware == len(state["key_clips"]) == 5  # query-aware captions: key clips only
    again, _ = _run(ctx, video, Q2)
    assert calls.aware == 5  # cached per query: no VLM call the second time
    assert again["moments"] == state["moments"] and again["saliency"] == state["saliency"]


def test_store_id_and_changed_settings_random_weights(ctx):
    """A stored id is enough to query; another clip length re-ingests the file (finished clips kept)."""
    path = VIDEOS / "bigbuckbunny.mp4"
    first, _ = _run(ctx, str(path), Q1)
    by_id, events = _run(ctx, first["video_id"], Q1)
    assert by_id["moments"] == first["moments"] and "ingest_start" not in [e["stage"] for e in events]
    longer = ctx.with_overrides(clip_len=3.0)
    state, events = _run(longer, first["video_id"], Q1)
    assert "ingest_start" in [e["stage"] for e in events]
    _check_contract(state, 5.28, 2)


def test_aware_missing_agnostic_random_weights(ctx):
    state, _ = _run(ctx.with_overrides(aware_missing="agnostic"), str(VIDEOS / "bikes.mp4"), Q1)
    _check_contract(state, *CLIPS["bikes.mp4"])


def test_retrieve_cli_prints_windows_and_plots_random_weights(ctx, tmp_path):
    env = {
        "GRANALIGN_STORE": ctx.store_dir,
        "CHROMA_URL": ctx.chroma_url,
        "GRANALIGN_CLIP_PRETRAINED": "none",
        "GRANALIGN_CAPTIONER": ctx.captioner,
        "GRANALIGN_CAPTION_TOKENS": "8",
        "GRANALIGN_VIDEO_ROOTS": ctx.video_roots,
        "GRANALIGN_PROMPT_PAIRS": "core",
    }
    video = str(VIDEOS / "bikes.mp4")
    as_json = CliRunner().invoke(
        app, ["retrieve", video, Q1, "--json", "--rewriter", "local:smollm2"], env=env
    )
    assert as_json.exit_code == 0, as_json.output
    out = json.loads(as_json.stdout)
    assert set(out) == {
        "video_id",
        "query",
        "moments",
        "saliency",
        "clip_len_s",
        "variants",
        "mode",
        "notes",
        "match",
        "match_embedder",
        "thread_id",
    }
    assert out["mode"] == "full" and len(out["saliency"]) == 5 and out["clip_len_s"] == 2.0
    assert out["thread_id"]  # printed at the start too, so a killed run can be resumed
    plot = tmp_path / "timeline.png"
    table = CliRunner().invoke(app, ["retrieve", out["video_id"], Q1, "--plot", str(plot)], env=env)
    assert table.exit_code == 0, table.output
    assert "start (s)" in table.output and plot.stat().st_size > 1000
    nope = Path(ctx.store_dir).parent / "nope.mp4"  # inside the video roots, but not there
    missing = CliRunner().invoke(app, ["retrieve", str(nope), Q1], env=env)
    assert missing.exit_code == 2 and "video file not found" in missing.output


def test_a_video_url_is_fetched_ingested_and_answered_random_weights(ctx, tmp_path):
    """What an agent gets for an allowed URL: the tool fetches it (a real HTTP server on
    loopback), the graph ingests the download like a local file, and a second call with the
    same URL neither fetches nor ingests again."""
    from http.server import SimpleHTTPRequestHandler

    from tests.servers import http_stub
    from tools.langchain_tool import MomentRetriever, ToolSettings

    fetched: list[str] = []

    class Videos(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(VIDEOS), **kwargs)

        def do_GET(self) -> None:
            fetched.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    settings = ToolSettings(context=ctx, url_allowlist=("127.0.0.1",), download_dir=tmp_path / "dl")
    retriever = MomentRetriever(settings)
    with http_stub(Videos) as base:
        first = retriever.run(f"{base}/bikes.mp4", Q1, 3).artifact
        again = retriever.run(f"{base}/bikes.mp4", Q1, 3).artifact
    assert first["video_id"] == content_hash(VIDEOS / "bikes.mp4")  # the same bytes as the fixture
    assert first["mode"] == "full" and 1 <= len(first["moments"]) <= 3
    assert all(0 <= s < e <= CLIPS["bikes.mp4"][0] + 1e-6 for s, e, _ in first["moments"])
    assert again["moments"] == first["moments"] and fetched == ["/bikes.mp4"]


def test_a_call_cancelled_during_an_ingest_leaves_no_checkpoint_random_weights(vlm, tmp_path):
    """The ingest runs inside the retrieval's load_video step and goes on after its caller
    cancels (the store keeps its clips). It must not write its steps into the cancelled run's
    checkpoint thread, which the cancellation deleted: nobody could ever resume or delete them."""
    import asyncio
    import time

    from graphs import durable
    from tests.test_ingest import model_context
    from tools.langchain_tool import MomentRetriever, ToolSettings

    ctx = model_context(tmp_path / "store", vlm, [VIDEOS], checkpoint_db=str(tmp_path / "ck.sqlite"))
    retriever = MomentRetriever(ToolSettings(context=ctx, url_allowlist=()))
    video = str(VIDEOS / "charades_univtg_example.mp4")
    events: list[dict] = []

    async def cancel_during_the_ingest() -> None:
        task = asyncio.create_task(retriever.arun(video, Q1, on_progress=events.append))
        while not any(e["stage"] == "probe" for e in events) and not task.done():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_during_the_ingest())
    store = resources.store_for(ctx)
    deadline = time.monotonic() + 120
    while not ((rec := store.video(content_hash(Path(video)))) and rec.complete):  # the abandoned ingest
        assert time.monotonic() < deadline, "the abandoned ingest did not finish"
        time.sleep(0.1)
    time.sleep(1.0)  # its last step's checkpoint, if any, is written by now
    saver = durable.checkpointer_for(ctx)
    assert saver is not None and list(saver.list(None)) == []
    later = retriever.run(video, Q1)  # a later call answers from the stored ingest
    _check_contract(later.artifact, *CLIPS["charades_univtg_example.mp4"])
    assert list(saver.list(None)) == []
