"""The graphs as a LangGraph server (``langgraph dev``, a deployment) serves them.

LangGraph Server drops every context key that its graph's context schema does not name before
the graph runs (``langgraph_api.stream``), so a client's typo (``{"nms_iuo": 0.5}``) would run
silently with the default, while the CLI refuses the same setting.  The server calls a graph
*factory* with the run's context as the client sent it, before that filtering; these factories
refuse unknown keys there, in the CLI's words (a ``ConfigError``, which the client receives as
the run's error; the settings it offers are only those a client may set, not
:data:`OPERATOR_ONLY`), and otherwise hand back the compiled graph unchanged.

They also refuse a run whose context moves what the server's environment fixes
(:data:`OPERATOR_ONLY`: the video roots, the store, the locks, the checkpoints, the requests
in flight per model server): an API client
is as untrusted as a tool caller, and ``{"video_roots": "/"}`` would otherwise open every file
to it.  Likewise a backend spec may not name a model server the environment does not
(:data:`ENDPOINT_KEYS`: ``openai:`` requests carry the server's ``$OPENAI_API_KEY``) or a
``file:`` to read, and a model may not be loaded from a server-side path the environment does
not name (:data:`MODEL_KEYS`): loading a folder or checkpoint runs its loader on whatever files
are there, outside the video roots' check.  Model names and hub ids stay a client's choice.

A retrieval or ingest run is also given a :class:`~granalign.backends.openai_llm.CancelScope` for
as long as the server runs it (:func:`retrieval` and :func:`ingest` hand the graph back inside
one): the server cancels
a run by cancelling its task (a client that goes away with ``on_disconnect="cancel"``, as the
tool's remote calls do, or ``runs.cancel``), but the graph's nodes wait on model servers in
worker threads that a cancelled task does not stop; without the scope they kept the hung
request, and an ingest its lock, for ``request_timeout`` × attempts after the run had ended.

``langgraph.json`` points at :func:`retrieval` and :func:`ingest` (and ``agent.served.agent``,
which checks against the agent's own context); in-process callers keep using
``graphs.retrieval.graph`` and ``graphs.ingest.graph``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granalign.backends.openai_llm import cancel_scope
from granalign.errors import ConfigError
from graphs.context import Context

if TYPE_CHECKING:
    from langgraph_sdk.runtime import ServerRuntime

__all__ = [
    "ENDPOINT_KEYS",
    "MODEL_KEYS",
    "OPERATOR_ONLY",
    "check_context_keys",
    "check_operator_keys",
    "checked",
    "fixed_by_server",
    "ingest",
    "retrieval",
]

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


def check_context_keys(context: object, schema: type = Context, fixed: Collection[str] = ()) -> None:
    """Refuse a run context that names a setting ``schema`` (a dataclass) does not have.

    The message lists the settings a client may set: ``fixed`` (the server's environment sets
    them, :data:`OPERATOR_ONLY` for :class:`Context`) are known but left out, since offering them
    would only lead the client to a second refusal."""
    if not isinstance(context, Mapping):
        return
    known = {f.name for f in fields(schema)}
    unknown = {str(k) for k in context if str(k) not in known and not _is_server_key(str(k))}
    if unknown:
        allowed = sorted(known - set(fixed))
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}; allowed: {allowed}")


OPERATOR_ONLY = ("video_roots", "store_dir", "chroma_url", "lock_dir", "checkpoint_db", "concurrency")
"""Settings that decide which files and store a run may touch, and how many requests at once
the model servers get: the server's environment sets them; a client that could change them
would move the video roots (and the path check) anywhere, or send 256 requests at once to a
vLLM server sized for the operator's limit."""


ENDPOINT_KEYS = ("rewriter", "captioner", "aware_captioner")
"""Backend specs that name a server (``openai:<url>``, which gets ``$OPENAI_API_KEY``) or a file
(``file:<path>``): a run may choose among the server's own endpoints, not name another one."""


def _endpoint_moved(value: object, server_value: str, own_urls: set[str]) -> bool:
    """Whether a run's backend spec sends requests (and the server's API key) to a base URL the
    server is not configured with, or reads a file the server was not configured with."""
    if not isinstance(value, str) or value.strip() in ("", server_value):
        return False  # "" is the default; a wrong type is refused by Context with its own message
    engine, _, rest = value.strip().partition(":")
    if engine == "file":
        return True
    return engine == "openai" and rest.partition("#")[0] not in own_urls


def fixed_by_server(changed: list[str]) -> ConfigError:
    return ConfigError(
        f"setting(s) {changed} are fixed by the server's environment (GRANALIGN_*) and cannot "
        "be changed per run"
    )


MODEL_KEYS = ("rewriter", "embedder", "clip_model", "clip_pretrained", "captioner", "aware_captioner")
"""Settings that may load model weights: a ``local:`` target (or ``clip_pretrained``) that is a
path on the server must be the server's own value."""

_MODEL_FILE_SUFFIXES = (".bin", ".ckpt", ".gguf", ".onnx", ".pt", ".pth", ".safetensors")


def _names_a_path(target: str) -> bool:
    """Whether a model target reads as a location on the server's disk rather than a model name
    or hub id (``org/name``, which only looks like a relative path unless it exists here).

    Both readings a loader may make count: the name before ``#`` (the embedder's
    ``local:<model>#onnx-int8``; an empty name there is the server's current folder, as
    ``Path('')`` is) and the whole target (the other loaders do not split it)."""
    whole = target.strip()
    name = whole.partition("#")[0].strip()
    if not whole:
        return False
    if not name:
        return True  # local:#onnx loads the server's current folder
    return any(_reads_as_path(t) for t in {name, whole})


def _reads_as_path(target: str) -> bool:
    if target.startswith(("/", "~", ".", "\\")) or "\\" in target or ":" in target:
        return True
    if target.lower().endswith(_MODEL_FILE_SUFFIXES):
        return True
    try:
        return Path(target).exists()
    except (OSError, ValueError):
        return True


def _model_path_moved(key: str, value: object, server_value: str) -> bool:
    """Whether a run's model setting loads weights from a server-side path the server's own
    setting does not name (a hub id or model name is not a path)."""
    if not isinstance(value, str) or value.strip() in ("", server_value):
        return False
    if key == "clip_pretrained":
        return _names_a_path(value)
    engine, _, target = value.strip().partition(":")
    return engine == "local" and _names_a_path(target)


def check_operator_keys(context: object) -> None:
    """Refuse a served run whose context changes a file-system or store location, points a
    model backend at a server (or file) the server's environment does not name, or loads a
    model from a server-side path it does not name."""
    if not isinstance(context, Mapping):
        return
    server = Context.from_env()
    changed = [k for k in OPERATOR_ONLY if k in context and context[k] not in ("", getattr(server, k))]
    own_urls = {
        spec.partition(":")[2].partition("#")[0]
        for spec in (getattr(server, k) for k in ENDPOINT_KEYS)
        if spec.startswith("openai:")
    }
    changed += [
        k for k in ENDPOINT_KEYS if k in context and _endpoint_moved(context[k], getattr(server, k), own_urls)
    ]
    if changed:
        raise fixed_by_server(sorted(changed))
    # aware_captioner "" is the captioner: naming the server's captioner there is no other model
    own = {k: getattr(server, k) for k in MODEL_KEYS} | {"aware_captioner": server.aware_captioner_spec}
    paths = [k for k in MODEL_KEYS if k in context and _model_path_moved(k, context[k], own[k])]
    if paths:
        raise ConfigError(
            f"setting(s) {paths} name a model file or folder on the server; a run may name a model "
            "or hub id, or the server's own model (set by its environment, GRANALIGN_*)"
        )


def checked(runtime: ServerRuntime[Any], schema: type = Context, fixed: Collection[str] = ()) -> None:
    """Refuse the run's unknown context keys (nothing to check when the server only reads
    schemas or state: then there is no execution runtime).  ``fixed``: ``schema``'s settings a
    client may not change (:data:`OPERATOR_ONLY` when ``schema`` is :class:`Context`)."""
    run = runtime.execution_runtime
    if run is not None:
        check_context_keys(run.context, schema, OPERATOR_ONLY if schema is Context else fixed)
        if schema is Context:
            check_operator_keys(run.context)


def retrieval(runtime: ServerRuntime[Context]) -> Any:
    """The retrieval graph for one server call; refuses unknown context keys of a run.

    A context manager: the server holds it open while the run streams and leaves it when the
    run ends, fails or is cancelled, and leaving it abandons the run's model requests."""
    from graphs.retrieval import graph

    checked(runtime)
    return _scoped(graph)


@contextlib.contextmanager
def _scoped(graph: Any) -> Iterator[Any]:
    """``graph`` while a :func:`cancel_scope` is open: the run's nodes (in threads that copy the
    run task's context) make their model requests in it, and a cancelled run drops them."""
    with cancel_scope():
        yield graph


def ingest(runtime: ServerRuntime[Context]) -> Any:
    """The ingest graph for one server call; refuses unknown context keys of a run.

    Scoped as :func:`retrieval` is: a cancelled ingest drops its model requests and so leaves
    the video's ingest lock, where its ``encode`` thread went on captioning batch after batch."""
    from graphs.ingest import graph

    checked(runtime)
    return _scoped(graph)
