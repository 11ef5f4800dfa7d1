"""A cancelled run of the served ingest graph stops at once: a real ``langgraph dev`` whose
captioner never answers (the ingest twin of ``test_remote_tool_cancel.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from granalign.io.locks import video_lock
from granalign.io.video import content_hash
from tests.conftest import VIDEOS, needs_videos
from tests.servers import langgraph_dev
from tests.test_remote_tool_cancel import Hung, _hung

ROOT = Path(__file__).resolve().parents[1]


def _all_closed(hung: Hung, guard_s: float = 60) -> bool:
    """Whether every request the hung server got was closed by its client (a batch's captions
    go out together; each handler sees its own client leave within its 0.1 s poll)."""
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        with hung.lock:
            if hung.open == 0:
                return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@needs_videos
def test_a_cancelled_served_ingest_drops_its_model_request_and_frees_the_video_lock(tmp_path: Path) -> None:
    """Before, ``runs.cancel`` ended the server's run task, but the ``encode`` node's thread went
    on waiting for the hung captioner (``request_timeout`` × attempts, then batch after batch)
    and held the video's ingest lock all the while: every other ingest of that video waited
    behind it.  Now the request is dropped when the run is cancelled and the lock is free.
    (The waits below are hang guards: the request would be held for ``request_timeout``.)"""
    from langgraph_sdk import get_sync_client

    video = VIDEOS / "charades_univtg_example.mp4"  # 16 clips: two batches of 8
    store = tmp_path / "store"
    with _hung() as hung:
        settings = {
            "captioner": f"openai:{hung.url}#vlm",
            "clip_model": "local:ViT-S-32",  # random weights, as test_ingest's model_context
            "clip_pretrained": "none",
        }
        env = {
            "GRANALIGN_STORE": str(store),
            "GRANALIGN_VIDEO_ROOTS": str(VIDEOS),
            **{f"GRANALIGN_{k.upper()}": v for k, v in settings.items()},
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        }
        with langgraph_dev(env, tmp_path / "langgraph.log", timeout=180) as url:
            client = get_sync_client(url=url)
            context = {**settings, "ingest_batch": 8, "request_timeout": 600, "rewriter": "none"}
            run = client.runs.create(None, "ingest", input={"video": str(video)}, context=context)
            assert hung.seen.wait(180), "the served ingest did not reach the captioner"
            client.runs.cancel(run["thread_id"], run["run_id"])
            assert hung.dropped.wait(60), "the cancelled ingest still waited for the hung captioner"
            with video_lock(store / "locks", content_hash(video), 60):
                pass  # before: held until the request timed out, 600 s on
            assert _all_closed(hung), "a request of the cancelled ingest was still open"
