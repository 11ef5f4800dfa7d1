"""Nobody gets in who does not belong: the MCP HTTP server's bearer token, its refusal to listen
beyond loopback without one, and the store client's token for the proxy in front of Chroma.

Real servers on loopback: ``granalign mcp --transport http`` (empty embedded store) and
``chroma run`` behind the token-checking proxy of :func:`tests.servers.token_proxy`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from granalign.errors import ConfigError
from granalign.io.store import Store, chroma_headers
from tests.servers import chroma_server, free_port, server, token_proxy
from tools.demo_data import DEMO
from tools.mcp_server import ENV_TOKEN, load_token

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "t0k3n-for-tests-0123456789abcdef"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_TOKEN, "CHROMA_URL")}
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    return {**env, **offline, **extra}


# -- the token's source ------------------------------------------------------------------------


def test_token_comes_from_the_file_first_then_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")  # a trailing newline, as echo or a mounted secret leaves it
    assert load_token(file, {ENV_TOKEN: "another-token-from-the-env"}) == TOKEN
    assert load_token(None, {ENV_TOKEN: TOKEN}) == TOKEN
    assert load_token(None, {}) is None and load_token(None, {ENV_TOKEN: "  "}) is None


@pytest.mark.parametrize("bad", ["short", "has a space inside it ok", ""])
def test_a_weak_or_malformed_token_is_refused_with_one_line(tmp_path: Path, bad: str) -> None:
    file = tmp_path / "token"
    file.write_text(bad)
    with pytest.raises(ConfigError, match=r"^--token-file .*at least 16 printable characters") as err:
        load_token(file, {})
    assert "\n" not in str(err.value)


def test_a_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--token-file .*missing.*: cannot read it"):
        load_token(tmp_path / "missing", {})


# -- the MCP server ----------------------------------------------------------------------------


def test_non_loopback_bind_without_a_token_exits_with_one_line(tmp_path: Path) -> None:
    cmd = [str(BIN / "granalign"), "mcp", "--transport", "http", "--host", "0.0.0.0"]
    cmd += ["--port", str(free_port())]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=_env(GRANALIGN_STORE=str(tmp_path / "store"), COLUMNS="300"),
    )
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, out
    assert out.splitlines() == [out] and "--host 0.0.0.0 is not loopback" in out and ENV_TOKEN in out


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``granalign mcp --transport http --token-file`` on loopback with an empty store."""
    tmp = tmp_path_factory.mktemp("mcp-auth")
    (tmp / "token").write_text(TOKEN)
    port = free_port()
    cmd = [str(BIN / "granalign"), "mcp", "--transport", "http", "--port", str(port)]
    cmd += ["--token-file", str(tmp / "token")]
    url = f"http://127.0.0.1:{port}"
    env = _env(GRANALIGN_STORE=str(tmp / "store"), GRANALIGN_REWRITER="none")
    with server(cmd, f"{url}/healthz", tmp / "mcp.log", cwd=ROOT, env=env, timeout=180):
        yield url


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", TOKEN])
def test_no_token_or_a_wrong_one_gets_401(mcp_url: str, auth: str | None) -> None:
    headers = {**MCP_HEADERS, **({"Authorization": auth} if auth else {})}
    got = httpx.post(f"{mcp_url}/mcp", json=INIT, headers=headers, timeout=30)
    assert got.status_code == 401 and got.headers["www-authenticate"].startswith("Bearer")
    assert got.json()["error"] == "unauthorized"


def test_healthz_answers_without_a_token(mcp_url: str) -> None:
    got = httpx.get(f"{mcp_url}/healthz", timeout=30)
    assert got.status_code == 200 and got.text == "ok"


def test_the_right_token_gets_a_session_and_tool_results(mcp_url: str) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def call() -> dict[str, object]:
        client = httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        async with (
            client,
            streamable_http_client(f"{mcp_url}/mcp", http_client=client) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            res = await session.call_tool("list_videos", {})
            assert not res.isError, res.content
            assert res.structuredContent is not None
            return res.structuredContent

    assert asyncio.run(call()) == {"videos": [], "total": 0, "truncated": False}


# -- the store client behind an authenticating proxy -------------------------------------------


def test_chroma_header_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert chroma_headers({}) == {}
    assert chroma_headers({"GRANALIGN_CHROMA_TOKEN": "abc"}) == {"Authorization": "Bearer abc"}
    (tmp_path / "t").write_text("fromfile\n")
    env = {
        "GRANALIGN_CHROMA_TOKEN_FILE": str(tmp_path / "t"),
        "GRANALIGN_CHROMA_AUTH_HEADER": "X-Chroma-Token",
    }
    assert chroma_headers(env) == {"X-Chroma-Token": "fromfile"}
    with pytest.raises(ConfigError, match=r"GRANALIGN_CHROMA_AUTH_HEADER='Bad Header' must be a header name"):
        chroma_headers({"GRANALIGN_CHROMA_TOKEN": "abc", "GRANALIGN_CHROMA_AUTH_HEADER": "Bad Header"})


def _import_demo_captions(tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``granalign index --captions`` of the first demo video's captions (a real caption import)."""
    lines = DEMO.captions.read_text().splitlines()
    vid = json.loads(lines[0])["vid"]
    captions = tmp / "captions.jsonl"
    captions.write_text("\n".join(x for x in lines if x.strip() and json.loads(x)["vid"] == vid) + "\n")
    cmd = [str(BIN / "granalign"), "index", "--captions", str(captions), "--source", "demo"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_store_client_reaches_chroma_through_a_token_checking_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "proxy-secret-0123456789"
    with (
        chroma_server(tmp_path) as chroma,
        token_proxy(chroma, "Authorization", f"Bearer {secret}") as proxy,
    ):
        refused = _import_demo_captions(tmp_path, _env(CHROMA_URL=proxy, COLUMNS="300"))
        out = (refused.stdout + refused.stderr).strip()
        assert refused.returncode == 2, out
        assert out.splitlines() == [out] and "refused the store client (HTTP 401, no token)" in out

        done = _import_demo_captions(tmp_path, _env(CHROMA_URL=proxy, GRANALIGN_CHROMA_TOKEN=secret))
        assert done.returncode == 0, done.stdout + done.stderr

        monkeypatch.setenv("GRANALIGN_CHROMA_TOKEN", secret)
        with Store(chroma_url=proxy) as store:  # the header reaches every request, not only the first
            videos = store.list_videos()
            assert len(videos) == 1 and videos[0].complete
            assert store.count(store.captions_collection(videos[0].caption_embedder)) == videos[0].n_clips

        monkeypatch.setenv("GRANALIGN_CHROMA_TOKEN", "wrong-secret")
        refusal = r"refused the store client \(HTTP 401, the Authorization header"
        with pytest.raises(ConfigError, match=refusal):
            Store(chroma_url=proxy)
