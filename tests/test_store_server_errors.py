"""A Chroma server that answers, but not as it should: HTTP errors mid-run (a proxy's 502 while
the server restarts, Chroma's own 500), another service on the port, a server in trouble at
open. Each is one line naming the server (exit 2 in the CLI), never a traceback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from typer.testing import CliRunner

from granalign.io.store import Store, StoreUnavailable
from tests.servers import chroma_server, http_stub
from tools.cli import app

Answer = tuple[int, str, bytes]


def _handler(answer: Callable[[BaseHTTPRequestHandler, bytes], Answer]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, ctype, data = answer(self, body)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    return Handler


class _Proxy:
    """Forwards to a real Chroma server until ``failure`` is set, then answers with it."""

    failure: ClassVar[Answer | None] = None
    upstream: ClassVar[str] = ""

    @classmethod
    def answer(cls, req: BaseHTTPRequestHandler, body: bytes) -> Answer:
        if cls.failure is not None:
            return cls.failure
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}
        got = httpx.request(req.command, cls.upstream + req.path, content=body, headers=headers)
        return got.status_code, got.headers.get("content-type", "application/json"), got.content


FAILURES = {
    "proxy 502": (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "chroma 500": (500, "application/json", b'{"error": "InternalError", "message": "disk I/O error"}'),
    "200, not JSON": (200, "text/html", b"<html><body>Welcome to nginx!</body></html>"),
}


def test_a_chroma_server_answering_http_errors_mid_run_is_one_line_naming_it(tmp_path: Path) -> None:
    with chroma_server(tmp_path) as upstream, http_stub(_handler(_Proxy.answer)) as url:
        _Proxy.upstream, _Proxy.failure = upstream, None
        store = Store(chroma_url=url)
        try:
            assert store.videos(["v"]) == {}
            for name, failure in FAILURES.items():
                _Proxy.failure = failure
                with pytest.raises(StoreUnavailable, match=f"the Chroma server at {url} answered") as info:
                    store.videos(["v"])
                assert "\n" not in str(info.value) and "<" not in str(info.value), name
                with pytest.raises(StoreUnavailable):
                    list(store.collection_names())
            _Proxy.failure = None  # back up: the same store answers again
            assert store.videos(["v"]) == {}
        finally:
            _Proxy.failure = None
            store.close()


def _cli_store_on(url: str) -> Any:
    return CliRunner().invoke(app, ["videos", "list"], env={"CHROMA_URL": url, "COLUMNS": "400"})


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ((404, "text/html", b"<html><body>Error response: 404</body></html>"), "answered HTTP 404 without"),
        ((200, "text/html", b"<html><body>hello</body></html>"), "answered HTTP 200 without"),
        ((503, "text/html", b"<html><body>Service Unavailable</body></html>"), "is unavailable"),
    ],
    ids=["plain http.server", "a web page", "proxy 503"],
)
def test_a_port_that_is_not_a_working_chroma_server_is_named_for_what_it_is(
    answer: Answer, says: str
) -> None:
    with http_stub(_handler(lambda req, body: answer)) as url:
        got = _cli_store_on(url)
    assert got.exit_code == 2, got.output
    assert says in got.output and url in got.output
    assert "not reachable" not in got.output and "<html>" not in got.output


class _HangingProxy:
    """Forwards to a real Chroma server until ``hang`` is set, then holds the request unanswered
    (a stopped or wedged server, a network black hole) until ``release`` is set."""

    upstream: ClassVar[str] = ""
    hang: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()

    @classmethod
    def answer(cls, req: BaseHTTPRequestHandler, body: bytes) -> Answer:
        if cls.hang.is_set():
            cls.release.wait(60)
        return _Proxy.answer(req, body)


def test_a_chroma_server_that_stops_answering_mid_run_is_a_timeout_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANALIGN_CHROMA_TIMEOUT", "1")
    with chroma_server(tmp_path) as upstream, http_stub(_handler(_HangingProxy.answer)) as url:
        _Proxy.upstream, _Proxy.failure = upstream, None
        _HangingProxy.hang.clear()
        _HangingProxy.release.clear()
        store = Store(chroma_url=url)
        try:
            assert store.videos(["v"]) == {}
            _HangingProxy.hang.set()
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match=f"lost the Chroma server at {url}"):
                store.videos(["v"])
            assert time.monotonic() - start < 10
        finally:
            _HangingProxy.hang.clear()
            _HangingProxy.release.set()
            store.close()


def test_a_chroma_server_that_never_answers_at_open_is_a_timeout_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRANALIGN_CHROMA_TIMEOUT", "1")
    release = threading.Event()

    def hang(req: BaseHTTPRequestHandler, body: bytes) -> Answer:
        release.wait(60)
        return 503, "text/plain", b"late"

    with http_stub(_handler(hang)) as url:
        start = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable, match=f"Chroma server at {url} did not answer"):
                Store(chroma_url=url)
        finally:
            release.set()
        assert time.monotonic() - start < 10
