"""The synchronous tool call has the same timeout as the async one (real graph, real MiniLM)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from granalign.backends.embedder import make_embedder
from granalign.io.captions_import import import_captions
from graphs import resources
from graphs.context import Context
from tools.langchain_tool import MomentRetriever, RetrievalFailed, ToolSettings

ANSWER = {"simplified": "a man cuts carrots", "detailed": "a man cuts carrots on a board"}


@pytest.fixture
def held_server() -> Iterator[tuple[str, threading.Event]]:
    """An OpenAI-compatible rewriter on loopback that answers only once ``release`` is set."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            release.wait(60)
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

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", release
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


def test_sync_run_stops_at_the_tool_timeout(tmp_path: Path, held_server: tuple[str, threading.Event]) -> None:
    url, release = held_server
    caps = tmp_path / "caps.jsonl"
    row = {"vid": "kitchen", "clip_len_s": 2, "captions": ["a man cuts carrots"] * 6}
    caps.write_text(json.dumps(row) + "\n")
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter=f"openai:{url}#llama", m=1, request_timeout=120)
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="test")
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
