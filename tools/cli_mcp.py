"""CLI command ``granalign mcp``: serve the tools over MCP (stdio or streamable HTTP)."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated

import typer

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
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Serve retrieve_moments and list_videos as an MCP server.

    Settings: --store/--set as for retrieve; GRANALIGN_VIDEO_ROOTS, GRANALIGN_URL_ALLOWLIST
    bound what a client may name; GRANALIGN_GRAPH_URL runs the graph on a LangGraph server.
    """
    from tools.langchain_tool import MomentRetriever, ToolSettings
    from tools.mcp_server import build_server

    base = ToolSettings.from_env()
    settings = ToolSettings(
        graph_url=base.graph_url, graph_id=base.graph_id, context=make_context(store, sets)
    )
    server = build_server(MomentRetriever(settings), host=host, port=port)
    if transport is Transport.stdio:
        server.run("stdio")  # stdout carries the protocol: nothing else may print there
        return
    if not _is_loopback(host):
        console.print(
            f"[yellow]warning:[/] serving MCP on {host} without authentication; "
            "anyone who can reach it can run queries. Put it behind an authenticating proxy."
        )
    console.print(f"MCP (streamable HTTP) on http://{host}:{port}/mcp")
    server.run("streamable-http")
