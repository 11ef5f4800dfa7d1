"""Durable retrieval runs: a failed or killed run resumes by thread id from its SQLite checkpoint.

Faults are injected in the ``propose`` step (after ingest/rewrites/fusion are done): an
exception in-process, and a real ``kill -9`` of a process.  The resumed run must not redo the
finished steps and must equal an uninterrupted run.  Real MiniLM, real Chroma, real SQLite.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

import prompts
from granalign.backends import captioner
from granalign.backends.embedder import make_embedder
from granalign.errors import InputError
from granalign.io.captions_import import import_captions
from granalign.rewrite import Rewrite
from granalign.stages import proposals as retrieval_module  # the propose node's stage
from graphs import durable, resources
from graphs.context import RUN_ONLY_SETTINGS, Context
from graphs.retrieval import graph as plain_graph
from prompts import PromptPair
from tests.conftest import approx_moments
from tests.test_graph import CAPTIONS
from tools.cli import app
from tools.langchain_tool import MomentRetriever, RetrievalFailed, ToolSettings

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a man is chopping vegetables"
INPUT = {"video": "kitchen", "query": QUERY}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("durable")
    caps = path / "caps.jsonl"
    caps.write_text(json.dumps({"vid": "kitchen", "clip_len_s": 2, "captions": CAPTIONS}) + "\n")
    ctx = Context(store_dir=str(path / "store"))
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="test")
    return path / "store"


@pytest.fixture
def ctx(store_dir, tmp_path) -> Context:
    return Context(store_dir=str(store_dir), checkpoint_db=str(tmp_path / "ckpt.sqlite"))


class FailOnce:
    """Replaces propose_windows: raises the first time, then delegates (counts both)."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = retrieval_module.propose_windows

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected fault in propose")
        return self.real(*args, **kwargs)


def _nodes(chunks: list) -> list[str]:
    return [name for mode, chunk in chunks if mode == "updates" for name in chunk]


def _final(ctx: Context, input: dict | None = None, **kw) -> tuple[dict, list[str]]:
    chunks = list(durable.stream_retrieval(ctx, input or INPUT, stream_mode=("updates", "values"), **kw))
    values = [c for m, c in chunks if m == "values"][-1]
    return values, _nodes(chunks)


def test_failed_run_resumes_by_thread_id_without_redoing_finished_steps(ctx, monkeypatch):
    expected = plain_graph.invoke(INPUT, context=ctx)
    monkeypatch.setattr(retrieval_module, "propose_windows", FailOnce())
    with pytest.raises(RuntimeError, match="injected") as info:
        list(durable.stream_retrieval(ctx, INPUT, thread_id="t-1"))
    assert info.value.thread_id == "t-1"  # type: ignore[attr-defined]
    assert any("thread id t-1" in n for n in info.value.__notes__)
    assert durable.pending_run(ctx, "t-1")
    with pytest.raises(InputError, match="t-1' holds an unfinished run for another query"):
        list(durable.stream_retrieval(ctx, {"video": "kitchen", "query": "a red car"}, thread_id="t-1"))
    got, nodes = _final(ctx, thread_id="t-1")
    assert nodes == ["propose", "nms"]  # load_video, rewrite, caption and fuse are not re-run
    assert got["moments"] == expected["moments"] and got["saliency"] == expected["saliency"]
    assert not durable.pending_run(ctx, "t-1")  # a finished thread is deleted
    again, nodes = _final(ctx, thread_id="t-1")  # same id, nothing pending: a fresh run
    assert nodes[0] == "load_video" and again["moments"] == expected["moments"]


def test_a_resume_under_other_answer_settings_is_refused_and_run_only_settings_pass(ctx, monkeypatch):
    """The failed run's finished steps followed its settings: resuming it under other ones would
    answer with a mix neither setting gives, so it is refused, naming what changed, and the run
    stays for a proper resume.  Settings that only bound waiting or bookkeeping do not block it."""
    assert {f.name for f in fields(Context)} >= RUN_ONLY_SETTINGS  # no stale names
    expected = plain_graph.invoke(INPUT, context=ctx)
    monkeypatch.setattr(retrieval_module, "propose_windows", FailOnce())
    with pytest.raises(RuntimeError, match="injected"):
        list(durable.stream_retrieval(ctx, INPUT, thread_id="t-set"))
    changed = ctx.with_overrides(m=2, top_k=ctx.top_k + 1)
    refused = (
        rf"thread_id 't-set' holds an unfinished run made with other settings "
        rf"\(m 3 → 2, top_k {ctx.top_k} → {ctx.top_k + 1}\); use a new thread id"
    )
    with pytest.raises(InputError, match=refused):
        list(durable.stream_retrieval(changed, INPUT, thread_id="t-set"))
    assert durable.pending_run(ctx, "t-set")
    patient = ctx.with_overrides(request_timeout=5.0, concurrency=1, answer_profile="benchmark")
    got, nodes = _final(patient, thread_id="t-set")
    assert nodes == ["propose", "nms"] and got["moments"] == expected["moments"]


def test_a_run_checkpointed_before_a_setting_existed_resumes_at_its_default(ctx, monkeypatch):
    """A run recorded by a version without ``feedback_k`` was refused after an upgrade
    ('feedback_k unrecorded → 3'), and no setting could match 'unrecorded': the run was lost.
    A new setting at its default is what the older version did; another value is a change."""
    expected = plain_graph.invoke(INPUT, context=ctx)
    real = durable._settings_json

    def older(c: Context) -> str:  # what a version without the field recorded
        return json.dumps({k: v for k, v in json.loads(real(c)).items() if k != "feedback_k"})

    monkeypatch.setattr(durable, "_settings_json", older)
    monkeypatch.setattr(retrieval_module, "propose_windows", FailOnce())
    with pytest.raises(RuntimeError, match="injected"):
        list(durable.stream_retrieval(ctx, INPUT, thread_id="t-new"))
    monkeypatch.setattr(durable, "_settings_json", real)
    with pytest.raises(InputError, match=r"other settings \(feedback_k 3 → 0\)"):
        list(durable.stream_retrieval(ctx.with_overrides(feedback_k=0), INPUT, thread_id="t-new"))
    got, nodes = _final(ctx, thread_id="t-new")
    assert nodes == ["propose", "nms"] and got["moments"] == expected["moments"]


class TemplateRewriter:
    """A model rewriter stand-in whose rewrites follow its prompt pair's text, as a model's do."""

    name, pairless = "template-stand-in", False

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        lead = pair.simplify.split()[0]
        return [Rewrite(pair.id, f"{lead} {q}", f"{q} {pair.detail.split()[0]}") for q in queries]


@pytest.fixture
def pair_ctx(ctx, tmp_path, monkeypatch) -> Context:
    """``ctx`` with a model rewriter (the stand-in) and a copy of the prompt-pair folder to edit."""
    folder = tmp_path / "rewrite"
    shutil.copytree(prompts.PROMPT_DIR, folder)
    monkeypatch.setattr(prompts, "PROMPT_DIR", folder)
    real = resources.rewriter_for_spec
    fake = TemplateRewriter()
    monkeypatch.setattr(resources, "rewriter_for_spec", lambda s: fake if s == "local:template" else real(s))
    return ctx.with_overrides(rewriter="local:template", prompt_pairs="core")


def _fail_once(ctx: Context, thread_id: str, monkeypatch) -> None:
    """Run until the injected fault in propose (rewrites, captions and fusion are done)."""
    monkeypatch.setattr(retrieval_module, "propose_windows", FailOnce())
    with pytest.raises(RuntimeError, match="injected"):
        list(durable.stream_retrieval(ctx, INPUT, thread_id=thread_id))
    assert durable.pending_run(ctx, thread_id)


def test_a_resume_after_its_prompt_pair_file_was_edited_is_refused_naming_the_file(pair_ctx, monkeypatch):
    """The settings name the pair (``core``), not its text: a resume after the file was edited
    finished with the old text's rewrites and would count as the new text's answer.  Refused,
    naming the file; the run stays, and resumes once the file is restored."""
    core = prompts.PROMPT_DIR / "core.yaml"
    original = core.read_text(encoding="utf-8")
    edited = original.replace("Shorten the query", "Summarise the query")
    expected = plain_graph.invoke(INPUT, context=pair_ctx)
    _fail_once(pair_ctx, "t-pair", monkeypatch)
    core.write_text(edited, encoding="utf-8")
    assert plain_graph.invoke(INPUT, context=pair_ctx)["variants"] != expected["variants"]  # it matters
    refused = (
        rf"thread_id 't-pair' holds an unfinished run: prompt_pairs file {re.escape(str(core))} changed "
        r"since this run started; start a new run or restore the file$"
    )
    with pytest.raises(InputError, match=refused):
        list(durable.stream_retrieval(pair_ctx, INPUT, thread_id="t-pair"))
    assert durable.pending_run(pair_ctx, "t-pair")
    core.write_text(original, encoding="utf-8")
    got, nodes = _final(pair_ctx, thread_id="t-pair")
    assert nodes == ["propose", "nms"] and got["moments"] == expected["moments"]


def test_a_resume_after_its_rewrite_file_was_edited_or_lost_is_refused(ctx, tmp_path, monkeypatch):
    """``rewriter=file:<path>`` names the paraphrases by path: an edited file is refused like an
    edited pair, and a file that cannot be read is an error of its own (not 'changed')."""
    paras = tmp_path / "paras.jsonl"
    paras.write_text(json.dumps({"query": QUERY, "rephrased_query": ["a man cuts carrots"]}) + "\n")
    file_ctx = ctx.with_overrides(rewriter=f"file:{paras}")
    expected = plain_graph.invoke(INPUT, context=file_ctx)
    _fail_once(file_ctx, "t-file", monkeypatch)
    original = paras.read_text()
    paras.write_text(original.replace("carrots", "onions"))
    with pytest.raises(InputError, match=rf"rewriter file {re.escape(str(paras))} changed since this run"):
        list(durable.stream_retrieval(file_ctx, INPUT, thread_id="t-file"))
    paras.unlink()
    unreadable = rf"its rewriter file {re.escape(str(paras))} cannot be read to check that it is unchanged"
    with pytest.raises(InputError, match=unreadable):
        list(durable.stream_retrieval(file_ctx, INPUT, thread_id="t-file"))
    paras.write_text(original)
    got, nodes = _final(file_ctx, thread_id="t-file")
    assert nodes == ["propose", "nms"] and got["moments"] == expected["moments"]


def test_a_resume_in_a_process_with_another_caption_prompt_is_refused(ctx, monkeypatch):
    """The caption prompts are read once per process: a resume in a process that read an edited
    ``prompts/captions/aware.txt`` would caption the remaining key clips otherwise."""
    _fail_once(ctx, "t-aware", monkeypatch)
    monkeypatch.setattr(captioner, "AWARE_PROMPT", captioner.AWARE_PROMPT + " Name colours too.")
    with pytest.raises(InputError, match=r"aware_captioner file \S+aware\.txt changed since this run"):
        list(durable.stream_retrieval(ctx, INPUT, thread_id="t-aware"))


def test_a_run_checkpointed_without_file_digests_resumes(pair_ctx, monkeypatch):
    """Checkpoints written before file digests were recorded hold none: only what was recorded
    is compared, so such a run resumes as it did before the upgrade."""
    real = durable._run_config

    def older(*args, **kwargs):  # what a version without file digests wrote
        config = real(*args, **kwargs)
        del config["metadata"][durable.FILES_KEY]
        return config

    expected = plain_graph.invoke(INPUT, context=pair_ctx)
    monkeypatch.setattr(durable, "_run_config", older)
    _fail_once(pair_ctx, "t-old", monkeypatch)
    monkeypatch.setattr(durable, "_run_config", real)
    metadata = durable.durable_retrieval_graph(pair_ctx).get_state(durable.thread_config("t-old")).metadata
    assert durable.SETTINGS_KEY in metadata and durable.FILES_KEY not in metadata
    got, nodes = _final(pair_ctx, thread_id="t-old")
    assert nodes == ["propose", "nms"] and got["moments"] == expected["moments"]


def _move_prompts(tmp_path: Path, monkeypatch) -> Path:
    """The prompts package's files reached through another path, as after a reinstall, a new
    venv or a container built elsewhere: same content, another absolute path."""
    moved = tmp_path / "elsewhere" / "prompts"
    shutil.copytree(prompts.TEXT_DIR, moved, ignore=shutil.ignore_patterns("__pycache__", "*.py", "rewrite"))
    shutil.copytree(prompts.PROMPT_DIR, moved / "rewrite")
    monkeypatch.setattr(prompts, "TEXT_DIR", moved)
    monkeypatch.setattr(prompts, "PROMPT_DIR", moved / "rewrite")
    return moved


def test_a_run_resumes_after_the_prompts_package_moved_and_an_edit_there_is_refused(
    pair_ctx, tmp_path, monkeypatch
):
    """The shipped prompts move with the package: a reinstall or a checkout at another path made
    every pending run 'changed' although no text had.  They are recorded by their name in the
    package, so the run resumes; an edited prompt at the new place is still refused."""
    expected = plain_graph.invoke(INPUT, context=pair_ctx)
    _fail_once(pair_ctx, "t-moved", monkeypatch)
    _fail_once(pair_ctx, "t-edited", monkeypatch)
    old_core = prompts.PROMPT_DIR / "core.yaml"
    moved = _move_prompts(tmp_path, monkeypatch)
    assert prompts.text_file("captions/aware") == moved / "captions" / "aware.txt"
    got, nodes = _final(pair_ctx, thread_id="t-moved")
    assert nodes == ["propose", "nms"] and got["moments"] == expected["moments"]
    core = moved / "rewrite" / "core.yaml"
    core.write_text(core.read_text(encoding="utf-8").replace("Shorten the query", "Summarise the query"))
    assert old_core.read_text(encoding="utf-8") != core.read_text(encoding="utf-8")
    refused = rf"prompt_pairs file {re.escape(str(core))} changed since this run started"
    with pytest.raises(InputError, match=refused):
        list(durable.stream_retrieval(pair_ctx, INPUT, thread_id="t-edited"))
    assert durable.pending_run(pair_ctx, "t-edited")


def test_a_rewrite_file_is_recorded_by_its_resolved_path(ctx, tmp_path, monkeypatch):
    """A user's file is the one its setting names: a relative ``file:`` path is recorded
    resolved, so the record says which file it was, not a path whose meaning follows the cwd."""
    from graphs import answer_files

    (tmp_path / "paras.jsonl").write_text(json.dumps({"query": QUERY, "rephrased_query": ["x"]}) + "\n")
    monkeypatch.chdir(tmp_path)
    files = answer_files.answer_files(ctx.with_overrides(rewriter="file:paras.jsonl"))
    recorded = {setting: key for setting, key, _ in json.loads(answer_files.record(files))}
    assert recorded["rewriter"] == str((tmp_path / "paras.jsonl").resolve())
    assert recorded["captioner"] == "prompts:captions/agnostic.txt"


def test_async_run_resumes_through_the_same_file(ctx, monkeypatch):
    expected = plain_graph.invoke(INPUT, context=ctx)
    monkeypatch.setattr(retrieval_module, "propose_windows", FailOnce())

    async def collect(thread_id: str) -> list:
        stream = durable.astream_retrieval(ctx, INPUT, thread_id=thread_id, stream_mode=("updates", "values"))
        return [c async for c in stream]

    with pytest.raises(RuntimeError, match="injected"):
        asyncio.run(collect("t-async"))
    chunks = asyncio.run(collect("t-async"))
    assert _nodes(chunks) == ["propose", "nms"]
    assert [c for m, c in chunks if m == "values"][-1]["moments"] == expected["moments"]


def test_wrong_input_is_final_and_leaves_no_thread(ctx):
    with pytest.raises(InputError) as info:
        list(durable.stream_retrieval(ctx, {"video": "no-such-video", "query": QUERY}, thread_id="t-bad"))
    assert not hasattr(info.value, "thread_id")
    assert not durable.pending_run(ctx, "t-bad")


def test_successful_runs_leave_the_file_empty_unless_kept(ctx, tmp_path):
    _final(ctx)
    saver = durable.checkpointer_for(ctx)
    assert saver is not None and list(saver.list(None)) == []
    kept = ctx.with_overrides(keep_threads=True, checkpoint_db=str(tmp_path / "kept.sqlite"))
    _final(kept, thread_id="t-keep")
    assert durable.checkpointer_for(kept).get_tuple(durable.thread_config("t-keep")) is not None


def test_checkpointer_none_and_memory(ctx):
    for kind in ("none", "memory"):
        got, nodes = _final(ctx.with_overrides(checkpointer=kind))
        assert nodes[0] == "load_video" and got["moments"]


def test_unusable_checkpoint_file_is_a_clear_error(ctx, tmp_path):
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(InputError, match=r"checkpoint_db .*dir\.sqlite"):
        list(durable.stream_retrieval(ctx.with_overrides(checkpoint_db=str(tmp_path / "dir.sqlite")), INPUT))


CRASH = textwrap.dedent(
    """
    import json, os, signal, sys
    from graphs import durable
    from granalign.stages import proposals as retrieval
    from graphs.context import Context

    ctx = Context(store_dir=sys.argv[1], checkpoint_db=sys.argv[2])
    if sys.argv[4] == "crash":
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        retrieval.propose_windows = die
    nodes, values = [], {}
    for mode, chunk in durable.stream_retrieval(
        ctx,
        {"video": "kitchen", "query": sys.argv[5]},
        thread_id=sys.argv[3],
        stream_mode=("updates", "values"),
    ):
        if mode == "updates":
            nodes += list(chunk)
        else:
            values = chunk
    print(json.dumps({"nodes": nodes, "moments": values["moments"]}))
    """
)


def test_kill_9_during_a_run_then_resume_in_a_new_process(ctx, store_dir, tmp_path):
    expected = plain_graph.invoke(INPUT, context=ctx)
    resources.clear_caches(close_stores=True)  # one process per embedded store: the children's turn
    args = [sys.executable, "-c", CRASH, str(store_dir), ctx.checkpoint_db, "t-kill"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    crashed = subprocess.run([*args, "crash", QUERY], cwd=ROOT, env=env, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = subprocess.run([*args, "resume", QUERY], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["nodes"] == ["propose", "nms"]
    assert out["moments"] == approx_moments(expected["moments"])  # another process: tolerance


def test_cli_prints_the_resume_hint_then_resumes(ctx, monkeypatch):
    monkeypatch.setattr(retrieval_module, "propose_windows", FailOnce())
    monkeypatch.setenv("GRANALIGN_CHECKPOINT_DB", ctx.checkpoint_db)
    cmd = ["retrieve", "kitchen", QUERY, "--store", ctx.store_dir, "--json"]
    first = CliRunner().invoke(app, [*cmd, "--thread-id", "cli-1"])
    assert first.exit_code != 0 and "--thread-id cli-1" in first.output
    second = CliRunner().invoke(app, [*cmd, "--thread-id", "cli-1"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout[second.stdout.index("{") :])["moments"]
    bad = CliRunner().invoke(app, [*cmd, "--thread-id", "../x"])
    assert bad.exit_code == 2 and "thread_id" in bad.output


def test_tool_failure_names_the_thread_and_run_resumes_it(ctx, monkeypatch):
    retriever = MomentRetriever(ToolSettings(context=ctx, roots=(), url_allowlist=()))
    monkeypatch.setattr(retrieval_module, "propose_windows", FailOnce())
    with pytest.raises(RetrievalFailed, match=r"resume with thread_id=retrieve-[0-9a-f]+") as info:
        retriever.run("kitchen", QUERY)
    tid = info.value.thread_id  # type: ignore[attr-defined]
    got = retriever.run("kitchen", QUERY, thread_id=tid)
    assert got.artifact["moments"]
    with pytest.raises(InputError, match="thread_id"):
        retriever.run("kitchen", QUERY, thread_id="no spaces allowed")


def test_a_kept_thread_reused_for_another_question_starts_fresh(ctx, tmp_path):
    """keep_threads leaves a finished run's state under its id; a new question under that id is
    a fresh run: the earlier run's rewrites and notes must not join its variants and notes."""
    kept = ctx.with_overrides(keep_threads=True, checkpoint_db=str(tmp_path / "kept.sqlite"))
    other = {"video": "kitchen", "query": "a red car drives away"}
    _final(kept, thread_id="t-reuse")
    got, nodes = _final(kept, thread_id="t-reuse", input=other)
    expected = plain_graph.invoke(other, context=kept)
    assert nodes[0] == "load_video"
    assert got["variants"] == expected["variants"] and got["notes"] == expected["notes"]


def test_a_server_thread_reused_for_another_question_answers_it_alone(ctx):
    """LangGraph Server (Studio) keeps a thread's state between runs and feeds the next run's input
    into it: the earlier run's rewrites, notes and per-run inputs (``duration``, ``qid``) must not
    leak into the next answer on that thread."""
    from langgraph.checkpoint.memory import InMemorySaver

    from graphs.retrieval import build_retrieval_graph

    served = build_retrieval_graph(checkpointer=InMemorySaver())  # as the server compiles it
    config = {"configurable": {"thread_id": "studio-thread"}}
    served.invoke({**INPUT, "duration": 8.0, "qid": 7}, config, context=ctx)
    other = {"video": "kitchen", "query": "a dog sleeps on a sofa"}
    got = served.invoke(other, config, context=ctx)
    expected = plain_graph.invoke(other, context=ctx)
    assert got["saliency"] == expected["saliency"] and got["moments"] == expected["moments"]
    assert got["variants"] == expected["variants"] and got["notes"] == expected["notes"]


class Held:
    """Replaces propose_windows: waits for ``release`` (a slow step), then delegates."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.real = retrieval_module.propose_windows

    def __call__(self, *args, **kwargs):
        self.release.wait(30)
        return self.real(*args, **kwargs)


def test_a_timed_out_call_names_its_thread_and_a_cancelled_one_leaves_none(ctx, monkeypatch):
    """A timeout is a failed run: its checkpoint stays and the error says how to resume it (as
    every other failure does). A cancelled call is the caller's choice: nothing stays behind."""
    import time

    held = Held()
    monkeypatch.setattr(retrieval_module, "propose_windows", held)
    retriever = MomentRetriever(ToolSettings(context=ctx, roots=(), url_allowlist=(), timeout_s=1.0))
    with pytest.raises(RetrievalFailed, match=r"longer than 1 s.*resume with thread_id=retrieve-") as info:
        retriever.run("kitchen", QUERY)
    held.release.set()
    time.sleep(1.0)  # the abandoned worker finishes its step and stops
    tid = info.value.thread_id  # type: ignore[attr-defined]
    assert retriever.run("kitchen", QUERY, thread_id=tid).artifact["moments"]

    held.release.clear()

    async def cancel_mid_run() -> None:
        task = asyncio.create_task(retriever.arun("kitchen", QUERY))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held.release.set()  # the abandoned step finishes (and may still write) before the check

    asyncio.run(cancel_mid_run())
    time.sleep(1.0)
    saver = durable.checkpointer_for(ctx)
    assert saver is not None and list(saver.list(None)) == []
    assert retriever.run("kitchen", QUERY).artifact["moments"]
