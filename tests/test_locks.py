"""Concurrent callers on one video: a per-video lock across threads and processes.

The lock is tested on its own (held by another process; released by ``kill -9``; different
videos never wait for each other) and through the real ingest: N threads on one new video and
N processes sharing a ``chroma run`` store ingest it once (the clips encoded add up to the
video's clips, not N times that) and all return the same windows.  Models: random-weight
open_clip ViT-S-32 and the tiny random-weight VLM built in tests/test_ingest.py, real MiniLM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from granalign.errors import InputError
from granalign.io.locks import lock_path, video_lock
from graphs import resources
from tests.conftest import VIDEOS, approx_moments, needs_videos
from tests.test_ingest import Calls, build_tiny_vlm_random_weights, model_context

ROOT = Path(__file__).resolve().parents[1]
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from granalign.io.locks import video_lock
    with video_lock(Path(sys.argv[1]), sys.argv[2], 5):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
    """
)


def _hold_in_process(lock_dir: Path, video_id: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), video_id, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_lock_held_by_another_process_times_out_with_a_clear_error(tmp_path):
    proc = _hold_in_process(tmp_path, "sha256-abc", 30)
    try:
        waits: list[str] = []
        with (
            pytest.raises(InputError, match=r"sha256-abc is being ingested by another caller"),
            video_lock(tmp_path, "sha256-abc", 0.5, on_wait=lambda: waits.append("wait")),
        ):
            pass
        assert waits == ["wait"]
        with video_lock(tmp_path, "sha256-other", 0.5):  # another video: no wait
            pass
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    proc = _hold_in_process(tmp_path, "sha256-abc", 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_path(tmp_path, "sha256-abc").exists()  # the file stays; the kernel lock does not
    with video_lock(tmp_path, "sha256-abc", 2.0) as waited:
        assert waited < 2.0


def test_lock_waits_for_the_holder_then_proceeds(tmp_path):
    proc = _hold_in_process(tmp_path, "sha256-abc", 1.0)
    with video_lock(tmp_path, "sha256-abc", 30) as waited:
        assert proc.poll() is not None or waited > 0
    proc.wait()


def test_threads_queue_on_one_video_and_not_on_another(tmp_path):
    order: list[str] = []
    inside = threading.Event()

    def slow(video: str) -> None:
        with video_lock(tmp_path, video, 10):
            order.append(f"in {video}")
            inside.set()
            time.sleep(0.5)
            order.append(f"out {video}")

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(slow, "a")
        inside.wait(5)
        second, other = pool.submit(slow, "a"), pool.submit(slow, "b")
        for f in (first, second, other):
            f.result()
    a_events = [e for e in order if e.endswith(" a")]
    assert a_events == ["in a", "out a", "in a", "out a"]  # never two holders of "a"
    assert order.index("in b") < order.index("out a")  # "b" ran while the first "a" held its lock


def test_lock_file_names_are_confined_to_the_lock_dir(tmp_path):
    path = lock_path(tmp_path, "../../etc/passwd")
    assert path.parent == tmp_path and "/" not in path.name


# -- through the real ingest -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm_random_weights(tmp_path_factory.mktemp("models") / "tiny-qwen25vl-random-weights")


@needs_videos
def test_concurrent_threads_ingest_a_new_video_once_random_weights(tmp_path, vlm, monkeypatch):
    """Four agent tool calls (retrieve_moments) at once on a video the store has never seen."""
    from tools.langchain_tool import MomentRetriever, ToolSettings

    ctx = model_context(tmp_path / "store", vlm, [VIDEOS], ingest_batch=2)
    calls = Calls(monkeypatch, ctx)
    tool = MomentRetriever(ToolSettings(context=ctx, roots=(VIDEOS,), url_allowlist=()))
    video = str(VIDEOS / "bikes.mp4")  # 5 clips
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: tool.run(video, "a person rides a bicycle"), range(4)))
    assert calls.frames == 5 and calls.agnostic == 5  # once, not 4 times
    windows = [r.artifact["moments"] for r in results]
    assert windows[0] and all(w == windows[0] for w in windows)
    resources.clear_caches()


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from graphs import resources
    from graphs.context import Context
    from graphs.retrieval import graph

    ctx = Context(**json.loads(sys.argv[1]))
    go = Path(sys.argv[2])
    resources.clip_for(ctx), resources.captioner_for(ctx)  # load the models before the race starts
    resources.embedder_for(ctx).embed(["warm up"])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.02)
    events, state = [], {}
    for mode, chunk in graph.stream(
        {"video": sys.argv[3], "query": "a person rides a bicycle"},
        context=ctx,
        stream_mode=["custom", "values"],
    ):
        if mode == "custom":
            events.append(chunk)
        else:
            state = chunk
    encoded = sum(e.get("encoded", 0) for e in events if e["stage"] == "finalize")
    waited = any(e["stage"] == "ingest_wait" for e in events)
    print(json.dumps({"encoded": encoded, "waited": waited, "moments": state["moments"]}), flush=True)
    """
)


@needs_videos
@pytest.mark.slow
def test_concurrent_processes_sharing_a_chroma_server_ingest_once_random_weights(tmp_path, vlm):
    from tests.servers import chroma_server

    with chroma_server(tmp_path) as url:
        ctx = model_context(
            tmp_path / "unused", vlm, [VIDEOS], chroma_url=url, lock_dir=str(tmp_path / "locks")
        )
        fields = {
            k: getattr(ctx, k)
            for k in ("chroma_url", "clip_model", "clip_pretrained", "captioner", "caption_tokens")
        }
        fields.update(video_roots=ctx.video_roots, ingest_batch=1, lock_dir=ctx.lock_dir)
        go = tmp_path / "go"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(fields), str(go), str(VIDEOS / "bikes.mp4")],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
            for _ in range(3)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            go.touch()
            outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
        finally:
            for p in procs:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    assert sum(o["encoded"] for o in outs) == 5, outs  # 5 clips, encoded by one process only
    assert all(o["moments"] == approx_moments(outs[0]["moments"]) for o in outs)  # processes: tolerance
