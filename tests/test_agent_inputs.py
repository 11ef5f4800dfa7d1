"""Inputs from an agent or an API client: malformed URLs, stored ids of any printable shape,
wrongly typed settings, resuming with the query as typed, and settings a served run may not
change (MiniLM is the only model used)."""

from __future__ import annotations

from pathlib import Path

import pytest

from granalign.errors import ConfigError
from graphs.context import Context
from tools.safety import UnsafeInputError, VideoArg, check_url, parse_video_arg


@pytest.mark.parametrize("url", ["http://[::1/a.mp4", "https://[bad/x", "http://]x/"])
def test_malformed_ipv6_urls_are_a_tool_error_not_a_valueerror(url):
    with pytest.raises(UnsafeInputError, match="malformed"):
        check_url(url, ("v.example.org",))
    with pytest.raises(UnsafeInputError):
        parse_video_arg(url, is_known_id=lambda _: False, roots=(Path.cwd(),), allowlist=())


@pytest.mark.parametrize("vid", ["vidé_ü", "sp ace", "x" * 200])
def test_every_id_list_videos_can_return_is_accepted_back(tmp_path, vid):
    # captions_import accepts any printable, non-path-like vid; list_videos lists it
    got = parse_video_arg(vid, is_known_id={vid}.__contains__, roots=(tmp_path,), allowlist=())
    assert got == VideoArg("id", vid)


@pytest.mark.parametrize(
    "name,value",
    [("auto_ingest", "false"), ("keep_threads", "no"), ("include_original", 0), ("video_roots", 5)],
)
def test_context_refuses_values_of_the_wrong_type(name, value):
    with pytest.raises(ConfigError, match=name):
        Context(**{name: value})


def test_a_string_for_a_boolean_is_named_as_such():
    # "setting auto_ingest='false' must be true or false" read as if 'false' were not false
    with pytest.raises(ConfigError) as err:
        Context(auto_ingest="false")  # type: ignore[arg-type]
    assert str(err.value) == (
        "setting auto_ingest='false' must be a boolean (JSON true or false), not a string"
    )
    from agent.context import AgentContext

    with pytest.raises(ConfigError, match=r"cite_windows='no' must be a boolean .*, not a string"):
        AgentContext(cite_windows="no")  # type: ignore[arg-type]


def test_resume_accepts_the_same_uncleaned_query(tmp_path, monkeypatch):
    import json

    from granalign.backends.embedder import make_embedder
    from granalign.io.captions_import import import_captions
    from granalign.stages import proposals
    from graphs import durable, resources

    caps = tmp_path / "caps.jsonl"
    row = {"vid": "kitchen", "clip_len_s": 2, "captions": ["a man chops onions"] * 3 + ["a dog"] * 5}
    caps.write_text(json.dumps(row) + "\n")
    ctx = Context(store_dir=str(tmp_path / "store"), checkpoint_db=str(tmp_path / "ck.sqlite"))
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="t")
    real, calls = proposals.propose_windows, []

    def fail_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real(*a, **k)

    monkeypatch.setattr(proposals, "propose_windows", fail_once)
    raw = {"video": "kitchen", "query": "a man  chops\tonions "}  # as typed on the CLI
    with pytest.raises(RuntimeError):
        list(durable.stream_retrieval(ctx, raw, thread_id="t-raw"))
    out = [c for m, c in durable.stream_retrieval(ctx, raw, thread_id="t-raw") if m == "values"][-1]
    assert out["query"] == "a man chops onions" and out["moments"]


def test_a_served_run_cannot_move_the_video_roots_or_the_store(monkeypatch, tmp_path):
    from graphs.served import check_operator_keys

    monkeypatch.setenv("GRANALIGN_VIDEO_ROOTS", str(tmp_path))
    check_operator_keys({"top_n": 3, "video_roots": "", "answer_profile": "distinct"})
    check_operator_keys({"video_roots": str(tmp_path)})  # the server's own value: fine
    check_operator_keys({"concurrency": 8})  # the server's own (default) value
    for key, value in [
        ("video_roots", "/"),
        ("store_dir", "/tmp/elsewhere"),
        ("lock_dir", "/etc"),
        ("concurrency", 256),  # every run would add its own 256 requests at once
    ]:
        with pytest.raises(ConfigError, match=key):
            check_operator_keys({key: value})


def _server_run(context: dict) -> object:
    """The runtime LangGraph Server hands a graph factory for a run with this context."""
    from langgraph_sdk.runtime import _ExecutionRuntime

    return _ExecutionRuntime(access_context="threads.create_run", store=None, context=context)


def test_a_served_runs_unknown_setting_lists_only_what_a_client_may_set():
    """The list named the operator's settings too (video_roots, store_dir, ...), each of which
    the same server then refuses: a client offered them only met a second error."""
    from dataclasses import fields

    from agent.context import AgentContext
    from agent.served import agent
    from graphs.served import OPERATOR_ONLY, ingest, retrieval

    client_keys = sorted({f.name for f in fields(Context)} - set(OPERATOR_ONLY))
    for factory in (retrieval, ingest):
        with pytest.raises(ConfigError) as err:
            factory(_server_run({"nms_iuo": 0.5}))
        assert str(err.value) == f"unknown setting(s) ['nms_iuo']; allowed: {client_keys}"
    agent_keys = sorted(f.name for f in fields(AgentContext) if f.name != "api_key_env")
    with pytest.raises(ConfigError) as err:
        agent(_server_run({"max_tool_cals": 9}))
    assert str(err.value) == f"unknown setting(s) ['max_tool_cals']; allowed: {agent_keys}"


def test_a_served_run_cannot_send_the_servers_api_key_to_a_host_it_names(monkeypatch, tmp_path):
    """A model spec names the host that receives ``$OPENAI_API_KEY``; an API client must not pick it
    (nor a ``file:`` the server reads), while the server's own endpoints and ``none`` stay allowed."""
    from graphs.served import check_operator_keys

    monkeypatch.setenv("GRANALIGN_REWRITER", "openai:http://10.0.0.5:8000/v1#llama")
    check_operator_keys({"rewriter": "none", "captioner": "local:Qwen/Qwen2.5-VL-7B-Instruct"})
    check_operator_keys({"rewriter": "openai:http://10.0.0.5:8000/v1#other-model"})  # same server
    for key, value in [
        ("rewriter", "openai:http://attacker.example:9/v1#x"),
        ("captioner", "openai:https://attacker.example/v1#x"),
        ("aware_captioner", "openai:http://attacker.example/v1#x"),
        ("rewriter", "file:/etc/passwd"),
    ]:
        with pytest.raises(ConfigError, match=key):
            check_operator_keys({key: value})


def test_a_served_run_cannot_load_a_model_from_a_server_path_it_does_not_name(monkeypatch, tmp_path):
    """Loading a folder or checkpoint runs its loader on whatever files are there: an API client
    may pick a model name or hub id, or the server's own model path, but no other path."""
    from graphs.served import check_operator_keys

    own = tmp_path / "minilm"
    own.mkdir()
    monkeypatch.setenv("GRANALIGN_EMBEDDER", f"local:{own}")
    monkeypatch.chdir(tmp_path)
    check_operator_keys(
        {
            "embedder": f"local:{own}",  # the server's own: fine
            "rewriter": "local:smollm2",
            "captioner": "local:Qwen/Qwen2.5-VL-7B-Instruct",  # a hub id, not a folder here
            "clip_model": "local:ViT-B-32",
            "clip_pretrained": "laion2b_s34b_b79k",
        }
    )
    check_operator_keys({"embedder": "local:sentence-transformers/all-MiniLM-L6-v2#onnx"})
    for key, value in [
        ("embedder", "local:/srv/other-model"),
        ("embedder", f"local:{own}#onnx-int8"),  # the server's folder, another loader: not its value
        ("rewriter", "local:~/models/llm"),
        ("captioner", "local:../weights"),
        ("aware_captioner", "local:minilm"),  # exists relative to the server's folder
        ("clip_model", "local:C:\\models\\clip"),
        ("clip_pretrained", "/tmp/evil.pt"),
        ("clip_pretrained", "weights.safetensors"),
    ]:
        with pytest.raises(ConfigError, match=rf"\['{key}'\] name a model file or folder"):
            check_operator_keys({key: value})


def test_a_served_run_may_name_the_servers_captioner_as_its_aware_captioner(monkeypatch, tmp_path):
    """An unset aware_captioner is the captioner; naming the server's own captioner folder there
    loads no other model, yet it was refused as a path the server does not name."""
    from graphs.served import check_operator_keys

    monkeypatch.setenv("GRANALIGN_CAPTIONER", f"local:{tmp_path}")
    check_operator_keys({"aware_captioner": f"local:{tmp_path}"})
    with pytest.raises(ConfigError, match="aware_captioner"):
        check_operator_keys({"aware_captioner": f"local:{tmp_path / 'other'}"})


def test_a_served_model_path_hidden_behind_a_hash_is_refused(monkeypatch, tmp_path):
    """The check read only the name before ``#``: ``local:#onnx`` (an empty name) passed, and the
    embedder's loader read ``Path('')``, the server's current folder; the other loaders take the
    whole target, so ``local:qwen#vl`` passed while ``qwen#vl`` is a folder there."""
    from graphs.served import check_operator_keys

    (tmp_path / "qwen#vl").mkdir()
    monkeypatch.chdir(tmp_path)
    check_operator_keys({"embedder": "local:sentence-transformers/all-MiniLM-L6-v2#onnx-int8"})
    for key, value in [
        ("embedder", "local:#onnx"),
        ("embedder", "local: #onnx-int8"),
        ("captioner", "local:qwen#vl"),
        ("clip_pretrained", "qwen#vl"),
    ]:
        with pytest.raises(ConfigError, match=rf"\['{key}'\] name a model file or folder"):
            check_operator_keys({key: value})


def test_a_served_agent_run_cannot_pick_the_key_variable_or_another_model_host(monkeypatch):
    from agent.served import check_agent_keys

    monkeypatch.setenv("GRANALIGN_AGENT_MODEL", "openai:http://127.0.0.1:8000/v1#llama")
    check_agent_keys({"max_tool_calls": 2, "model": "openai:http://127.0.0.1:8000/v1#other"})
    check_agent_keys({"api_key_env": "OPENAI_API_KEY", "model": ""})
    for key, value in [
        ("api_key_env", "GRANALIGN_MCP_TOKEN"),  # any secret of the server, sent as the API key
        ("model", "openai:http://attacker.example/v1#x"),
    ]:
        with pytest.raises(ConfigError, match=key):
            check_agent_keys({key: value})


@pytest.mark.parametrize(
    "name,value",
    [
        ("cite_windows", "false"),
        ("cite_windows", 0),
        ("system_prompt", None),
        ("system_prompt", 5),
        ("api_key_env", None),
        ("api_key_env", 5),
        ("model", None),
    ],
)
def test_agent_context_refuses_values_of_the_wrong_type(name, value):
    """As the retrieval Context does: "false" is not read as true, and a null prompt or key
    variable is one line naming the setting, not a TypeError inside a node."""
    from agent.context import AgentContext

    with pytest.raises(ConfigError, match=f"agent setting {name}="):
        AgentContext(**{name: value})


@pytest.mark.parametrize(
    "question",
    [
        "What's the difference between .mp4 and .mkv files?",
        "Should I export as *.mov or .webm?",
        "Why does my phone save videos/.mp4 files?",
    ],
)
def test_a_question_about_file_formats_names_no_video_to_ground(question):
    """A bare extension is not a video file: the answer is not grounded on a retrieval of
    '.mp4' (which fails and adds 'No moments could be retrieved' to a correct answer)."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import StructuredTool

    from agent.graph import build_agent
    from tests.test_agent import _scripted

    asked: list[str] = []

    def retrieve_moments(video: str, query: str) -> str:
        """Stand-in that records the video it is asked about."""
        asked.append(video)
        return "no moment"

    tool = StructuredTool.from_function(retrieve_moments, name="retrieve_moments")
    model = _scripted(AIMessage(content="MP4 and MKV are containers."))
    out = build_agent(model=model, tools=[tool]).invoke({"messages": [HumanMessage(question)]})
    assert asked == [] and not [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert out["messages"][-1].text == "MP4 and MKV are containers."


def test_a_named_video_file_is_still_grounded():
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.tools import StructuredTool

    from agent.graph import build_agent
    from tests.test_agent import _scripted

    asked: list[str] = []

    def retrieve_moments(video: str, query: str) -> str:
        """Stand-in that records the video it is asked about."""
        asked.append(video)
        return "no moment"

    tool = StructuredTool.from_function(retrieve_moments, name="retrieve_moments")
    model = _scripted(AIMessage(content="At the start."), AIMessage(content="At the start."))
    build_agent(model=model, tools=[tool]).invoke(
        {"messages": [HumanMessage("When does the dog jump in dogs/park_2.mp4?")]}
    )
    assert asked == ["dogs/park_2.mp4"]


@pytest.mark.parametrize("vid", ["clip²", "Café_№5", "ｖｉｄ１"])
def test_the_inputs_video_is_used_as_given_not_normalised(tmp_path, vid):
    """A stored id may hold characters NFKC folds (captions_import accepts any printable name,
    and list_videos hands it out as stored): the agent must retrieve from that id, not from
    'clip2', which no store holds."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from agent.graph import build_agent
    from tests.test_agent import _scripted, kitchen_video_tools

    tools = kitchen_video_tools(tmp_path, vid)
    model = _scripted(AIMessage(content="Probably at the start."), AIMessage(content="Early on."))
    question = {"messages": [HumanMessage("When does the man chop onions?")], "video": vid}
    out = build_agent(model=model, tools=tools).invoke(question)
    (retrieval,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert retrieval.status == "success", retrieval.text
    assert retrieval.artifact["video_id"] == vid and out["citations"][0]["video_id"] == vid
    assert repr(vid) in model.calls[0]["messages"][0].text  # the system prompt names it as stored
