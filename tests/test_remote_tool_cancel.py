"""A tool call on a served graph (``GRANALIGN_GRAPH_URL``) that times out or is cancelled stops
the server's run, not only its own waiting: a real ``langgraph dev`` whose rewriter hangs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import select
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from graphs.context import Context
from tests.servers import http_stub, langgraph_dev
from tests.test_tool_timeout import _kitchen_store
from tools.langchain_tool import MomentRetriever, RetrievalFailed, ToolSettings

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Hung:
    """A model server that never answers: what it saw, and whether its caller went away."""

    url: str = ""
    seen: threading.Event = field(default_factory=threading.Event)
    dropped: threading.Event = field(default_factory=threading.Event)
    open: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def _hung() -> Iterator[Hung]:
    """An OpenAI-compatible server on loopback that holds every request until its client closes
    the connection (then ``dropped`` is set) or the test ends."""
    hung, done = Hung(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with hung.lock:
                hung.open += 1
            hung.seen.set()
            try:
                while not done.is_set():
                    readable, _, _ = select.select([self.connection], [], [], 0.1)
                    if readable and not self.connection.recv(1, socket.MSG_PEEK):  # EOF: client left
                        hung.dropped.set()
                        return
            finally:
                with hung.lock:
                    hung.open -= 1

    with http_stub(Handler) as base:
        hung.url = f"{base}/v1"
        try:
            yield hung
        finally:
            done.set()  # before the stub stops: its handlers hold requests until then


@pytest.fixture(scope="module")
def served_hung(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Hung]]:
    """``langgraph dev`` over a one-video store, an assistant whose rewriter is the hung server
    (the server's environment names it, so a run may use it), and that server; the server is
    warmed by one tool call on the plain graph (rewriter none), which also checks that a sync
    remote call still answers."""
    from langgraph_sdk import get_sync_client

    tmp = tmp_path_factory.mktemp("remote-cancel")
    _kitchen_store(tmp, Context(store_dir=str(tmp / "store"), rewriter="none"))
    from granalign.io.store import close_stores

    close_stores()  # the server process opens the store
    with _hung() as hung:
        rewriter = f"openai:{hung.url}#llama"
        env = {"GRANALIGN_STORE": str(tmp / "store"), "GRANALIGN_REWRITER": rewriter, "PYTHONPATH": str(ROOT)}
        with langgraph_dev(env, tmp / "langgraph.log", timeout=180) as url:
            plain = MomentRetriever(ToolSettings(graph_url=url, roots=(), url_allowlist=()))
            assert plain.run("kitchen", "a man cuts carrots").artifact["moments"]
            context = {"rewriter": rewriter, "m": 1, "request_timeout": 120}
            assistant = get_sync_client(url=url).assistants.create(graph_id="retrieval", context=context)
            yield url, assistant["assistant_id"], hung


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "granalign-tool-run"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sync timeout", "async timeout", "async cancel"])
def test_a_remote_call_that_stops_waiting_stops_the_servers_run(
    served_hung: tuple[str, str, Hung], how: str
) -> None:
    """Before, the server kept the run (``on_disconnect`` "continue") and its node kept the hung
    model request until ``request_timeout``; a sync call also left its worker thread reading the
    HTTP stream until then.  Now the stream is closed when the call ends, the server cancels the
    run, and the run's model request is dropped: the hung server sees its client go away.
    (10 s leaves the warm server ~10× the time it needs to reach the rewriter; a call that ended
    before the run reached it is made again with a longer timeout.)"""
    url, assistant, hung = served_hung
    for timeout_s in (10, 40, 120):  # a loaded machine may need longer to reach the rewriter
        hung.seen.clear()
        hung.dropped.clear()
        _stop_waiting(url, assistant, how, timeout_s, hung)
        if hung.seen.is_set():
            break
    assert hung.seen.is_set(), "the served run did not reach the rewriter before the call ended"
    assert hung.dropped.wait(60), "the server's run still waited for the hung rewriter after the call ended"
    for worker in _workers():
        worker.join(60)  # a hang guard only: before, the worker read the stream as long as the run went on
    assert not _workers(), "a worker thread still read the server's stream after the call ended"
    with hung.lock:
        assert hung.open == 0


def _stop_waiting(url: str, assistant: str, how: str, timeout_s: int, hung: Hung) -> None:
    """One tool call on the served graph that stops waiting: at ``timeout_s`` or, cancelled,
    once the run has reached the hung rewriter."""
    settings = ToolSettings(
        graph_url=url, graph_id=assistant, roots=(), url_allowlist=(), timeout_s=timeout_s
    )
    core = MomentRetriever(settings)
    if how == "sync timeout":
        with pytest.raises(RetrievalFailed, match=f"took longer than {timeout_s} s"):
            core.run("kitchen", "a man cuts carrots")
    elif how == "async timeout":
        with pytest.raises(RetrievalFailed, match=f"took longer than {timeout_s} s"):
            asyncio.run(core.arun("kitchen", "a man cuts carrots"))
    else:

        async def cancelled() -> None:
            task = asyncio.create_task(core.arun("kitchen", "a man cuts carrots"))
            await asyncio.to_thread(hung.seen.wait, 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancelled())


def _connections_to(port: int) -> set[Any]:
    import psutil

    return {c.laddr for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port}


@pytest.mark.slow
@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
def test_a_remote_call_that_ends_leaves_no_connection_to_the_server_open(
    served_hung: tuple[str, str, Hung], run_async: bool
) -> None:
    """Each call builds its own client for the served graph, and its pooled keep-alive connection
    outlived the call (a sync call's on an event loop closed when the call ended: an "unclosed
    transport" at garbage collection).  The call now closes its client when its stream ends."""
    url, _, _ = served_hung
    port = int(url.rpartition(":")[2])
    core = MomentRetriever(ToolSettings(graph_url=url, roots=(), url_allowlist=()))
    gc.collect()  # what earlier calls left (the fixture's clients) is not this call's
    before = _connections_to(port)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        if run_async:
            result = asyncio.run(core.arun("kitchen", "a man cuts carrots"))
        else:
            result = core.run("kitchen", "a man cuts carrots")
        left = _connections_to(port) - before
        gc.collect()
    assert result.artifact["moments"]
    assert not left, f"connections to the server still open after the call: {left}"
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
