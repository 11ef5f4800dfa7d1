"""A new user's first run of the CLI (issue 10, item 3): every rough edge found, one test each.

Real MiniLM, real Chroma, the shipped QVHighlights subset; the commands run in-process through
Typer's runner.  "No work done" is checked by replacing the function that would do the work
with one that records the call.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from granalign.backends.embedder import make_embedder
from granalign.errors import InputError
from granalign.io.captions_import import import_captions, source_name_for
from granalign.io.jsonl import read_jsonl, write_json, write_jsonl
from granalign.stages import proposals as retrieval_module  # the propose node's stage
from graphs import durable, resources
from graphs.context import Context
from tools import bench, cli_index
from tools.cli import app
from tools.demo_data import DEMO
from tools.langchain_tool import MomentRetriever, ToolSettings

DASH_VID = "-dB_W38mCRM_210.0_360.0"  # a QVHighlights id that looks like an option
PLAIN_VID = "bP5KfdFJzC4_60.0_210.0"
QUERY = "a man and a woman talk across a table"


def _demo_rows(*vids: str) -> list[dict[str, Any]]:
    rows = [r for r in read_jsonl(DEMO.annotations) if r["vid"] in vids]
    assert len(rows) == len(vids)
    return rows


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding two videos of the shipped subset, imported as ``make run`` does."""
    path = tmp_path_factory.mktemp("first_run") / "store"
    ctx = Context(store_dir=str(path))
    import_captions(
        resources.store_for(ctx),
        make_embedder(ctx.embedder),
        DEMO.captions,
        source=source_name_for(DEMO.captions),
        only={DASH_VID, PLAIN_VID},
    )
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


class Recorder:
    """Stands in for the function that would do a command's work: records that it was called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise AssertionError("the command started its work")


# ------------------------------------------------------------------ eval --allow-subset


@pytest.fixture
def subset_submission(tmp_path: Path) -> Path:
    """Two of the subset's 100 queries, answered with their ground-truth windows."""
    rows = _demo_rows(DASH_VID, PLAIN_VID)
    preds = [
        {"qid": r["qid"], "pred_relevant_windows": [[*w, 1.0] for w in r["relevant_windows"]]} for r in rows
    ]
    path = tmp_path / "preds.jsonl"
    write_jsonl(path, preds)
    return path


def test_eval_allow_subset_scores_the_subset(subset_submission: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    args = ("eval", "--submission", str(subset_submission), "--gt", str(DEMO.annotations))
    got = invoke(*args, "--allow-subset", "--out", str(out))
    assert got.exit_code == 0, got.output
    assert json.loads(out.read_text())["brief"]["MR-full-R1@0.5"] == 100.0
    assert "R1@0.5" in got.output and "mIoU" in got.output


def test_eval_without_allow_subset_names_the_flag(subset_submission: Path) -> None:
    got = invoke("eval", "--submission", str(subset_submission), "--gt", str(DEMO.annotations))
    assert got.exit_code == 2
    assert len(error_lines(got.output)) == 1
    line = " ".join(got.output.split())  # it names both files, so it may wrap
    assert "98 ground truth qids missing" in line and "--allow-subset" in line
    assert "allow_subset=True" not in got.output


# ------------------------------------------------------------------ output paths checked first


def _blocked(tmp_path: Path) -> Path:
    """A path whose folder is a regular file: unwritable for every user, root included."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    return blocker / "sub"


WORK = {  # what each command would start with: replaced by a Recorder
    "eval": ("granalign.io.jsonl", "read_jsonl"),
    "bench": ("tools.bench", "run_benchmark"),
    "retrieve": ("graphs.durable", "stream_retrieval"),
    "demo": ("tools.bench", "run_benchmark"),
    "experiment": ("granalign.io.captions_import", "import_captions"),
    "benchmark": ("tools.cli_benchmark", "_suite"),
}


@pytest.mark.parametrize(
    ("case", "option"),
    [
        ("eval", "--out"),
        ("bench", "--out"),
        ("bench", "--metrics"),
        ("bench", "--plot"),
        ("retrieve", "--plot"),
        ("demo", "--out-dir"),
        ("experiment", "--out-dir"),
        ("benchmark", "--out"),
    ],
)
def test_unwritable_output_is_refused_before_any_work(
    case: str, option: str, tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, name = WORK[case]
    recorder = Recorder()
    monkeypatch.setattr(importlib.import_module(module), name, recorder)
    target = str(_blocked(tmp_path) / ("out" if option == "--out-dir" else "out.json"))
    store = ["--store", str(store_dir)]
    data = ["--annotations", str(DEMO.annotations), "--captions", str(DEMO.captions)]
    args = {
        "eval": ["eval", "--submission", "p.jsonl", "--gt", "g.jsonl"],
        "bench": ["bench", *data, *store],
        "retrieve": ["retrieve", PLAIN_VID, QUERY, *store],
        "demo": ["demo", *store],
        "experiment": ["experiment", *data, *store],
        "benchmark": ["benchmark", "--quick"],
    }[case]
    got = invoke(*args, option, target)
    assert got.exit_code == 2, got.output
    [line] = error_lines(got.output)
    assert line.startswith(f"error: {option} {target}") and "is not a folder" in line
    assert "Traceback" not in got.output and recorder.calls == 0


def test_an_output_path_that_is_a_folder_is_refused(tmp_path: Path, store_dir: Path) -> None:
    got = invoke("retrieve", PLAIN_VID, QUERY, "--store", str(store_dir), "--plot", str(tmp_path))
    assert got.exit_code == 2
    assert error_lines(got.output) == [f"error: --plot {tmp_path}: is a folder, expected a file name"]


def test_a_failed_write_is_one_error_naming_the_file(tmp_path: Path) -> None:
    target = _blocked(tmp_path) / "m.json"
    with pytest.raises(InputError, match=r"m\.json: cannot be written"):
        write_json(target, {"a": 1})


# ------------------------------------------------------------------ bench: validate first, save first


def _annotations(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "annotations.jsonl"
    write_jsonl(path, rows)
    return path


def test_bench_refuses_an_off_by_one_highlight_before_the_first_query(
    tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = _demo_rows(PLAIN_VID, DASH_VID)
    clips = int(bad["duration"] / 2)
    bad = {**bad, "relevant_clip_ids": [*bad["relevant_clip_ids"][:-1], clips]}
    path = _annotations(tmp_path, [good, bad])
    recorder = Recorder()
    monkeypatch.setattr(bench, "run_queries", recorder)
    out = tmp_path / "preds.jsonl"
    got = invoke("bench", "--annotations", str(path), "--captions", str(DEMO.captions),
                 "--store", str(store_dir), "--out", str(out))  # fmt: skip
    assert got.exit_code == 2, got.output
    [line] = error_lines(got.output)
    assert f"{path}:2: qid {bad['qid']}" in line and f"= {clips} is not a clip index in [0, {clips})" in line
    assert recorder.calls == 0


def test_bench_refuses_a_repeated_qid(tmp_path: Path) -> None:
    row = _demo_rows(PLAIN_VID)[0]
    path = _annotations(tmp_path, [row, {**row, "vid": DASH_VID}])
    with pytest.raises(InputError, match=rf":2: qid {row['qid']} repeats line 1"):
        bench.read_annotations(path)


def test_bench_writes_the_predictions_before_scoring_them(
    tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _annotations(tmp_path, _demo_rows(PLAIN_VID, DASH_VID))

    def failing_score(*args: Any, **kwargs: Any) -> Any:
        raise InputError("scoring failed")

    monkeypatch.setattr(bench, "evaluate_submission", failing_score)
    out = tmp_path / "preds.jsonl"
    got = invoke("bench", "--annotations", str(path), "--captions", str(DEMO.captions),
                 "--store", str(store_dir), "--out", str(out))  # fmt: skip
    assert got.exit_code == 2 and error_lines(got.output) == ["error: scoring failed"]
    preds = read_jsonl(out)
    assert [p["vid"] for p in preds] == [PLAIN_VID, DASH_VID]
    assert all(p["pred_relevant_windows"] for p in preds)


# ------------------------------------------------------------------ ids that begin with '-'


def test_a_video_id_that_begins_with_a_dash(store_dir: Path) -> None:
    store = ("--store", str(store_dir), "--json")
    for args in (("--video", DASH_VID, QUERY), ("--", DASH_VID, QUERY)):
        got = invoke("retrieve", *store, *args)
        assert got.exit_code == 0, got.output
        assert json.loads(got.stdout[got.stdout.index("{") :])["video_id"] == DASH_VID
    bare = invoke("retrieve", *store, DASH_VID, QUERY)
    assert bare.exit_code == 2
    assert "No such option: -d" in bare.output and "--video" in bare.output and "after '--'" in bare.output
    twice = invoke("retrieve", *store, "--video", DASH_VID, PLAIN_VID, QUERY)
    assert twice.exit_code == 2 and error_lines(twice.output) == [
        "error: give the video once: --video VIDEO QUERY, or VIDEO QUERY"
    ]


# ------------------------------------------------------------------ index <unknown id>


def test_index_of_a_name_that_is_no_file_says_so(
    tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    roots.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside the roots, as a user in their home folder
    env = {"GRANALIGN_VIDEO_ROOTS": str(roots)}
    unknown = invoke("index", "no_such_video_id", "--store", str(store_dir), env=env)
    assert unknown.exit_code == 2
    [line] = error_lines(unknown.output)
    assert "'no_such_video_id' is not a video id in the store nor a video file or folder" in line
    assert "outside" not in line
    known = invoke("index", PLAIN_VID, "--store", str(store_dir), env=env)
    assert known.exit_code == 2
    assert error_lines(known.output) == [
        f"error: {PLAIN_VID!r} is a video id in the store, already indexed: query it with "
        "granalign retrieve (index takes video files and folders)"
    ]
    (elsewhere / "clip.mp4").write_bytes(b"\0" * 16)  # a real file outside the roots keeps that reason
    outside = invoke("index", "clip.mp4", "--store", str(store_dir), env=env)
    assert outside.exit_code == 2 and "roots" in error_lines(outside.output)[0]


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_index_of_an_empty_captions_file_is_an_error(tmp_path: Path, store_dir: Path, text: str) -> None:
    # it printed "0 videos: 0 imported (0 captions)" and exited 0, as if a failed export had
    # been imported; bench and experiment refuse the same file
    empty = tmp_path / "captions.jsonl"
    empty.write_text(text)
    got = invoke("index", "--captions", str(empty), "--store", str(store_dir))
    assert got.exit_code == 2
    assert error_lines(got.output) == [f"error: captions file {empty} is empty: no video to import"]


def test_index_checks_the_captions_file_before_opening_the_store_or_the_embedder(
    tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a missing file loaded the embedder and drew an empty "import" bar before its error
    def must_not_load(ctx: Context) -> None:
        raise AssertionError("opened before the captions file was checked")

    monkeypatch.setattr(resources, "store_for", must_not_load)
    monkeypatch.setattr(resources, "embedder_for", must_not_load)
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "empty.jsonl").write_text("\n")
    expected = {
        "missing.jsonl": "file not found",
        "folder.jsonl": "is a directory, expected a JSONL file",
        "empty.jsonl": "is empty: no video to import",
    }
    for name, reason in expected.items():
        got = invoke("index", "--captions", str(tmp_path / name), "--store", str(store_dir))
        assert got.exit_code == 2, got.output
        assert [line for line in got.output.splitlines() if line.strip()] == error_lines(got.output)
        assert str(tmp_path / name) in got.output and reason in got.output, got.output


# ------------------------------------------------------------------ index summary


def test_the_index_summary_prints_ids_whole_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = StringIO()
    monkeypatch.setattr(cli_index, "out", Console(file=buffer, width=80))
    ids = ["sha256-0123456789abcdef01234567", DASH_VID]
    results = [
        ("/videos/a_very_long_file_name_of_a_match_recorded_on_a_rainy_day_in_june.mp4",
         {"video_id": ids[0], "n_clips": 1800, "skipped": 0, "encoded": 1800}, ""),
        ("/videos/short.mp4", {"video_id": ids[1], "n_clips": 75, "skipped": 75, "encoded": 0}, ""),
        ("/videos/broken.mp4", None, "video '/videos/broken.mp4' has no video stream (an audio-only file?)"),
    ]  # fmt: skip
    cli_index._print_ingest_summary(results, "/a/store/folder/with/a/rather/long/name/to/fill/the/title")
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for vid in ids:
        assert any(vid in line for line in lines), buffer.getvalue()


def test_the_index_summary_tells_apart_videos_of_one_name_in_two_folders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A library of camera folders (cam1/0001.mp4, cam2/0001.mp4): each row and failure line
    names the video's path below the indexed folder, not its file name alone."""
    buffer = StringIO()
    monkeypatch.setattr(cli_index, "out", Console(file=buffer, width=120))
    monkeypatch.setattr(cli_index, "console", Console(file=buffer, width=120))
    results = [
        ("/videos/cam1/0001.mp4", {"video_id": "sha256-0123456789abcdef01234567", "n_clips": 3, "skipped": 0,
                                   "encoded": 3}, ""),
        ("/videos/cam2/0001.mp4", None, "cannot read it"),
    ]  # fmt: skip
    cli_index._print_ingest_summary(results, "/store")
    text = buffer.getvalue()
    assert re.search(r"cam1/0001\.mp4 +│ sha256-0123456789abcdef01234567", text), text
    assert re.search(r"cam2/0001\.mp4 +│ failed", text), text
    assert "failed cam2/0001.mp4: cannot read it" in text, text


# ------------------------------------------------------------------ thread id at the start


class InterruptOnce:
    """Replaces propose_windows: the first call is Ctrl-C (KeyboardInterrupt), then the real one."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = retrieval_module.propose_windows

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_retrieve_prints_the_thread_id_first_so_ctrl_c_can_be_resumed(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANALIGN_CHECKPOINT_DB", str(tmp_path / "ckpt.sqlite"))
    monkeypatch.setattr(retrieval_module, "propose_windows", InterruptOnce())
    cmd = ("retrieve", PLAIN_VID, QUERY, "--store", str(store_dir), "--json")
    stopped = invoke(*cmd)
    assert stopped.exit_code == 130, stopped.output
    found = re.search(r"thread id (retrieve-[0-9a-f]+) \(to resume this run if it stops: --thread-id \1\)",
                      stopped.output)  # fmt: skip
    assert found, stopped.output
    resumed = invoke(*cmd, "--thread-id", found.group(1))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout[resumed.stdout.index("{") :])["thread_id"] == found.group(1)


@pytest.mark.parametrize(
    ("video", "query", "why"),
    [
        ("no_such_video_1", QUERY, "is not in the store"),
        (PLAIN_VID, " \x07 ", "query is empty"),
        ("outside.mp4", QUERY, "outside the allowed video roots"),  # a file in tmp_path
    ],
)
def test_retrieve_says_no_thread_id_for_input_it_refuses_at_once(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, video: str, query: str, why: str
) -> None:
    """A refused input starts no run (its thread is deleted): the id offered to resume it was
    a dead end.  An accepted one still says it before the work (the Ctrl-C test above)."""
    monkeypatch.setenv("GRANALIGN_CHECKPOINT_DB", str(tmp_path / "ckpt.sqlite"))
    if video == "outside.mp4":
        (tmp_path / video).write_bytes(b"\x00" * 64)
        video = str(tmp_path / video)
    got = invoke(
        "retrieve", "--store", str(store_dir), "--set", f"video_roots={store_dir}", "--", video, query
    )
    assert got.exit_code == 2 and why in got.output, got.output
    assert "thread id" not in got.output and "--thread-id" not in got.output, got.output


def test_retrieve_says_the_thread_id_once_before_its_output(store_dir: Path, tmp_path: Path) -> None:
    got = invoke("retrieve", "--store", str(store_dir), PLAIN_VID, QUERY, env={
        "GRANALIGN_CHECKPOINT_DB": str(tmp_path / "ckpt.sqlite")})  # fmt: skip
    assert got.exit_code == 0, got.output
    said = re.findall(r"thread id (retrieve-[0-9a-f]+) \(to resume this run if it stops", got.output)
    assert len(said) == 1 and got.output.index("thread id") < got.output.index("rank"), got.output


def test_the_library_and_the_tool_hand_out_the_thread_id(store_dir: Path, tmp_path: Path) -> None:
    ctx = Context(store_dir=str(store_dir), checkpoint_db=str(tmp_path / "ckpt.sqlite"))
    seen: list[str] = []
    stream = durable.stream_retrieval(ctx, {"video": PLAIN_VID, "query": QUERY}, on_start=seen.append)
    first = next(stream)
    assert seen and seen[0].startswith("retrieve-") and first
    list(stream)
    tool = MomentRetriever(ToolSettings(context=ctx, roots=(), url_allowlist=()))
    artifact = tool.run(PLAIN_VID, QUERY).artifact
    assert re.fullmatch(r"retrieve-[0-9a-f]{32}", artifact["thread_id"])
    assert tool.run(PLAIN_VID, QUERY, thread_id="mine-1").artifact["thread_id"] == "mine-1"


# ------------------------------------------------------------------ --set errors


def test_a_bad_set_value_is_reported_as_typed(store_dir: Path) -> None:
    base = ("retrieve", PLAIN_VID, QUERY, "--store", str(store_dir))
    for setting, message in (
        ("clip_len=abc", "error: --set clip_len=abc: expected a number"),
        ("top_k=1.5", "error: --set top_k=1.5: expected an integer"),
        ("keep_threads=maybe", "error: --set keep_threads=maybe: expected true or false"),
    ):
        got = invoke(*base, "--set", setting)
        assert got.exit_code == 2 and error_lines(got.output) == [message], got.output
        assert "GRANALIGN_" not in got.output
    from_env = invoke(*base, env={"GRANALIGN_CLIP_LEN": "abc"})
    assert error_lines(from_env.output) == ["error: GRANALIGN_CLIP_LEN='abc': expected a number"]
    overridden = invoke(*base, "--json", "--set", "CLIP_LEN=2", env={"GRANALIGN_CLIP_LEN": "abc"})
    assert overridden.exit_code == 0, overridden.output  # --set replaces the variable: it is not read


# ------------------------------------------------------------------ umask


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_respect_the_umask(mask: int, tmp_path: Path, subset_submission: Path) -> None:
    os.umask(mask)
    write_json(tmp_path / "a.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    out = tmp_path / "metrics.json"
    got = invoke("eval", "--submission", str(subset_submission), "--gt", str(DEMO.annotations),
                 "--allow-subset", "--out", str(out))  # fmt: skip
    assert got.exit_code == 0, got.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
