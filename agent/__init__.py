"""Video-QA chat agent that answers "when does … happen" by calling ``retrieve_moments``.

``agent.graph.graph`` is the compiled agent served by ``langgraph.json``; ``build_agent`` builds
one with another chat model or tools.  Imports are lazy so that ``import agent`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AgentContext", "build_agent"]


def __getattr__(name: str) -> Any:
    if name == "AgentContext":
        from agent.context import AgentContext

        return AgentContext
    if name == "build_agent":
        from agent.graph import build_agent

        return build_agent
    raise AttributeError(name)
