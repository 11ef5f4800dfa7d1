"""Start real server processes on loopback for tests (Chroma, langgraph dev) and stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


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


@contextlib.contextmanager
def langgraph_dev(
    env: dict[str, str], log: Path, *, extra_args: tuple[str, ...] = (), timeout: float = 240
) -> Iterator[str]:
    """``langgraph dev`` on a free loopback port, serving the repo's langgraph.json; yields its URL.

    No browser, no reloader, no analytics; the venv's bin goes first on PATH so the server's
    workers find the same ``granalign`` environment.  ``env`` adds to the current environment.
    """
    root = Path(__file__).resolve().parents[1]
    port = free_port()
    cmd = [str(BIN / "langgraph"), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *extra_args]
    full_env = {
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        **env,
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}",
    }
    url = f"http://127.0.0.1:{port}"
    with server(cmd, f"{url}/ok", log, cwd=root, env=full_env, timeout=timeout):
        yield url
