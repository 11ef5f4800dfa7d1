"""One behaviour on every front end: the graph (CLI, library, ``langgraph dev``) and the tools
(LangChain, MCP) clean queries, check video paths and read video roots with the same code, and
a video ingested under other settings is reported the same way everywhere.

The MCP and ``langgraph dev`` halves of the same promise are in ``test_mcp.py`` and
``test_langgraph_dev.py`` (they need their real servers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from granalign.errors import InputError
from granalign.io.store import VideoRecord
from granalign.text import MAX_QUERY_CHARS
from graphs import resources
from graphs.context import Context
from tests.test_tool import DOG_VIDEO, demo_store  # noqa: F401  (fixture)
from tools.langchain_tool import MomentRetriever, ToolSettings, make_list_videos_tool
from tools.safety import VideoArg


def _retriever(ctx: Context, roots: tuple[Path, ...] | None = None) -> MomentRetriever:
    return MomentRetriever(ToolSettings(context=ctx, roots=roots, url_allowlist=()))


def _graph_error(ctx: Context, video: str, query: str = "a dog") -> str:
    from graphs.retrieval import graph

    with pytest.raises(InputError) as err:
        graph.invoke({"video": video, "query": query}, context=ctx)
    return str(err.value)


def _tool_error(ctx: Context, video: str, query: str = "a dog") -> str:
    with pytest.raises(InputError) as err:
        _retriever(ctx).run(video, query, 3)
    return str(err.value)


# -- one query cleaner ------------------------------------------------------------------------


def test_tab_and_newline_separate_words_in_the_graph_and_the_tool(demo_store):  # noqa: F811
    from graphs.retrieval import graph

    store, _ = demo_store
    ctx = Context(store_dir=str(store), top_n=3)
    query = "a black\tdog\nruns with\r\nfriends"
    direct = graph.invoke({"video": DOG_VIDEO, "query": query}, context=ctx)
    tool = _retriever(ctx).run(DOG_VIDEO, query, 3)
    assert direct["query"] == tool.artifact["query"] == "a black dog runs with friends"


def test_the_graph_and_the_tool_share_one_query_limit(demo_store):  # noqa: F811
    store, _ = demo_store
    ctx = Context(store_dir=str(store))
    too_long = "a" * (MAX_QUERY_CHARS + 1)
    expected = f"query is {MAX_QUERY_CHARS + 1} characters long; at most {MAX_QUERY_CHARS} are allowed"
    assert _graph_error(ctx, DOG_VIDEO, too_long) == _tool_error(ctx, DOG_VIDEO, too_long) == expected
    assert _graph_error(ctx, DOG_VIDEO, " \t\u200b") == _tool_error(ctx, DOG_VIDEO, " \t\u200b")


# -- one path validator, one roots parser ------------------------------------------------------


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """root/ with a (fake) video, a sub folder and a link to a file outside the root."""
    base = tmp_path / "root"
    (base / "sub").mkdir(parents=True)
    (base / "clip.mp4").write_bytes(b"\x00" * 64)
    (tmp_path / "outside.mp4").write_bytes(b"\x00" * 64)
    (base / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    return base.resolve()


@pytest.mark.parametrize(
    ("video", "reason"),
    [
        ("../clip.mp4", "'..' is not allowed"),  # stays inside the root, refused all the same
        ("~/clip.mp4", "'~', which is not expanded"),  # HOME is the root: it would stay inside
        ("escape.mp4", "symbolic link that leads outside the allowed video roots"),
        ("sub", "is a directory"),
    ],
)
def test_the_graph_and_the_tool_refuse_the_same_paths_for_the_same_reason(
    demo_store,  # noqa: F811
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    video: str,
    reason: str,
):
    store, _ = demo_store
    monkeypatch.chdir(root / "sub")
    monkeypatch.setenv("HOME", str(root))
    ctx = Context(store_dir=str(store), video_roots=str(root), auto_ingest=False)
    graph_says, tool_says = _graph_error(ctx, video), _tool_error(ctx, video)
    assert reason in graph_says and reason in tool_says, (graph_says, tool_says)
    assert "--set" not in graph_says  # API clients of the graph have no command line


def test_roots_come_from_the_context_setting_for_the_graph_and_the_tool(
    demo_store,  # noqa: F811
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """``video_roots`` (``--set`` on the CLI, context on a server) beats the environment for both."""
    store, _ = demo_store
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("GRANALIGN_VIDEO_ROOTS", str(elsewhere))
    ctx = Context(store_dir=str(store), video_roots=str(root), auto_ingest=False)
    assert resources.video_roots(ctx) == (root,)
    got = _retriever(ctx).prepare("clip.mp4", "a dog", 3)  # relative: looked up under the root
    assert got.video == VideoArg("path", str(root / "clip.mp4"))
    # the graph accepts the same file (it then stops because auto_ingest is off, not at the path)
    assert "not in the store" in _graph_error(ctx, str(root / "clip.mp4"))
    # the environment still applies when the setting is empty
    outside = Context(store_dir=str(store), auto_ingest=False)
    assert "outside the allowed video roots" in _tool_error(outside, str(root / "clip.mp4"))
    assert "outside the allowed video roots" in _graph_error(outside, str(root / "clip.mp4"))


def test_the_tools_own_roots_are_the_roots_the_graph_runs_with(
    demo_store,  # noqa: F811
    root: Path,
    tmp_path: Path,
):
    """``ToolSettings.roots`` and the context's ``video_roots`` differ: a file the tool accepted
    was refused by the graph ("<video root>/clip.mp4 is outside the allowed video roots"); the
    graph now runs with the tool's roots, as a download's run already did."""
    store, _ = demo_store
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ctx = Context(store_dir=str(store), video_roots=str(elsewhere), auto_ingest=False)
    retriever = _retriever(ctx, roots=(root,))
    with pytest.raises(InputError) as err:
        retriever.run("clip.mp4", "a dog", 3)
    said = str(err.value)
    assert "outside the allowed video roots" not in said and "is not indexed" in said, said
    assert "not in the store" in said, said  # the graph read the file: auto_ingest is off
    # the other way round the tool refuses, as before: its roots are the caller's limit
    (elsewhere / "other.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="outside the allowed video roots"):
        retriever.run(str(elsewhere / "other.mp4"), "a dog", 3)


# -- a video ingested under other settings ------------------------------------------------------


@pytest.fixture()
def stale_store(tmp_path: Path) -> tuple[Context, str]:
    """A store holding a video ingested with random-weight CLIP, while the context wants LAION's."""
    ctx = Context(store_dir=str(tmp_path / "store"), video_roots=str(tmp_path))
    video_id = "sha256-0123456789abcdef01234567"
    resources.store_for(ctx).put_video(
        VideoRecord(
            video_id=video_id,
            n_clips=5,
            clip_len_s=ctx.clip_len,
            duration_s=10.0,
            caption_source=resources.captioner_for(ctx).name,
            caption_embedder=resources.embedder_for(ctx).name,
            has_frames=True,
            complete=True,
            path=str(tmp_path / "moved-away.mp4"),
            clip_model="ViT-B-32/random-seed0",
            caption_prompt=resources.agnostic_prompt_hash(ctx),
            ingest_key="ingested-with-other-settings",
        )
    )
    return ctx, video_id


def test_list_videos_says_a_video_was_ingested_with_other_settings(stale_store):
    ctx, video_id = stale_store
    listed = make_list_videos_tool(_retriever(ctx)).invoke(
        {"type": "tool_call", "id": "1", "name": "list_videos", "args": {}}
    )
    (row,) = listed.artifact["videos"]
    assert row["video_id"] == video_id and row["mode"].startswith("full (ingested with other settings")
    assert "ViT-B-32/random-seed0, now ViT-B-32/laion2b_s34b_b79k" in row["mode"]
    assert "re-ingest it" in row["mode"] and row["mode"] in listed.content


@pytest.mark.parametrize("auto_ingest", [True, False])
def test_querying_it_says_which_settings_differ_and_what_to_do(stale_store, auto_ingest: bool):
    ctx, video_id = stale_store
    ctx = ctx.with_overrides(auto_ingest=auto_ingest)
    for said in (_tool_error(ctx, video_id), _graph_error(ctx, video_id)):
        assert f"video {video_id!r} was ingested with other settings" in said, said
        assert "settings clip_model/clip_pretrained" in said and "ViT-B-32/random-seed0" in said
        assert "re-ingest it under the current settings" in said
        assert "--set" not in said and "\n" not in said
    if auto_ingest:  # the re-ingest was tried and failed: the reason is kept
        assert "re-ingesting it failed" in said and "moved-away.mp4" in said
