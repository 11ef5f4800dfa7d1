"""The graphs as a LangGraph server (``langgraph dev``, a deployment) serves them.

LangGraph Server drops every context key that its graph's context schema does not name before
the graph runs (``langgraph_api.stream``), so a client's typo (``{"nms_iuo": 0.5}``) would run
silently with the default, while the CLI refuses the same setting.  The server calls a graph
*factory* with the run's context as the client sent it, before that filtering; these factories
refuse unknown keys there, with the CLI's message (a ``ConfigError``, which the client receives
as the run's error), and otherwise hand back the compiled graph unchanged.

``langgraph.json`` points at :func:`retrieval` and :func:`ingest` (and ``agent.served.agent``,
which checks against the agent's own context); in-process callers keep using
``graphs.retrieval.graph`` and ``graphs.ingest.graph``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from granalign.errors import ConfigError
from graphs.context import Context

if TYPE_CHECKING:
    from langgraph_sdk.runtime import ServerRuntime

__all__ = ["check_context_keys", "checked", "ingest", "retrieval"]

_SERVER_KEYS = frozenset(
    {
        "thread_id",
        "checkpoint_id",
        "checkpoint_ns",
        "checkpoint_map",
        "run_id",
        "assistant_id",
        "graph_id",
        "user_id",
        "cron_id",
    }
)
"""Keys LangGraph itself may put in a run's configurable (which doubles as its context)."""


def _is_server_key(key: str) -> bool:
    return key in _SERVER_KEYS or key.startswith(("__", "langgraph_"))


def check_context_keys(context: object, schema: type = Context) -> None:
    """Refuse a run context that names a setting ``schema`` (a dataclass) does not have."""
    if not isinstance(context, Mapping):
        return
    known = {f.name for f in fields(schema)}
    unknown = {str(k) for k in context if str(k) not in known and not _is_server_key(str(k))}
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}; allowed: {sorted(known)}")


def checked(runtime: ServerRuntime[Any], schema: type = Context) -> None:
    """Refuse the run's unknown context keys (nothing to check when the server only reads
    schemas or state: then there is no execution runtime)."""
    run = runtime.execution_runtime
    if run is not None:
        check_context_keys(run.context, schema)


def retrieval(runtime: ServerRuntime[Context]) -> Any:
    """The retrieval graph for one server call; refuses unknown context keys of a run."""
    from graphs.retrieval import graph

    checked(runtime)
    return graph


def ingest(runtime: ServerRuntime[Context]) -> Any:
    """The ingest graph for one server call; refuses unknown context keys of a run."""
    from graphs.ingest import graph

    checked(runtime)
    return graph
