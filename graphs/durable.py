"""Durable graph runs: a SQLite checkpointer so a failed retrieval resumes by thread id.

A retrieval may die half-way: a model server times out during the rewrites, the process is
killed while a new video is ingested.  Every super-step of a run made here is checkpointed
(with the writes of the parallel rewrite tasks that did finish) before the next one starts
(``durability="sync"``: LangGraph's default writes in the background, which a ``kill -9``
can outrun), so re-running the same
``thread_id`` with no input continues from the last step instead of starting over.  A run that
succeeds deletes its thread (``keep_threads`` keeps it for inspection), so the file holds
failed runs only and does not grow with traffic.

The graphs in ``langgraph.json`` are compiled without a checkpointer: LangGraph Server
(``langgraph dev``, Studio) brings its own persistence.  This module serves the library, the
CLI and the in-process agent tool.

``SqliteSaver`` is sync-only; :class:`ThreadedSqliteSaver` runs its calls in a worker thread
for ``astream`` (the connection is shared across threads behind the saver's lock), so the sync
and async paths use one file and one format.  The file is opened in WAL mode with a busy
timeout so several processes can share it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver

from granalign.errors import BackendError, ConfigError, GranAlignError, InputError
from granalign.text import clean_query
from graphs import answer_files, resources
from graphs.context import Context

_SAVERS: dict[str, BaseCheckpointSaver[Any]] = {}
_GRAPHS: dict[str, Any] = {}
_LOCK = threading.Lock()


class ThreadedSqliteSaver(SqliteSaver):
    """SqliteSaver whose async methods run the sync ones in a thread (same file, same rows)."""

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        rows = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for row in rows:
            yield row

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)


def checkpoint_path(ctx: Context) -> Path:
    """``checkpoint_db``, else ``checkpoints.sqlite`` beside the store (user cache for a server store)."""
    if ctx.checkpoint_db:
        return Path(ctx.checkpoint_db).expanduser()
    return resources.local_state_dir(ctx) / "checkpoints.sqlite"


def _open_sqlite(path: Path) -> ThreadedSqliteSaver:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a killed process (what resume is for), not a power cut; FULL
        # would fsync every step of every run.
        conn.execute("PRAGMA synchronous=NORMAL")
        saver = ThreadedSqliteSaver(conn)
        saver.setup()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"checkpoint_db {str(path)!r} cannot be used: {exc}") from exc
    return saver


def checkpointer_for(ctx: Context) -> BaseCheckpointSaver[Any] | None:
    """One saver per database per process (``checkpointer``: sqlite | memory | none)."""
    if ctx.checkpointer == "none":
        return None
    key = "memory" if ctx.checkpointer == "memory" else str(checkpoint_path(ctx).resolve())
    with _LOCK:
        saver = _SAVERS.get(key)
        if saver is None:
            saver = InMemorySaver() if ctx.checkpointer == "memory" else _open_sqlite(Path(key))
            _SAVERS[key] = saver
        return saver


def durable_retrieval_graph(ctx: Context) -> Any:
    """The retrieval graph compiled with the run's checkpointer (cached per database)."""
    from graphs.retrieval import build_retrieval_graph

    saver = checkpointer_for(ctx)
    key = "none" if saver is None else str(id(saver))
    with _LOCK:
        graph = _GRAPHS.get(key)
        if graph is None:
            graph = build_retrieval_graph(checkpointer=saver)
            _GRAPHS[key] = graph
        return graph


def new_thread_id() -> str:
    return f"retrieve-{uuid.uuid4().hex}"


def thread_config(thread_id: str, base: RunnableConfig | None = None) -> RunnableConfig:
    config: RunnableConfig = dict(base or {})  # type: ignore[assignment]
    config["configurable"] = {**config.get("configurable", {}), "thread_id": thread_id}
    return config


def pending_run(ctx: Context, thread_id: str) -> bool:
    """True when ``thread_id`` holds an unfinished run of this database (so resume it)."""
    graph = durable_retrieval_graph(ctx)
    if checkpointer_for(ctx) is None:
        return False
    snapshot = graph.get_state(thread_config(thread_id))
    return bool(snapshot.next)


def finish_thread(ctx: Context, thread_id: str) -> None:
    """Forget a finished run (kept when ``keep_threads``), so the file holds failed runs only."""
    saver = checkpointer_for(ctx)
    if saver is not None and not ctx.keep_threads:
        saver.delete_thread(thread_id)


def _durability(ctx: Context) -> dict[str, Any]:
    # LangGraph rejects "sync" without a checkpointer; there is nothing to write then anyway.
    return {"durability": "sync"} if checkpointer_for(ctx) is not None else {}


def _start(ctx: Context, graph_input: dict[str, Any], thread_id: str | None) -> tuple[str, Any, str]:
    """(thread id, input, :data:`FILES_KEY` record): ``None`` input resumes the thread's
    unfinished run.

    The unfinished run must be for the same video and query, made with the same answer settings
    (:meth:`Context.answer_settings`) and the same content of the files they name
    (:mod:`graphs.answer_files`: prompt pairs, a rewrite file, caption prompts): a reused id
    must not silently answer an older question, nor finish a run whose done steps (rewrites,
    key clips, fused curves) followed other settings or prompts than its remaining ones: that
    answer is neither the old settings' nor the new ones'.  A mismatch is refused rather than
    started afresh: reusing a failed run's id asks to continue it, so quietly redoing its work
    (or ignoring that a setting, variable or file changed) would hide the mistake.  A finished
    run kept under the id is replaced by the new one.  The files are hashed here, once, for
    both the check and the new checkpoints' record.
    """
    files = answer_files.answer_files(ctx)
    recorded = answer_files.record(files)
    tid = thread_id or new_thread_id()
    if thread_id is None:
        return tid, graph_input, recorded
    if not pending_run(ctx, thread_id):
        _drop_finished(ctx, thread_id)
        return tid, graph_input, recorded
    snapshot = durable_retrieval_graph(ctx).get_state(thread_config(thread_id))
    _check_same_input(thread_id, snapshot.values, graph_input)
    _check_same_settings(thread_id, snapshot.metadata, ctx)
    answer_files.check_unchanged(thread_id, (snapshot.metadata or {}).get(FILES_KEY), files)
    return tid, None, recorded


def _drop_finished(ctx: Context, thread_id: str) -> None:
    """Delete a finished run kept under ``thread_id`` (keep_threads): a new run there would add
    its rewrites and notes to the old run's (their channels accumulate), so it starts fresh."""
    saver = checkpointer_for(ctx)
    if saver is not None and saver.get_tuple(thread_config(thread_id)) is not None:
        saver.delete_thread(thread_id)


def _check_same_input(thread_id: str, saved: dict[str, Any], graph_input: dict[str, Any]) -> None:
    for key in ("video", "query"):
        # load_video stores the cleaned query: compare cleaned with cleaned
        if key in graph_input and _same_input(key, saved.get(key), graph_input[key]) is False:
            raise InputError(
                f"thread_id {thread_id!r} holds an unfinished run for another {key} "
                f"({saved.get(key)!r}); use a new thread id or resume with the same {key}"
            )


def _same_input(key: str, saved: Any, given: Any) -> bool | None:
    """Whether a pending run's ``video``/``query`` equals the new input's (None: nothing saved)."""
    if saved is None:
        return None
    if key == "query":
        try:
            return bool(clean_query(saved) == clean_query(given))
        except InputError:
            pass
    return bool(saved == given)


SETTINGS_KEY = "granalign_settings"
"""Checkpoint metadata key of a run's answer settings (JSON).  LangGraph copies a run config's
``metadata`` into every checkpoint it writes, the input checkpoint included, so the settings are
on file before any step can fail, without a state channel that every node would carry."""


FILES_KEY = "granalign_files"
"""Checkpoint metadata key of the digests of the files the run's answers depend on
(:func:`graphs.answer_files.record`), written beside :data:`SETTINGS_KEY` the same way."""


def _settings_json(ctx: Context) -> str:
    return json.dumps(ctx.answer_settings())


def _check_same_settings(thread_id: str, metadata: Mapping[str, Any] | None, ctx: Context) -> None:
    changed = _settings_change((metadata or {}).get(SETTINGS_KEY), ctx)
    if changed:
        raise InputError(
            f"thread_id {thread_id!r} holds an unfinished run made with other settings ({changed}); "
            "use a new thread id or resume with the same settings"
        )


def _settings_change(saved: Any, ctx: Context) -> str:
    """``top_k 10 → 5, rewriter 'none' → 'local:smollm2'`` ('' when equal, or when a run
    checkpointed by an older version recorded none: it resumes as it did then).  A setting
    added since the run was checkpointed counts as unchanged at its default: the older version
    had no other value, and no resume could ever match an unrecorded one."""
    if not isinstance(saved, str):
        return ""
    now = json.loads(_settings_json(ctx))  # the same JSON round trip as the saved side
    then = json.loads(_settings_json(Context())) | json.loads(saved)

    def shown(values: dict[str, Any], name: str) -> str:
        return repr(values[name]) if name in values else "unrecorded"

    names = [*now, *(name for name in then if name not in now)]
    return ", ".join(
        f"{name} {shown(then, name)} → {shown(now, name)}"
        for name in names
        if name not in then or name not in now or then[name] != now[name]
    )


def _mark(exc: BaseException, ctx: Context, tid: str) -> None:
    """Offer the resume for failures a retry can fix; wrong input is final (its thread goes)."""
    if isinstance(exc, GranAlignError) and not isinstance(exc, BackendError):
        finish_thread(ctx, tid)
    elif checkpointer_for(ctx) is not None:
        exc.thread_id = tid  # type: ignore[attr-defined]
        exc.add_note(f"resume this run with thread id {tid}")


class StreamOptions(TypedDict, total=False):
    """Keyword options of :func:`stream_retrieval` and :func:`astream_retrieval`.

    ``thread_id``: the run's checkpoint thread (default: a new one); an unfinished run under it
    is resumed.  ``config``: a base RunnableConfig (callbacks, tags).  ``stream_mode``: LangGraph
    stream modes (default ``("custom", "values")``).  ``on_start``: gets the run's thread id
    before the graph does any work: a run stopped by ``kill -9``, Ctrl-C or a lost terminal
    raises nothing, so that is the caller's only chance to learn the id it resumes by.
    """

    thread_id: str | None
    config: RunnableConfig | None
    stream_mode: Sequence[str]
    on_start: Callable[[str], None] | None


def _stream_call(ctx: Context, tid: str, files: str, options: StreamOptions) -> tuple[Any, dict[str, Any]]:
    """Tell ``on_start`` the thread id; the checkpointed graph and the arguments of its
    ``stream``/``astream`` (input aside)."""
    on_start = options.get("on_start")
    if on_start is not None:
        on_start(tid)
    kwargs = {
        "context": ctx,
        "stream_mode": list(options.get("stream_mode", ("custom", "values"))),
        **_durability(ctx),
    }
    config = _run_config(ctx, tid, options.get("config"), files)
    return durable_retrieval_graph(ctx), {"config": config, **kwargs}


def _run_config(ctx: Context, tid: str, base: RunnableConfig | None, files: str) -> RunnableConfig:
    """The thread's config, with the run's answer settings and file digests for its
    checkpoints (:data:`SETTINGS_KEY`, :data:`FILES_KEY`)."""
    config = thread_config(tid, base)
    marks = {SETTINGS_KEY: _settings_json(ctx), FILES_KEY: files}
    config["metadata"] = {**config.get("metadata", {}), **marks}
    return config


def stream_retrieval(
    ctx: Context, graph_input: dict[str, Any], **options: Unpack[StreamOptions]
) -> Iterator[tuple[str, Any]]:
    """Stream a checkpointed retrieval; an unfinished run under ``thread_id`` is resumed.

    On failure the exception carries ``thread_id`` (and a note saying it); on success the
    thread is deleted (see :func:`finish_thread`).  Options: :class:`StreamOptions`.
    """
    tid, payload, files = _start(ctx, graph_input, options.get("thread_id"))
    graph, kwargs = _stream_call(ctx, tid, files, options)
    try:
        yield from graph.stream(payload, **kwargs)
    except Exception as exc:
        _mark(exc, ctx, tid)
        raise
    finish_thread(ctx, tid)


async def astream_retrieval(
    ctx: Context, graph_input: dict[str, Any], **options: Unpack[StreamOptions]
) -> AsyncIterator[tuple[str, Any]]:
    """The async twin of :func:`stream_retrieval`: the same steps (same database, same resume
    rule), with the blocking ones (SQLite reads and deletes) in a thread."""
    tid, payload, files = await asyncio.to_thread(_start, ctx, graph_input, options.get("thread_id"))
    graph, kwargs = _stream_call(ctx, tid, files, options)
    try:
        async for part in graph.astream(payload, **kwargs):
            yield part
    except Exception as exc:
        _mark(exc, ctx, tid)
        raise
    await asyncio.to_thread(finish_thread, ctx, tid)
