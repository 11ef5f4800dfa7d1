"""The video-QA agent as LangGraph Server serves it: a run's unknown context keys are refused.

The server drops context keys its graph's schema does not name, so ``{"max_tool_calls": 2,
"max_tool_cals": 9}`` would run with the default; like the retrieval and ingest graphs
(``graphs.served``), the agent's factory refuses them with the same message, naming the agent's
own settings.

It also refuses a run that would send the server's credentials elsewhere: ``api_key_env`` names
the variable whose value goes out as the API key (``GRANALIGN_MCP_TOKEN`` or any other secret
would do), and ``model`` the host it goes to, so a run may pick another model on the server's
own endpoint but neither another key variable nor another host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.context import AgentContext
from granalign.errors import ConfigError
from granalign.specs import parse_spec
from graphs.served import checked, fixed_by_server

if TYPE_CHECKING:
    from langgraph_sdk.runtime import ServerRuntime

__all__ = ["agent", "check_agent_keys"]

_FIXED = ("api_key_env",)
"""Agent settings a run may not change (only to the server's own value): left out of the
settings an unknown key's message offers.  ``model`` stays offered: a run may pick another model
on the server's endpoint."""


def agent(runtime: ServerRuntime[AgentContext]) -> Any:
    """The agent graph for one server call; refuses unknown context keys of a run."""
    from agent.graph import graph

    checked(runtime, AgentContext, fixed=_FIXED)
    run = runtime.execution_runtime
    if run is not None:
        check_agent_keys(run.context)
    return graph


def check_agent_keys(context: object) -> None:
    """Refuse a served run whose ``api_key_env`` or ``model`` host differs from the server's."""
    if not isinstance(context, Mapping):
        return
    server = AgentContext()
    changed = []
    if context.get("api_key_env", server.api_key_env) != server.api_key_env:
        changed.append("api_key_env")
    model = context.get("model")
    if isinstance(model, str) and model.strip():
        try:
            target = parse_spec(model, role="agent model", allowed=("openai",)).target
        except ConfigError:
            target = None  # AgentContext refuses it with its own message
        if target is not None and target != server.model_spec().target:
            changed.append("model")
    if changed:
        raise fixed_by_server(changed)
