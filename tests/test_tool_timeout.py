"""The synchronous tool call has the same timeout as the async one (real graph, real MiniLM)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from granalign.backends.embedder import make_embedder
from granalign.io.captions_import import import_captions
from granalign.io.locks import video_lock
from granalign.io.video import content_hash
from graphs import resources
from graphs.context import Context
from tests.conftest import VIDEOS, needs_videos
from tests.servers import http_stub
from tests.test_ingest import model_context
from tools.langchain_tool import MomentRetriever, RetrievalFailed, ToolSettings, make_list_videos_tool

ANSWER = {"simplified": "a man cuts carrots", "detailed": "a man cuts carrots on a board"}


@dataclass
class Held:
    """A held server's address and what it saw: ``release`` lets its answers go."""

    url: str
    release: threading.Event = field(default_factory=threading.Event)
    seen: threading.Event = field(default_factory=threading.Event)
    answered: list[int] = field(default_factory=list)


@contextlib.contextmanager
def _held(hold_s: float) -> Iterator[Held]:
    """An OpenAI-compatible rewriter on loopback that answers once released or after ``hold_s``."""
    held = Held(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            held.seen.set()
            held.release.wait(hold_s)
            held.answered.append(1)
            message = {"role": "assistant", "content": json.dumps(ANSWER)}
            body = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "held",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                }
            ).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    with http_stub(Handler) as base:
        held.url = f"{base}/v1"
        try:
            yield held
        finally:
            held.release.set()  # before the stub stops: its handlers hold answers until then


@pytest.fixture
def held_server() -> Iterator[tuple[str, threading.Event]]:
    """An OpenAI-compatible rewriter on loopback that answers only once ``release`` is set."""
    with _held(60) as held:
        yield held.url, held.release


def _kitchen_store(tmp_path: Path, ctx: Context) -> None:
    caps = tmp_path / "caps.jsonl"
    row = {"vid": "kitchen", "clip_len_s": 2, "captions": ["a man cuts carrots"] * 6}
    caps.write_text(json.dumps(row) + "\n")
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="test")


def test_sync_run_stops_at_the_tool_timeout(tmp_path: Path, held_server: tuple[str, threading.Event]) -> None:
    url, release = held_server
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter=f"openai:{url}#llama", m=1, request_timeout=120)
    _kitchen_store(tmp_path, ctx)
    core = MomentRetriever(ToolSettings(context=ctx, roots=(), url_allowlist=(), timeout_s=1.0))
    outcome: dict[str, BaseException | object] = {}

    def call() -> None:
        try:
            outcome["result"] = core.run("kitchen", "a man cuts carrots")
        except BaseException as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(60)  # a hang guard only; without the timeout the call waits for the held server
    release.set()
    caller.join(120)
    assert isinstance(outcome.get("error"), RetrievalFailed), outcome
    assert "took longer than 1 s" in str(outcome["error"])


@pytest.mark.parametrize("how", ["sync timeout", "async timeout", "async cancel"])
def test_a_call_that_stops_waiting_stops_its_model_requests(tmp_path: Path, how: str) -> None:
    """A timed-out or cancelled call's nodes stop waiting on the hung server with it.

    Before, they waited ``request_timeout`` × attempts in the caller's worker threads (the
    event loop's default executor, for async callers): a few calls on a hung rewriter filled it,
    and every later call in the process, on any server, queued behind them.  Here the workers
    are joined before the server answers anything: they can only finish if the request was
    abandoned (the server holds each request 20 s, then answers: a run still waiting would
    get that answer first).
    """
    with _held(20) as held:
        ctx = Context(
            store_dir=str(tmp_path / "store"), rewriter=f"openai:{held.url}#llama", m=1, request_timeout=120
        )
        _kitchen_store(tmp_path, ctx)
        core = MomentRetriever(ToolSettings(context=ctx, roots=(), url_allowlist=(), timeout_s=1.0))
        if how == "sync timeout":
            with pytest.raises(RetrievalFailed, match="took longer than 1 s"):
                core.run("kitchen", "a man cuts carrots")
            for worker in [t for t in threading.enumerate() if t.name == "granalign-tool-run"]:
                worker.join()
        else:
            pool = ThreadPoolExecutor(max_workers=8)

            async def call() -> None:
                asyncio.get_running_loop().set_default_executor(pool)
                if how == "async timeout":
                    with pytest.raises(RetrievalFailed, match="took longer than 1 s"):
                        await core.arun("kitchen", "a man cuts carrots")
                    return
                task = asyncio.create_task(core.arun("kitchen", "a man cuts carrots"))
                await asyncio.get_running_loop().run_in_executor(None, held.seen.wait, 60)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(call())
            pool.shutdown(wait=True)  # the graph's node threads ran here
        assert held.seen.is_set()
        assert held.answered == [], "a node was still waiting for the hung server after the call ended"


@needs_videos
def test_a_cancelled_call_stops_the_ingest_it_started_and_frees_its_lock(tmp_path: Path) -> None:
    """The ingest of a new file behind a hung captioner stops with the call that started it.

    Before, it went on batch after batch, each request held for ``request_timeout`` ×
    attempts, holding the video's ingest lock all the while: every later call on that video
    waited behind it.  Now the worker ends without any answer from the server, the lock is
    free at once, and the clips stored so far stay for the next call to resume from.
    """
    video = VIDEOS / "charades_univtg_example.mp4"  # 16 clips: two batches of 8
    with _held(10) as held:
        ctx = model_context(
            tmp_path / "store",
            tmp_path,
            [VIDEOS],
            captioner=f"openai:{held.url}#vlm",
            ingest_batch=8,
            request_timeout=120,
            rewriter="none",
        )
        core = MomentRetriever(ToolSettings(context=ctx, url_allowlist=()))
        pool = ThreadPoolExecutor(max_workers=8)

        async def call() -> None:  # cancelled once the captioner has the first batch
            asyncio.get_running_loop().set_default_executor(pool)
            task = asyncio.create_task(core.arun(str(video), "a person opens a door"))
            await asyncio.get_running_loop().run_in_executor(None, held.seen.wait, 120)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(call())
        pool.shutdown(wait=True)  # the ingest ran in one of these threads
        assert held.seen.is_set()
        assert held.answered == [], "the ingest was still waiting for the hung captioner after the call ended"
        with video_lock(tmp_path / "store" / "locks", content_hash(video), 0):
            pass  # free: a held lock raises at once with timeout 0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback address that accepts connections and never answers (a hung Chroma server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at teardown
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("how", ["sync", "async"])
def test_the_tool_timeout_covers_opening_the_store(
    silent_server: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Before the run starts, the call opens the store: a Chroma server that accepts and never
    answers held it for GRANALIGN_CHROMA_TIMEOUT (120 s by default), past a shorter tool timeout."""
    monkeypatch.setenv("GRANALIGN_CHROMA_TIMEOUT", "8")
    ctx = Context(chroma_url=silent_server, rewriter="none")
    core = MomentRetriever(ToolSettings(context=ctx, roots=(), url_allowlist=(), timeout_s=1.0))
    with pytest.raises(RetrievalFailed, match=r"^retrieval took longer than 1 s$"):
        if how == "sync":
            core.run("kitchen", "a man cuts carrots")
        else:
            asyncio.run(core.arun("kitchen", "a man cuts carrots"))


def test_list_videos_has_the_tool_timeout_too(silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANALIGN_CHROMA_TIMEOUT", "8")
    ctx = Context(chroma_url=silent_server, rewriter="none")
    core = MomentRetriever(ToolSettings(context=ctx, roots=(), url_allowlist=(), timeout_s=1.0))
    reply = make_list_videos_tool(core).invoke(
        {"type": "tool_call", "id": "1", "name": "list_videos", "args": {}}
    )
    assert reply.status == "error"
    assert reply.content == "Error: list_videos took longer than 1 s"
