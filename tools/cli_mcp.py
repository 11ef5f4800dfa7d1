"""CLI command ``granalign mcp``: serve the tools over MCP (stdio or streamable HTTP)."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from granalign.errors import ConfigError
from tools.cli_common import SetOpt, StoreOpt, app, console, make_context, user_errors


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("mcp")
@user_errors
def mcp_cmd(
    transport: Annotated[
        Transport, typer.Option(help="stdio (a client starts this process) or http (streamable HTTP).")
    ] = Transport.stdio,
    host: Annotated[
        str, typer.Option(help="HTTP bind address; loopback unless you mean otherwise.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port (endpoint /mcp).")] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File holding the bearer token HTTP clients must send (default: $GRANALIGN_MCP_TOKEN).",
        ),
    ] = None,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Serve retrieve_moments and list_videos as an MCP server.

    Settings: --store/--set as for retrieve; GRANALIGN_VIDEO_ROOTS, GRANALIGN_URL_ALLOWLIST
    bound what a client may name; GRANALIGN_GRAPH_URL runs the graph on a LangGraph server.
    Over HTTP, clients send "Authorization: Bearer <token>" when a token is configured
    (--token-file or GRANALIGN_MCP_TOKEN); a non-loopback --host requires one.
    """
    from tools.langchain_tool import MomentRetriever, ToolSettings
    from tools.mcp_server import build_server, load_token, serve_http

    token = load_token(token_file) if transport is Transport.http else None
    if transport is Transport.http and token is None and not _is_loopback(host):
        raise ConfigError(
            f"--host {host} is not loopback: set GRANALIGN_MCP_TOKEN or --token-file so only "
            "clients with the token get in"
        )
    base = ToolSettings.from_env()
    settings = ToolSettings(
        graph_url=base.graph_url, graph_id=base.graph_id, context=make_context(store, sets)
    )
    server = build_server(MomentRetriever(settings), host=host, port=port)
    if transport is Transport.stdio:
        server.run("stdio")  # stdout carries the protocol: nothing else may print there
        return
    auth = "bearer token required" if token else "no token: loopback clients only"
    console.print(f"MCP (streamable HTTP) on http://{host}:{port}/mcp ({auth})")
    serve_http(server, token)
