"""The video-QA agent as LangGraph Server serves it: a run's unknown context keys are refused.

The server drops context keys its graph's schema does not name, so ``{"max_tool_calls": 2,
"max_tool_cals": 9}`` would run with the default; like the retrieval and ingest graphs
(``graphs.served``), the agent's factory refuses them with the same message, naming the agent's
own settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.context import AgentContext
from graphs.served import checked

if TYPE_CHECKING:
    from langgraph_sdk.runtime import ServerRuntime

__all__ = ["agent"]


def agent(runtime: ServerRuntime[AgentContext]) -> Any:
    """The agent graph for one server call; refuses unknown context keys of a run."""
    from agent.graph import graph

    checked(runtime, AgentContext)
    return graph
