"""Errors a calling model reads name no server internals; the server's log keeps them all.

The LangChain tools, the MCP server and the agent hand error text to a model, which may be
steered by untrusted content and may repeat anything to its user.  The library's messages are
written for an operator: "store /srv/.../store is in use by pid 4242 on gpu-07 (granalign index
...)".  A real second process holds the store here (it takes the store's lock and waits), so the
message each front end would have passed on is the one a deployment produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool, ToolException

from agent.graph import build_agent
from granalign.errors import InputError
from granalign.io.locks import StoreBusyError
from graphs.context import Context
from tests.servers import http_stub
from tests.test_agent import _scripted
from tools.langchain_tool import (
    MomentRetriever,
    RetrievalFailed,
    ToolSettings,
    _remote_error,
    granalign_tools,
    make_retrieve_moments_tool,
)
from tools.mcp_server import build_server
from tools.redact import Redactor, paths, server, spec

ROOT = Path(__file__).resolve().parents[1]
MARKER = "--holder-cmdline-marker"
HOLDER = (
    "import sys, time, pathlib\n"
    "from granalign.io.locks import acquire_store_lock\n"
    "acquire_store_lock(pathlib.Path(sys.argv[1]), 0)\n"
    "print('held', flush=True)\n"
    "time.sleep(300)\n"
)


@pytest.fixture
def busy_store(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """An embedded store folder held by another process (pid returned), as a running
    ``granalign index`` would hold it."""
    store = tmp_path / "private-store"
    store.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store), MARKER], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield store, proc.pid
    finally:
        proc.kill()
        proc.wait()


def _settings(store: Path, root: Path | None = None) -> ToolSettings:
    ctx = Context(store_dir=str(store), store_lock_timeout=0.0)
    return ToolSettings(context=ctx, roots=(root,) if root else (), url_allowlist=())


def _internals(store: Path, pid: int) -> list[str]:
    return [str(store), f"pid {pid}", socket.gethostname(), MARKER]


def _assert_clean(text: str, store: Path, pid: int) -> None:
    leaked = [x for x in _internals(store, pid) if x in text]
    assert not leaked, (leaked, text)


def _assert_logged(caplog: pytest.LogCaptureFixture, store: Path, pid: int) -> None:
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(x in logged for x in _internals(store, pid)), logged


# -- the redactor ------------------------------------------------------------------------------


def test_the_redactor_replaces_known_folders_servers_home_and_lock_holders(tmp_path):
    store, root = tmp_path / "store", tmp_path / "videos"
    red = Redactor.of(
        [*paths(store, "<store>"), *paths(root, "<video root>"), *server("http://10.1.2.3:8000/", "<Chroma>")]
    )
    text = (
        f"store {store} is in use by pid 4242 on gpu-07 (python -m tools.cli index (x)); serve it with "
        f"`chroma run --path {store}`; {root}/a.mp4 is damaged; {store}2 stays; "
        f"lost http://10.1.2.3:8000/api and 10.1.2.3:8000; file {Path.home()}/notes.mp4"
    )
    assert red.text(text) == (
        "store <store> is in use by another process; serve it with `chroma run --path <store>`; "
        f"<video root>/a.mp4 is damaged; {store}2 stays; lost <Chroma>/api and <Chroma>; file ~/notes.mp4"
    )


def test_the_redactor_works_where_there_is_no_home_folder(tmp_path, monkeypatch):
    """A container under an arbitrary uid has no HOME and no passwd entry: Path.home() raises,
    and the error meant for the model must still be written."""

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    red = Redactor.of(paths(tmp_path / "store", "<store>"))
    assert red.text(f"store {tmp_path / 'store'} is damaged") == "store <store> is damaged"


def test_the_redactor_leaves_the_callers_own_argument_but_not_a_value_it_merely_overlaps(tmp_path):
    root = tmp_path / "videos"
    red = Redactor.of(paths(root, "<video root>"))
    own = f"{root}/a.mp4"
    assert red.text(f"video {own!r} is empty", keep=[own]) == f"video {own!r} is empty"
    # a model passing "v" must not shield the root from being replaced
    assert red.text(f"video 'v' is not under {root}", keep=["v"]) == "video 'v' is not under <video root>"


def test_a_store_given_as_a_relative_name_is_replaced_as_a_path_not_as_a_word(tmp_path, monkeypatch):
    """``store_dir=store`` (relative, as many deployments set it) hides the word ``store``:
    the busy store's public text and any prose must keep it; the folder in a path must not."""
    monkeypatch.chdir(tmp_path)
    red = Redactor.of(paths("store", "<store>"))
    public = StoreBusyError(Path("store"), "pid 7 on gpu-07 (x)", 0.0).public
    assert public is not None and red.text(public) == public
    assert red.text("store/chroma.sqlite3 is locked; 'store' is busy; a store") == (
        "<store>/chroma.sqlite3 is locked; '<store>' is busy; a store"
    )
    # an absolute folder is a folder only at a path boundary, not inside another path
    red = Redactor.of(paths(tmp_path / "store", "<store>"))
    text = f"/data{tmp_path}/store/x and {tmp_path}/store/x"
    assert red.text(text) == f"/data{tmp_path}/store/x and <store>/x"


def test_every_replica_of_a_captioner_spec_is_replaced():
    """``openai:URL1,URL2#model`` spreads captions over replicas; a failure names one of them."""
    red = Redactor.of(spec("openai:http://10.0.0.1:8000/v1, http://10.0.0.2:8001/v1#qwen", "<captioner>"))
    text = "http://10.0.0.2:8001/v1/chat/completions failed: 10.0.0.2:8001 refused; 10.0.0.1:8000 too"
    assert red.text(text) == "<captioner>/chat/completions failed: <captioner> refused; <captioner> too"


def test_a_server_url_with_credentials_is_replaced_as_clients_write_it():
    """Client libraries name ``host:port`` or the URL without its user:password."""
    red = Redactor.of(server("http://admin:s3cret@chroma.internal:8000/", "<Chroma>"))
    text = (
        "cannot connect to chroma.internal:8000 (http://chroma.internal:8000/api/v2); "
        "http://admin:s3cret@chroma.internal:8000 refused admin:s3cret"
    )
    assert red.text(text) == "cannot connect to <Chroma> (<Chroma>/api/v2); <Chroma> refused <credentials>"


def test_a_hub_id_in_a_model_spec_stays_and_a_model_folder_is_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "qwen").mkdir(parents=True)
    assert spec("local:Qwen/Qwen2.5-VL-7B-Instruct", "<captioner model>") == []  # no secret
    red = Redactor.of(spec("local:models/qwen", "<captioner model>"))
    text = f"cannot load {tmp_path}/models/qwen/config.json"
    assert red.text(text) == "cannot load <captioner model>/config.json"


def test_a_busy_store_error_keeps_the_holder_for_the_operator_and_a_public_text_without_it(tmp_path):
    import pickle

    err = StoreBusyError(tmp_path, "pid 7 on gpu-07 (granalign index x)", 2.0)
    assert str(tmp_path) in str(err) and "pid 7 on gpu-07" in str(err)  # the CLI prints this
    assert err.public == (
        "the video store is in use by another process (waited 2 s) and serves one process at a time; "
        "retry later"
    )
    assert pickle.loads(pickle.dumps(err)).public == err.public  # crosses process pools whole


def test_a_remote_servers_internal_failure_reaches_a_model_as_its_kind_only():
    exc = Exception({"error": "StoreBusyError", "message": "store /srv/s is in use by pid 9 on h (c)"})
    failed = _remote_error(exc)
    assert isinstance(failed, RetrievalFailed) and "/srv/s" in str(failed)  # logged in full
    assert failed.public == "the retrieval server failed (StoreBusyError); retry later"


# -- the front ends ----------------------------------------------------------------------------


def _tool_call(tool: Any, args: dict[str, Any]) -> ToolMessage:
    msg = tool.invoke({"type": "tool_call", "id": "c1", "name": tool.name, "args": args})
    assert isinstance(msg, ToolMessage)
    return msg


def test_langchain_tools_on_a_busy_store_tell_the_model_to_retry_and_log_the_holder(busy_store, caplog):
    store, pid = busy_store
    retrieve, listing = granalign_tools(MomentRetriever(_settings(store)))
    with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
        for tool, args in ((retrieve, {"video": "some_video_1", "query": "a dog"}), (listing, {})):
            msg = _tool_call(tool, args)
            assert msg.status == "error" and "in use by another process" in msg.content, msg.content
            assert "retry later" in msg.content
            _assert_clean(msg.content, store, pid)
    _assert_logged(caplog, store, pid)


def test_the_mcp_server_on_a_busy_store_answers_without_internals_and_logs_them(busy_store, caplog):
    from mcp.shared.memory import create_connected_server_and_client_session

    store, pid = busy_store
    mcp = build_server(MomentRetriever(_settings(store)))

    async def call() -> Any:
        async with create_connected_server_and_client_session(mcp) as session:
            return await session.call_tool("retrieve_moments", {"video": "some_video_1", "query": "a dog"})

    with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
        res = asyncio.run(call())
    text = res.content[0].text
    assert res.isError and "in use by another process" in text, text
    _assert_clean(text, store, pid)
    _assert_logged(caplog, store, pid)


def test_the_mcp_server_replaces_folders_in_an_unforeseen_error(tmp_path, monkeypatch, caplog):
    """Not only the library's errors: FastMCP would answer any exception with its text."""
    from mcp.shared.memory import create_connected_server_and_client_session

    store = tmp_path / "private-store"
    core = MomentRetriever(_settings(store))

    def broken(*_a: object) -> None:
        raise PermissionError(13, "Permission denied", str(store / "chroma.sqlite3"))

    monkeypatch.setattr(core, "list_videos", broken)

    async def call() -> Any:
        async with create_connected_server_and_client_session(build_server(core)) as session:
            return await session.call_tool("list_videos", {})

    with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
        res = asyncio.run(call())
    text = res.content[0].text
    assert res.isError and text == (
        "Error executing tool list_videos: PermissionError: [Errno 13] Permission denied: "
        "'<store>/chroma.sqlite3'"
    )
    assert str(store) in "\n".join(r.getMessage() for r in caplog.records)


def test_the_agent_on_a_busy_store_gives_the_model_no_internals(busy_store, caplog):
    store, pid = busy_store
    args = {"video": "some_video_1", "query": "a dog"}
    model = _scripted(
        AIMessage(content="", tool_calls=[{"id": "m1", "name": "retrieve_moments", "args": args}]),
        AIMessage(content="The store is busy."),
    )
    agent = build_agent(model=model, tools=granalign_tools(MomentRetriever(_settings(store))))
    with caplog.at_level(logging.WARNING):
        out = agent.invoke({"messages": [HumanMessage("when does the dog jump in some_video_1?")]})
    (msg,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert msg.status == "error" and "in use by another process" in msg.text, msg.text
    seen = json.dumps([m.content for m in model.calls[-1]["messages"]])  # all the model was sent
    _assert_clean(seen, store, pid)
    _assert_logged(caplog, store, pid)


def test_the_agent_replaces_internals_in_another_tools_error(tmp_path, monkeypatch, caplog):
    """An MCP or third-party tool may pass the library's operator message on as it is."""
    store = tmp_path / "private-store"
    monkeypatch.setenv("GRANALIGN_STORE", str(store))
    monkeypatch.delenv("CHROMA_URL", raising=False)
    told = f"store {store} is in use by pid 4242 on gpu-07 (granalign index {MARKER}); retry"

    def lookup(video: str) -> str:
        raise ToolException(told)

    tool = StructuredTool.from_function(lookup, name="lookup", description="d", handle_tool_error=True)
    model = _scripted(
        AIMessage(content="", tool_calls=[{"id": "m1", "name": "lookup", "args": {"video": "v1"}}]),
        AIMessage(content="Busy."),
    )
    with caplog.at_level(logging.WARNING, logger="agent.graph"):
        out = build_agent(model=model, tools=[tool]).invoke({"messages": [HumanMessage("hi")]})
    (msg,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert msg.status == "error" and msg.text == "store <store> is in use by another process; retry"
    assert told in "\n".join(r.getMessage() for r in caplog.records)


def test_progress_events_name_an_ingested_file_under_its_roots_stand_in(tmp_path, monkeypatch):
    """An ingest's events carry the file's real path; a caller that passed a relative name sees
    it under ``<video root>``, not the server's folder."""
    import graphs.durable

    root = tmp_path / "private-videos"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"\x00" * 64)

    def stream(_ctx: Any, inputs: dict[str, Any], **_k: Any) -> Iterator[tuple[str, Any]]:
        yield "custom", {"stage": "ingest_start", "video": inputs["video"], "clips": 3}
        yield "values", {"video_id": "a", "query": "q", "moments": [], "saliency": []}

    monkeypatch.setattr(graphs.durable, "stream_retrieval", stream)
    events: list[dict[str, Any]] = []
    core = MomentRetriever(_settings(tmp_path / "store", root))
    core.run("a.mp4", "a dog", on_progress=events.append)
    (event,) = events
    assert event["video"] == f"<video root>{os.sep}a.mp4" and event["clips"] == 3


def _index_on_busy_store(store: Path, roots: Path, folder: Path) -> str:
    """``granalign index FOLDER --jobs 1`` on the held store without waiting for it: the output
    on one line, after checking it failed as a deployment failure does (exit status 2)."""
    from typer.testing import CliRunner

    from tools.cli import app

    env = {
        "GRANALIGN_STORE": str(store),
        "GRANALIGN_VIDEO_ROOTS": str(roots),
        "GRANALIGN_STORE_LOCK_TIMEOUT": "0",
    }
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "1"], env=env)
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_a_folder_index_on_a_store_another_process_holds_stops_at_the_first_video(busy_store, tmp_path):
    """A store folder held elsewhere is the deployment's failure, not a video's: the folder run
    says so once and attempts no further video (each used to wait for the lock and fail alike)."""
    from tests.test_video import make_video

    store, _ = busy_store
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        make_video(folder / name, 1.0)
    flat = _index_on_busy_store(store, tmp_path, folder)
    assert flat.count("error:") == 1 and "failed" not in flat, flat
    assert "2 of 3 videos not attempted" in flat, flat


# -- failures that are not the library's, and a remote server's words ---------------------------


def _corrupt_checkpoint(path: Path) -> None:
    """A checkpoint file whose tables are not the saver's (a file another program wrote, or a
    half-migrated one): it opens, and the first read fails in sqlite."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE checkpoints (x)")
        conn.execute("CREATE TABLE writes (x)")
        conn.commit()


def _tool_node_call(tool: Any, args: dict[str, Any], *, run_async: bool = False) -> ToolMessage:
    """``tool`` called by LangGraph's own ToolNode (not our agent), as any LangGraph app would."""
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode([tool]))
    builder.add_edge(START, "tools")
    app = builder.compile()
    call = AIMessage(content="", tool_calls=[{"id": "c1", "name": tool.name, "args": args}])
    state = {"messages": [call]}
    out = asyncio.run(app.ainvoke(state)) if run_async else app.invoke(state)
    out = {"messages": out["messages"][1:]}
    (msg,) = out["messages"]
    assert isinstance(msg, ToolMessage)
    return msg


def _logged_error(caplog: pytest.LogCaptureFixture, tool: str, detail: str) -> None:
    """The operator's log has the failure with its traceback."""
    hits = [r for r in caplog.records if r.getMessage().startswith(f"{tool} failed") and r.exc_info]
    assert hits and detail in hits[0].getMessage(), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
def test_a_corrupt_checkpoint_file_is_a_tool_error_not_an_exception_out_of_a_tool_node(
    tmp_path, caplog, run_async
):
    """Resuming reads the checkpoint file while the arguments are checked; sqlite's error used to
    leave the tool raw and end the ToolNode's run."""
    root = tmp_path / "videos"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"\x00" * 64)
    ck = tmp_path / "private-state" / "checkpoints.sqlite"
    ck.parent.mkdir()
    _corrupt_checkpoint(ck)
    ctx = Context(store_dir=str(tmp_path / "store"), checkpoint_db=str(ck))
    tool = make_retrieve_moments_tool(
        MomentRetriever(ToolSettings(context=ctx, roots=(root,), url_allowlist=()))
    )
    args = {"video": "a.mp4", "query": "a dog", "thread_id": "retrieve-0123"}
    with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
        msg = _tool_node_call(tool, args, run_async=run_async)
    assert msg.status == "error" and msg.content == "Error: OperationalError: no such column: thread_id"
    _logged_error(caplog, "retrieve_moments", "no such column: thread_id")


def test_a_corrupt_chroma_store_is_a_tool_error_for_both_tools(tmp_path, caplog):
    """Opening the store happens while the arguments are checked (is the video an indexed id?);
    chromadb's errors are not the library's and used to leave the tools raw."""
    store = tmp_path / "private-store"
    store.mkdir()
    (store / "chroma.sqlite3").write_bytes(b"not a database " * 512)
    retrieve, listing = granalign_tools(MomentRetriever(_settings(store)))
    with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
        msg = _tool_node_call(retrieve, {"video": "some_video_1", "query": "a dog"})
        assert msg.status == "error" and msg.content == (
            "Error: InternalError: error returned from database: (code: 26) file is not a database"
        )
        _logged_error(caplog, "retrieve_moments", "file is not a database")
        listed = _tool_node_call(listing, {}, run_async=True)
    assert listed.status == "error" and listed.content.startswith("Error: "), listed.content
    assert "\n" not in listed.content and str(store) not in listed.content
    _logged_error(caplog, "list_videos", "")


def test_cancelling_a_tool_call_still_cancels(tmp_path, monkeypatch):
    """The tool turns failures into messages, not a cancellation into one."""
    core = MomentRetriever(_settings(tmp_path / "store"))

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "prepare", interrupted)
    tool = make_retrieve_moments_tool(core)
    with pytest.raises(KeyboardInterrupt):
        _tool_call(tool, {"video": "some_video_1", "query": "a dog"})

    async def slow(*_a: object, **_k: object) -> None:
        await asyncio.sleep(30)

    monkeypatch.setattr(core, "arun", slow)

    async def cancel() -> None:
        task = asyncio.ensure_future(tool.ainvoke({"video": "v_1", "query": "a dog"}))
        await asyncio.sleep(0.05)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancel())


REMOTE_ROOTS = "/srv/remote-videos"
REMOTE_STORE = "/var/lib/granalign/store"


def _remote_server(error: str, message: str, events: list[dict[str, Any]] = ()) -> Any:  # type: ignore[assignment]
    """A LangGraph server stand-in whose runs stream ``events`` and then fail as a real one
    reports a run's error (``event: error``, the exception's type and message)."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            chunks = [("metadata", {"run_id": "r1"}), *(("custom", e) for e in events)]
            chunks.append(("error", {"error": error, "message": message}))
            body = "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in chunks).encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a: object) -> None:
            pass

    return http_stub(Handler)


def _remote_settings(url: str, root: Path) -> ToolSettings:
    return ToolSettings(graph_url=url, roots=(root,), url_allowlist=())


def test_a_remote_servers_refusal_keeps_the_callers_path_and_hides_the_servers(tmp_path, caplog):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"\x00" * 64)
    own = str(root / "a.mp4")
    said = (
        f"video file not found: no file {own!r} inside the allowed video roots {REMOTE_ROOTS}:/mnt/cold "
        f"(store {REMOTE_STORE}, Chroma at http://10.9.8.7:8000)."
    )
    with _remote_server("InputError", said) as url:
        tool = make_retrieve_moments_tool(MomentRetriever(_remote_settings(url, root)))
        with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
            msg = _tool_call(tool, {"video": own, "query": "a dog"})
            amsg = asyncio.run(
                tool.ainvoke(
                    {
                        "type": "tool_call",
                        "id": "c2",
                        "name": tool.name,
                        "args": {"video": own, "query": "a dog"},
                    }
                )
            )
    expected = (
        f"Error: video file not found: no file {own!r} inside the allowed video roots <server path> "
        "(store <server path>, Chroma at <server address>)."
    )
    assert msg.status == "error" and msg.content == expected, msg.content
    assert amsg.content == expected
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert said in logged


def test_a_remote_servers_own_misconfiguration_reaches_a_model_as_its_kind_only(tmp_path, caplog):
    said = f"checkpoint_db '{REMOTE_STORE}/ck.sqlite' cannot be used: disk I/O error"
    with _remote_server("ConfigError", said) as url:
        tool = make_retrieve_moments_tool(MomentRetriever(_remote_settings(url, tmp_path)))
        with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
            msg = _tool_call(tool, {"video": "some_video_1", "query": "a dog"})
    assert msg.status == "error" and msg.content == (
        "Error: the retrieval server refused its own settings (ConfigError), not the arguments; "
        "retrying will not help until its operator fixes them"
    )
    assert said in "\n".join(r.getMessage() for r in caplog.records)


def test_a_remote_servers_progress_events_hide_its_folders(tmp_path):
    event = {"stage": "ingest_start", "video": f"{REMOTE_ROOTS}/a.mp4", "clips": 3}
    with _remote_server("InputError", "no", [event]) as url:
        core = MomentRetriever(_remote_settings(url, tmp_path))
        events: list[dict[str, Any]] = []
        with pytest.raises(InputError):
            core.run("some_video_1", "a dog", on_progress=events.append)
    assert [(e["video"], e["clips"]) for e in events] == [("<server path>", 3)]


def test_the_mcp_server_gives_a_remote_refusal_without_the_servers_folders(tmp_path, caplog):
    from mcp.shared.memory import create_connected_server_and_client_session

    said = f"video 'some_video_1' is not in the store {REMOTE_STORE}; call list_videos"
    with _remote_server("InputError", said) as url:
        mcp = build_server(MomentRetriever(_remote_settings(url, tmp_path)))

        async def call() -> Any:
            async with create_connected_server_and_client_session(mcp) as session:
                return await session.call_tool(
                    "retrieve_moments", {"video": "some_video_1", "query": "a dog"}
                )

        with caplog.at_level(logging.WARNING, logger="tools.langchain_tool"):
            res = asyncio.run(call())
    assert res.isError and res.content[0].text == (
        "Error executing tool retrieve_moments: video 'some_video_1' is not in the store <server path>; "
        "call list_videos"
    )
    assert said in "\n".join(r.getMessage() for r in caplog.records)


def test_the_foreign_scrub_replaces_paths_and_addresses_but_not_words_or_stand_ins(tmp_path):
    red = Redactor.of(paths(tmp_path / "videos", "<video root>"))
    text = (
        f"{tmp_path}/videos/b.mp4 and/or 1/2 of ~/x, C:\\srv\\v; see file:///srv/a and "
        "http://10.0.0.5:8000/docs. Pass '/mine/a.mp4'."
    )
    assert red.text(text, ["/mine/a.mp4"], foreign=True) == (
        "<video root>/b.mp4 and/or 1/2 of <server path>, <server path>; see <server address> and "
        "<server address>. Pass '/mine/a.mp4'."
    )
    assert red.text(text, ["/mine/a.mp4"]).startswith("<video root>/b.mp4 and/or 1/2 of ~/x")


def test_a_folder_index_stopped_by_a_busy_store_after_a_broken_file_reports_both(
    busy_store, tmp_path, monkeypatch
):
    """A file that failed before the store was first opened (an unreadable video fails at probe)
    left a result to show; showing it opened the store again for its location: the same store
    failure again (after another wait of store_lock_timeout), which replaced the folder's error
    and the summary.  The store is tried once, and both are reported."""
    from granalign.io import store as store_module
    from tests.test_video import make_video

    store, _ = busy_store
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a_broken.mp4").write_text("not a video")
    for name in ("b.mp4", "c.mp4"):
        make_video(folder / name, 1.0)
    opened: list[Path] = []
    real = store_module._embedded_client

    def counted(path: Path, lock_timeout: float):
        opened.append(path)
        return real(path, lock_timeout)

    monkeypatch.setattr(store_module, "_embedded_client", counted)
    flat = _index_on_busy_store(store, tmp_path, folder)
    assert flat.count("error:") == 1 and "1 of 3 videos not attempted" in flat, flat
    assert "a_broken.mp4" in flat and "not a video FFmpeg can read" in flat, flat
    assert len(opened) == 1, opened


# -- the agent's ground step: a failed look-up is that failure, not "no such video" --------------


@pytest.mark.parametrize("use_async", [False, True], ids=["invoke", "ainvoke"])
def test_a_busy_store_during_the_ground_look_up_is_said_not_taken_for_no_such_video(busy_store, use_async):
    """Every failure of the ground step's ``list_videos`` look-up read as "not found": with the
    store held by another process (or a Chroma server gone) the model's ungrounded draft went
    out as the answer, as if the video did not exist.  The answer now says the look-up failed
    and why, in the words a model may read (no folder, no lock holder)."""
    store, pid = busy_store
    tools = granalign_tools(MomentRetriever(_settings(store)))
    draft = AIMessage(content="I know no video of that name.")
    question = {"messages": [HumanMessage("When does the dog jump in some_video_1?")]}
    agent = build_agent(model=_scripted(draft), tools=tools)
    out = asyncio.run(agent.ainvoke(question)) if use_async else agent.invoke(question)
    answer = out["messages"][-1].text
    assert answer.startswith("I know no video of that name.")
    assert "looking up the video 'some_video_1' failed" in answer and "in use by another process" in answer
    assert (
        "retry later" in answer
        and out["citations"] == []
        and not [m for m in out["messages"] if isinstance(m, ToolMessage)]
    )
    _assert_clean(answer, store, pid)


def test_a_look_up_that_raises_is_reported_as_that_failure():
    """A third-party ``list_videos`` that raises (a lost server): its error, not "not found"."""

    def broken(contains: str = "", limit: int = 20) -> str:
        raise ConnectionError("lost the connection to the video index\nTraceback ...")

    def retrieve(video: str, query: str) -> str:
        raise AssertionError("never called: the video could not be looked up")

    tools = [
        StructuredTool.from_function(retrieve, name="retrieve_moments", description="r"),
        StructuredTool.from_function(broken, name="list_videos", description="l"),
    ]
    model = _scripted(AIMessage(content="Never heard of it."))
    question = {"messages": [HumanMessage("When does the dog jump in some_video_1?")]}
    out = build_agent(model=model, tools=tools).invoke(question)
    answer = out["messages"][-1].text
    assert answer == (
        "Never heard of it.\n\nNo moments could be retrieved for this answer: looking up the video "
        "'some_video_1' failed. ConnectionError: lost the connection to the video index"
    )
