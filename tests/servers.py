"""Servers for tests on loopback, started and stopped by the test: real processes (Chroma,
langgraph dev) and scripted HTTP stubs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def store_copy(store: Path, dest: Path) -> Path:
    """A copy of an embedded store for a server process (one process per embedded folder).

    This process closes its stores first, so the copy is taken from files no one is writing.
    """
    import shutil

    from granalign.io.store import close_stores

    close_stores()
    shutil.copytree(store, dest, ignore=shutil.ignore_patterns(".granalign.lock*"))
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"server at {url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def server(
    cmd: list[str],
    health_url: str,
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Iterator[None]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        wait_http(health_url, proc, timeout, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def chroma_server(tmp: Path) -> Iterator[str]:
    port = free_port()
    cmd = [
        str(BIN / "chroma"),
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--path",
        str(tmp / "chroma"),
    ]
    url = f"http://127.0.0.1:{port}"
    with server(cmd, f"{url}/api/v2/heartbeat", tmp / "chroma.log"):
        yield url


def dev_config(root: Path, dest: Path) -> Path:
    """``root``'s langgraph.json with its relative paths (graphs, dependencies) made absolute,
    written into ``dest``: a server started in ``dest`` serves the same graphs from there."""
    config = json.loads((root / "langgraph.json").read_text())

    def absolute(spec: str) -> str:
        return str(root / spec) if spec.startswith(".") else spec

    config["dependencies"] = [absolute(d) for d in config.get("dependencies", [])]
    config["graphs"] = {name: absolute(spec) for name, spec in config["graphs"].items()}
    path = dest / "langgraph.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextlib.contextmanager
def langgraph_dev(
    env: dict[str, str], log: Path, *, extra_args: tuple[str, ...] = (), timeout: float = 240
) -> Iterator[str]:
    """``langgraph dev`` on a free loopback port, serving the repo's langgraph.json; yields its URL.

    No browser, no reloader, no analytics; the venv's bin goes first on PATH so the server's
    workers find the same ``granalign`` environment.  ``env`` adds to the current environment.

    Each server runs in a fresh folder of its own beside ``log``: the in-memory runtime keeps
    its threads, runs and store in ``.langgraph_api/`` of its *working directory* (a fixed
    relative path in ``langgraph_runtime_inmem``) and, at start, restarts the runs it finds
    there still running or pending.  Started in the repository, every test module's server
    shared that folder, so one module's unfinished run was restarted inside the next module's
    server.  (The served graphs' default video root, the working directory, is that folder too.)
    """
    root = Path(__file__).resolve().parents[1]
    home = Path(tempfile.mkdtemp(prefix="langgraph-dev-", dir=log.parent))
    port = free_port()
    cmd = [str(BIN / "langgraph"), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--config", str(dev_config(root, home)), *extra_args]
    full_env = {
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        **env,
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}",
    }
    url = f"http://127.0.0.1:{port}"
    with server(cmd, f"{url}/ok", log, cwd=home, env=full_env, timeout=timeout):
        yield url


class _TokenProxy:
    """ASGI reverse proxy that forwards to ``upstream`` only requests carrying ``header: value``.

    The stand-in for a deployment's authenticating proxy in front of ``chroma run`` (Chroma
    1.x's server checks no credentials itself): anything without the header gets 401.
    """

    _HOP = frozenset({b"host", b"connection", b"transfer-encoding", b"content-length", b"keep-alive"})

    def __init__(self, upstream: str, header: str, value: str) -> None:
        self.upstream = upstream
        self.header = header.lower().encode()
        self.value = value.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import hmac

        import httpx
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response

        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        sent = dict(scope["headers"]).get(self.header, b"")
        if not hmac.compare_digest(sent, self.value):
            await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in self._HOP and k != self.header]
        async with httpx.AsyncClient(base_url=self.upstream, timeout=60) as client:
            got = await client.request(
                request.method,
                scope["path"],
                params=scope.get("query_string", b"").decode(),
                headers=headers,
                content=await request.body(),
            )
        keep = {k: v for k, v in got.headers.items() if k.lower().encode() not in self._HOP}
        keep.pop("content-encoding", None)  # httpx already decoded the body
        await Response(got.content, status_code=got.status_code, headers=keep)(scope, receive, send)


@contextlib.contextmanager
def http_stub(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A scripted HTTP server (``handler`` answers) on a free loopback port, in a thread; yields
    ``http://127.0.0.1:PORT``.  For tests that need a misbehaving hub or API server: the real
    ``transformers serve``/``chroma run`` processes cannot be told to fail on cue."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextlib.contextmanager
def token_proxy(upstream: str, header: str, value: str) -> Iterator[str]:
    """A :class:`_TokenProxy` to ``upstream`` on a free loopback port (a thread); yields its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        _TokenProxy(upstream, header, value), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    proxy = uvicorn.Server(config)
    thread = threading.Thread(target=proxy.run, name="token-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not proxy.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"token proxy on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.should_exit = True
        thread.join(timeout=10)
