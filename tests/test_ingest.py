"""The ingest graph and ``granalign index`` on real videos (CPU, offline).

Models: open_clip ViT-S-32 with ``pretrained=None`` (seeded random weights) and a tiny
random-weight Qwen2.5-VL built here and loaded through the ``local:`` captioner path, plus the
real MiniLM embedder and a real Chroma store.  Captions are gibberish; what is tested is the
machinery: ids, resumability (by killing a real ingest process), progress, bad input, and
that the store is never left with half a clip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from granalign.backends.captioner import AGNOSTIC_PROMPT
from granalign.errors import InputError
from granalign.io.store import caption_id, frame_id, open_store
from granalign.io.video import content_hash
from granalign.testing import build_tiny_vlm_random_weights
from graphs import resources
from graphs.context import Context
from graphs.ingest import ingest_video, unfinished_clips
from tests.conftest import VIDEOS, needs_videos
from tests.test_video import damaged_copy, make_audio_only, make_video
from tools.cli import app

pytestmark = needs_videos
ROOT = Path(__file__).resolve().parents[1]


# -- shared helpers (also used by test_full_mode and test_openai_backends) ----------------------


def model_context(store_dir: Path, vlm: Path, roots: list[Path], **overrides: Any) -> Context:
    """Context with the test models: random-weight CLIP, the tiny random-weight VLM, real MiniLM.

    CLIP is open_clip's ViT-S-32 (the default ViT-B-32's code path at half the CPU cost; no
    weights ship for either, so both would be random here).
    """
    values: dict[str, Any] = {
        "store_dir": str(store_dir),
        "clip_model": "local:ViT-S-32",
        "clip_pretrained": "none",
        "captioner": f"local:{vlm}",
        "caption_tokens": 8,
        "video_roots": os.pathsep.join(str(r) for r in roots),
    }
    values.update(overrides)
    return Context(**values)


class Calls:
    """Counts what the model backends were asked to do (wraps the process-level instances)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ctx: Context) -> None:
        self.frames = 0
        self.agnostic = 0
        self.aware = 0
        clip = resources.clip_for(ctx)
        captioners = {
            id(resources.captioner_for(ctx)): resources.captioner_for(ctx),
            id(resources.captioner_for(ctx, aware=True)): resources.captioner_for(ctx, aware=True),
        }
        embed_images = clip.embed_images

        def count_frames(images):
            self.frames += len(images)
            return embed_images(images)

        monkeypatch.setattr(clip, "embed_images", count_frames)
        for cap in captioners.values():
            real = cap.caption

            def count_captions(images, prompts, _real=real):
                for p in prompts:
                    if p == AGNOSTIC_PROMPT:
                        self.agnostic += 1
                    else:
                        self.aware += 1
                return _real(images, prompts)

            monkeypatch.setattr(cap, "caption", count_captions)


def assert_no_half_clips(ctx: Context, video_id: str, n_clips: int) -> None:
    """Every clip with a caption record also has its frame record (frames are written first)."""
    store = resources.store_for(ctx)
    clip, cap, emb = resources.clip_for(ctx), resources.captioner_for(ctx), resources.embedder_for(ctx)
    s_key, p_hash = resources.sampling_key(ctx), resources.agnostic_prompt_hash(ctx)
    captions = store.existing_ids(
        store.captions_collection(emb.name),
        [caption_id(video_id, c, cap.name, p_hash) for c in range(n_clips)],
    )
    frames = store.existing_ids(
        store.frames_collection(clip.name), [frame_id(video_id, c, clip.name, s_key) for c in range(n_clips)]
    )
    for c in range(n_clips):
        if caption_id(video_id, c, cap.name, p_hash) in captions:
            assert frame_id(video_id, c, clip.name, s_key) in frames, f"clip {c} has a caption but no frame"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm_random_weights(tmp_path_factory.mktemp("models") / "tiny-qwen25vl-random-weights")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ingest")


@pytest.fixture(scope="module")
def ctx(work, vlm) -> Context:
    return model_context(work / "store", vlm, [VIDEOS, work], ingest_batch=4)


# -- tests -------------------------------------------------------------------------------------


def test_ingest_bikes_random_weights_is_idempotent(ctx, monkeypatch):
    events: list[dict] = []
    out = ingest_video(ctx, str(VIDEOS / "bikes.mp4"), on_event=events.append)
    assert out["video_id"].startswith("sha256-") and out["n_clips"] == 5
    assert (out["skipped"], out["encoded"]) == (0, 5)
    assert set(out["timings"]) == {"decode", "clip", "caption", "embed", "store"}
    stages = [e["stage"] for e in events]
    assert stages[0] == "probe" and stages[-1] == "finalize" and stages.count("ingest") == 2  # 4 + 1 clips
    assert [e["done"] for e in events if e["stage"] == "ingest"] == [4, 5]
    store = resources.store_for(ctx)
    record = store.video(out["video_id"])
    assert record is not None and record.complete and record.has_frames and record.n_clips == 5
    assert record.duration_s == 10.0 and record.path.endswith("bikes.mp4")
    clips, frames = store.get_frames(
        out["video_id"], clip_model=record.clip_model, sampling_key=resources.sampling_key(ctx)
    )
    assert clips == list(range(5)) and frames.shape == (5, 384)
    assert len(resources.video_captions(ctx, out["video_id"]).captions) == 5
    calls = Calls(monkeypatch, ctx)
    again = ingest_video(ctx, str(VIDEOS / "bikes.mp4"))
    assert (again["skipped"], again["encoded"], again["video_id"]) == (5, 0, out["video_id"])
    assert (calls.frames, calls.agnostic) == (0, 0)


def test_killed_ingest_process_resumes_at_the_first_unfinished_clip_random_weights(ctx, work, monkeypatch):
    """A real ingest process is SIGKILLed after its first stored batch; the re-run skips those clips."""
    store_dir = work / "killed-store"
    killed_ctx = ctx.with_overrides(store_dir=str(store_dir), ingest_batch=1)
    video = str(VIDEOS / "bikes.mp4")
    fields = {
        k: getattr(killed_ctx, k)
        for k in (
            "store_dir",
            "clip_model",
            "clip_pretrained",
            "captioner",
            "caption_tokens",
            "video_roots",
            "ingest_batch",
        )
    }
    script = (
        "import json, sys\n"
        "from graphs.context import Context\n"
        "from graphs.ingest import graph\n"
        "ctx = Context(**json.loads(sys.argv[1]))\n"
        "for ev in graph.stream({'video': sys.argv[2]}, context=ctx, stream_mode='custom'):\n"
        "    print(json.dumps(ev), flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(fields), video],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    done_before_kill = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            if event["stage"] == "ingest":
                done_before_kill = event["done"]
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert done_before_kill == 1, "the ingest process ended before its first batch was stored"
    store = open_store(store_dir)
    video_id = content_hash(VIDEOS / "bikes.mp4")
    assert store.video(video_id) is None  # no record until every clip is finished
    assert_no_half_clips(killed_ctx, video_id, 5)
    left = unfinished_clips(killed_ctx, video_id, 5)
    assert 0 < len(left) <= 5 - done_before_kill
    calls = Calls(monkeypatch, killed_ctx)
    out = ingest_video(killed_ctx, video)
    assert out["skipped"] == 5 - len(left) >= done_before_kill
    assert out["encoded"] == len(left) == calls.agnostic
    assert calls.frames <= len(left)
    assert store.video(video_id) is not None and not unfinished_clips(killed_ctx, video_id, 5)


def test_index_cli_ingests_a_folder_with_bounded_concurrency_random_weights(ctx, work, vlm):
    folder = work / "folder"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(VIDEOS / "bikes.mp4", folder / "bikes.mp4")  # already ingested: skipped
    make_video(folder / "sub" / "short.mp4", 0.8)  # shorter than one clip: one clip
    (folder / "broken.mp4").write_text("not a video")
    env = {
        "GRANALIGN_STORE": ctx.store_dir,
        "GRANALIGN_CLIP_PRETRAINED": "none",
        "GRANALIGN_CAPTIONER": ctx.captioner,
        "GRANALIGN_CAPTION_TOKENS": "8",
        "GRANALIGN_VIDEO_ROOTS": ctx.video_roots,
    }
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "2"], env=env)
    assert result.exit_code == 1, result.output  # one file failed, the others were ingested
    assert "broken.mp4" in result.output and "not a video FFmpeg can read" in result.output
    assert "short.mp4" in result.output and "shorter than one clip" in result.output
    record = resources.store_for(ctx).video(content_hash(folder / "sub" / "short.mp4"))
    assert record is not None and record.n_clips == 1 and record.complete
    again = CliRunner().invoke(app, ["index", str(folder / "sub" / "short.mp4")], env=env)
    assert again.exit_code == 0, again.output
    assert "│       1 │       0" in again.output  # 1 clip skipped, 0 encoded


def test_a_model_that_cannot_load_stops_a_folder_index_with_one_error(tmp_path, monkeypatch):
    """A CLIP checkpoint that is not there: the first video that needs the model ends the folder
    run with one message saying how many videos were not attempted (before, every video loaded
    the model again and printed the same failure); an unreadable file before it still only fails
    itself.  The summary lists both videos attempted, the one that stopped the run too (it was
    left out), and the cause is printed once, in the error."""
    from granalign.backends.clip import OpenClipEncoder

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a_broken.mp4").write_text("not a video")
    for name in ("b.mp4", "c.mp4", "d.mp4"):
        make_video(folder / name, 1.5)
    builds: list[str] = []
    real_build = OpenClipEncoder._build

    def counted_build(self):
        builds.append(self.pretrained)
        return real_build(self)

    monkeypatch.setattr(OpenClipEncoder, "_build", counted_build)
    missing = tmp_path / "missing" / "open_clip_model.safetensors"
    env = {
        "GRANALIGN_STORE": str(tmp_path / "store"),
        "GRANALIGN_VIDEO_ROOTS": str(tmp_path),
        "GRANALIGN_CLIP_MODEL": "local:ViT-S-32",
        "GRANALIGN_CLIP_PRETRAINED": str(missing),
    }
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert builds == [str(missing)], builds  # the model was tried once, not once per video
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "CLIP model 'ViT-S-32'" in result.output and "could not be loaded" in result.output
    flat = " ".join(result.output.split())
    assert "stopped indexing folder" in flat and "at b.mp4: 2 of 4 videos not attempted" in flat, flat
    assert "a_broken.mp4" in result.output and "not a video FFmpeg can read" in result.output
    assert re.search(r"b\.mp4 +│ failed", result.output), result.output
    assert "failed b.mp4: stopped the run: a failure of the whole deployment" in flat, flat
    assert flat.count("could not be loaded") == 1, flat  # in the error alone
    assert "c.mp4" not in result.output and "d.mp4" not in result.output  # not attempted


def _index_with_two_running_when_the_deployment_fails(tmp_path, monkeypatch, *, videos: int):
    """``index FOLDER --jobs 2`` over ``videos`` stand-in files, whose ingest (a stand-in) waits
    until two videos run and then fails as a deployment does (a model that cannot load).
    Returns the CLI result and the videos whose ingest began."""
    import threading

    import graphs.ingest as ingest_module
    from granalign.errors import ConfigError

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(videos):
        (folder / f"v{i}.mp4").write_bytes(b"stand-in")
    both_running = threading.Barrier(2, timeout=30)
    calls: list[str] = []

    def fake_ingest(ctx, video, on_event=None):
        calls.append(video)
        both_running.wait()
        raise ConfigError("captioner model 'qwen' could not be loaded")

    monkeypatch.setattr(ingest_module, "ingest_video", fake_ingest)
    env = {"GRANALIGN_STORE": str(tmp_path / "store"), "GRANALIGN_VIDEO_ROOTS": str(tmp_path)}
    return CliRunner().invoke(app, ["index", str(folder), "--jobs", "2"], env=env), calls


def test_two_videos_ended_by_a_deployment_failure_at_once_are_both_reported(tmp_path, monkeypatch):
    """``--jobs 2``, both running videos fail with the same deployment failure: the first is the
    folder's error and the second is listed as failed (before, it was in neither the error nor
    the summary, nor counted as not attempted).  Both are in the summary (the first was left
    out), and the cause is printed once, in the error (it was also the second's log line and
    its failure line)."""
    result, calls = _index_with_two_running_when_the_deployment_fails(tmp_path, monkeypatch, videos=4)
    assert result.exit_code == 2, result.output
    assert len(calls) == 2, calls
    text = " ".join(result.output.split())
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 of 4 videos not attempted" in text, result.output
    assert text.count("captioner model 'qwen' could not be loaded") == 1, result.output
    first, second = sorted(calls, key=lambda v: f"failed {Path(v).name}: stopped the run" not in text)
    assert f"failed {Path(first).name}: stopped the run: a failure of the whole deployment" in text, text
    assert f"failed {Path(second).name}: ended by the same failure as {Path(first).name}" in text, text
    assert f"at {Path(first).name}: 2 of 4 videos not attempted" in text, text
    for video in calls:
        assert re.search(rf"{Path(video).name} +│ failed", result.output), result.output


def test_a_deployment_failure_after_every_video_began_names_no_videos_not_attempted(tmp_path, monkeypatch):
    """``--jobs`` as many as the videos, all running when the deployment fails: none was left
    out, so the error says where the run stopped and no "0 of 2 videos not attempted"."""
    result, _ = _index_with_two_running_when_the_deployment_fails(tmp_path, monkeypatch, videos=2)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert re.search(r"stopped indexing folder .+ at v[01]\.mp4$", text), text
    assert "not attempted" not in text, text
    for name in ("v0.mp4", "v1.mp4"):
        assert re.search(rf"{name} +│ failed", result.output), result.output


def test_a_lost_chroma_server_is_said_once_and_its_video_is_in_the_summary(tmp_path, monkeypatch):
    """The server goes away while the second video is ingested (``--jobs 1``): the summary lists
    the first video and the one that stopped the run (it left that one out), and the cause is
    printed once (the error), not again as that video's failure line."""
    import graphs.ingest as ingest_module
    from granalign.io.store import StoreUnavailable

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        (folder / f"v{i}.mp4").write_bytes(b"stand-in")
    lost = "lost the Chroma server at http://127.0.0.1:9 (ConnectError: [Errno 111] Connection refused)"

    def fake_ingest(ctx, video, on_event=None):
        if video.endswith("v0.mp4"):
            return {"video_id": "sha256-v0", "n_clips": 3, "skipped": 0, "encoded": 3, "notes": []}
        raise StoreUnavailable(lost)

    monkeypatch.setattr(ingest_module, "ingest_video", fake_ingest)
    env = {"GRANALIGN_STORE": str(tmp_path / "store"), "GRANALIGN_VIDEO_ROOTS": str(tmp_path)}
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "1"], env=env)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.count("lost the Chroma server") == 1, result.output
    assert re.search(r"v0\.mp4 +│ sha256-v0 +│ +3 │", result.output), result.output
    assert re.search(r"v1\.mp4 +│ failed", result.output), result.output
    assert "failed v1.mp4: stopped the run: a failure of the whole deployment" in text, text
    assert f"error: {lost}" in text and "at v1.mp4: 2 of 4 videos not attempted" in text, text
    assert "v2.mp4" not in result.output and "v3.mp4" not in result.output


def test_the_index_summary_says_each_distinct_note_once(tmp_path, monkeypatch):
    """A note every video gives (random test weights) was printed once per video; it is now said
    once for all of them, a note some videos give names them, and a video's own note stays."""
    import graphs.ingest as ingest_module
    from granalign.errors import InputError

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        (folder / f"v{i}.mp4").write_bytes(b"stand-in")
    weights = "CLIP ViT-S-32 has random weights (clip_pretrained=none): its scores are meaningless"
    own = {"v0": ["video is 0.50 s long, shorter than one clip (2 s): one clip covers it"]}
    some = "some videos' note"

    def fake_ingest(ctx, video, on_event=None):
        stem = Path(video).stem
        if stem == "v3":
            raise InputError("video 'v3.mp4' is not a video FFmpeg can read")
        notes = [weights, *own.get(stem, []), *([some] if stem != "v1" else []), weights]
        return {"video_id": f"sha256-{stem}", "n_clips": 1, "skipped": 0, "encoded": 1, "notes": notes}

    monkeypatch.setattr(ingest_module, "ingest_video", fake_ingest)
    env = {"GRANALIGN_STORE": str(tmp_path / "store"), "GRANALIGN_VIDEO_ROOTS": str(tmp_path)}
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "2"], env=env)
    assert result.exit_code == 1, result.output  # v3 failed
    text = " ".join(result.output.split())  # the console wraps long notes
    assert text.count("random weights") == 1 and f"note (all 3 videos): {weights}" in text, text
    assert text.count(some) == 1 and f"note (2 videos: v0.mp4, v2.mp4): {some}" in text, text
    assert f"note (v0.mp4): {own['v0'][0]}" in text, text


def test_index_cli_needs_exactly_one_source(ctx):
    result = CliRunner().invoke(app, ["index"], env={"GRANALIGN_STORE": ctx.store_dir})
    assert result.exit_code == 2 and "give a video file or folder, or --captions FILE" in result.output


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.mp4", "video file not found"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "text.mp4", b"plain text, renamed"), "not a video FFmpeg can read"),
        (
            lambda d: _write(d / "half.mp4", (VIDEOS / "bikes.mp4").read_bytes()[:254934]),
            "not a video FFmpeg",
        ),
        (lambda d: make_audio_only(d / "audio.mp4"), "no video stream"),
        (lambda d: _write(d / "zero.mp4", b""), "is empty"),
        (lambda d: Path("/etc/hostname"), "outside the allowed video roots"),
        (lambda d: "https://example.org/v.mp4", "is a URL"),
        (lambda d: make_video(d / "sliver.mp4", 0.2, size=(1000, 4)), r"1000x4 pixels, an aspect ratio over"),
    ],
    ids=[
        "missing",
        "directory",
        "not-a-video",
        "truncated-bikes",
        "audio-only",
        "zero-length",
        "outside-roots",
        "url",
        "sliver-frames",  # was a raw ValueError of the captioner's image processor, mid-encode
    ],
)
def test_bad_files_get_clear_errors_and_leave_nothing_behind(ctx, work, make, needle):
    folder = work / "bad"
    folder.mkdir(exist_ok=True)
    target = make(folder)
    store = resources.store_for(ctx)
    before = store.count(VIDEOS_COLLECTION)
    with pytest.raises(InputError, match=needle):
        ingest_video(ctx, str(target))
    assert store.count(VIDEOS_COLLECTION) == before


def test_truncated_video_stops_with_a_clear_error_and_keeps_only_whole_clips_random_weights(ctx, work):
    """An mp4 cut in half with its index up front: clips before the cut are stored whole, then a
    clear error; no video record; a later run would resume at the first missing clip."""
    full = make_video(work / "fast.mp4", 8, fps=10, size=(96, 72), faststart=True, pattern="noise")
    cut = work / "fast_cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    small = ctx.with_overrides(ingest_batch=1)
    with pytest.raises(InputError, match="truncated or corrupt"):
        ingest_video(small, str(cut))
    video_id = content_hash(cut)
    assert resources.store_for(ctx).video(video_id) is None
    assert_no_half_clips(small, video_id, 4)
    assert 0 < len(unfinished_clips(small, video_id, 4)) < 4


def test_damaged_packets_do_not_fail_the_ingest_and_are_noted_random_weights(ctx, work):
    """A video with a damaged stretch mid-file is stored whole, and the ingest's notes (and a
    retrieval that ingests it) say where packets were skipped."""
    from graphs.retrieval import graph as retrieval

    path = damaged_copy(work / "damaged_bikes.mp4", at=0.5, nbytes=20000)
    out = ingest_video(ctx, str(path))
    assert out["n_clips"] == 5 and out["encoded"] == 5
    (note,) = [n for n in out["notes"] if "damaged video packets" in n]
    assert re.match(r"\d+ damaged video packets were skipped \(at 4\.\d-5\.\d s\)", note), note
    record = resources.store_for(ctx).video(content_hash(path))
    assert record is not None and record.complete
    assert_no_half_clips(ctx, record.video_id, 5)

    again = damaged_copy(work / "damaged_bikes_2.mp4", at=0.3, nbytes=2000)
    state = retrieval.invoke({"video": str(again), "query": "a person rides a bicycle"}, context=ctx)
    assert state["moments"] and sum("damaged video packets" in n for n in state["notes"]) == 1


def test_non_utf8_file_name_ingests_random_weights(ctx, work):
    path = Path(work, os.fsdecode(b"v\xe9lo \xff.mp4"))
    make_video(path, 1.5)
    out = ingest_video(ctx, str(path))
    assert out["n_clips"] == 1 and out["encoded"] == 1
    record = resources.store_for(ctx).video(out["video_id"])
    assert record is not None and "\\xe9" in record.path  # stored printable


VIDEOS_COLLECTION = "videos"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_index_takes_a_relative_folder_under_a_video_root_like_a_relative_file(tmp_path, monkeypatch):
    """`index sub` from outside the roots finds <root>/sub, as `index sub/x.mp4` finds the file."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "notes.txt").write_text("no videos here")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = {"GRANALIGN_STORE": str(tmp_path / "store"), "GRANALIGN_VIDEO_ROOTS": str(root)}
    result = CliRunner().invoke(app, ["index", "sub"], env=env)
    assert result.exit_code == 2, result.output
    assert "holds no video files" in result.output and "is a directory" not in result.output


# -- Ctrl-C ------------------------------------------------------------------------------------


@pytest.fixture()
def sigint_raises():
    """SIGINT as a terminal delivers it (a test run in the background inherits it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_folder_index_starts_no_further_video(tmp_path, monkeypatch, sigint_raises):
    """Ctrl-C while the first of several videos is ingested: the queued videos are not started
    (before the fix every one of them was ingested before the command exited)."""
    import graphs.ingest as ingest_module

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        (folder / f"v{i}.mp4").write_bytes(b"stand-in")
    calls: list[str] = []

    def fake_ingest(ctx, video, on_event=None):
        calls.append(video)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this video is ingested
            time.sleep(0.3)
        return {"video_id": f"sha256-{len(calls)}", "n_clips": 1, "skipped": 0, "encoded": 1, "notes": []}

    monkeypatch.setattr(ingest_module, "ingest_video", fake_ingest)
    env = {"GRANALIGN_STORE": str(tmp_path / "store"), "GRANALIGN_VIDEO_ROOTS": str(tmp_path)}
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "1"], env=env)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Traceback" not in result.output
    assert len(calls) == 1, calls


def test_ctrl_c_stops_an_ingest_after_the_batch_in_hand_and_the_rerun_resumes_random_weights(
    ctx, work, monkeypatch
):
    """Ctrl-C (the CLI's stop flag) ends a running ingest at the next batch boundary: no model
    is asked for another clip (a served captioner ran to the last clip before the fix, only a
    local one stopped), the clips stored are whole and the re-run skips them."""
    import graphs.ingest as ingest_module
    from granalign.backends import interrupt

    path = make_video(work / "stopped.mp4", 7.5)
    small = ctx.with_overrides(ingest_batch=1)
    real = ingest_module._encode_batch

    def batch_then_ctrl_c(*args, **kwargs):
        real(*args, **kwargs)
        interrupt._STOP.set()

    monkeypatch.setattr(ingest_module, "_encode_batch", batch_then_ctrl_c)
    calls = Calls(monkeypatch, small)
    try:
        with pytest.raises(KeyboardInterrupt):
            ingest_video(small, str(path))
    finally:
        interrupt._STOP.clear()
    assert (calls.frames, calls.agnostic) == (1, 1)
    video_id = content_hash(path)
    assert resources.store_for(ctx).video(video_id) is None
    assert_no_half_clips(small, video_id, 4)
    assert unfinished_clips(small, video_id, 4) == [1, 2, 3]
    monkeypatch.setattr(ingest_module, "_encode_batch", real)
    again = ingest_video(small, str(path))
    assert again["skipped"] == 1 and again["encoded"] == 3


def test_a_video_replaced_between_probe_and_encode_is_refused_not_stored_under_the_old_id(
    ctx, work, monkeypatch
):
    """The probe hashes the file (its id); if the file is replaced before its frames are read
    (a copy still arriving, a re-encode, a long wait for the video's lock), the new frames must
    not be stored under the old content's id.  Before the fix they were, with a video record."""
    import contextlib

    import graphs.ingest as ingest_module

    path = make_video(work / "replaced.mp4", 3.5)
    old_id = content_hash(path)
    real_lock = ingest_module.video_lock

    @contextlib.contextmanager
    def replace_then_lock(*args, **kwargs):
        other = make_video(work / "replacement.mp4", 3.5, pattern="noise")
        os.replace(other, path)
        with real_lock(*args, **kwargs):
            yield

    monkeypatch.setattr(ingest_module, "video_lock", replace_then_lock)
    with pytest.raises(InputError, match="changed since it was probed"):
        ingest_video(ctx, str(path))
    assert resources.store_for(ctx).video(old_id) is None
    assert unfinished_clips(ctx, old_id, 2) == [0, 1]
    monkeypatch.setattr(ingest_module, "video_lock", real_lock)
    again = ingest_video(ctx, str(path))  # the re-run ingests the new content under its own id
    assert again["video_id"] == content_hash(path) != old_id and again["encoded"] == 2


def test_a_video_rewritten_in_place_during_its_ingest_stores_nothing_after_the_change(ctx, work, monkeypatch):
    """``cp`` over a file (or an editor saving it) keeps its inode and rewrites its bytes: the
    sampler's open file then reads the new bytes.  Only the open was checked, so the later clips
    were decoded from the new bytes (reported as damaged packets) and stored under the old
    content's id, with a complete video record."""
    import graphs.ingest as ingest_module

    path = make_video(work / "rewritten.mp4", 6.0, size=(96, 72), pattern="noise")
    old_id = content_hash(path)
    small = ctx.with_overrides(ingest_batch=1)
    real = ingest_module._encode_batch

    def rewrite_after_the_first_batch(writer, batch, *args, **kwargs):
        real(writer, batch, *args, **kwargs)
        if batch == [0]:
            with open(path, "r+b") as fh:  # same inode, same size, other bytes
                size = os.fstat(fh.fileno()).st_size
                fh.seek(size // 2)
                fh.write(bytes(size // 4))

    monkeypatch.setattr(ingest_module, "_encode_batch", rewrite_after_the_first_batch)
    with pytest.raises(InputError, match=r"changed while its frames were read .*\(1 of 3\)"):
        ingest_video(small, str(path))
    assert resources.store_for(ctx).video(old_id) is None
    assert_no_half_clips(small, old_id, 3)
    assert unfinished_clips(small, old_id, 3) == [1, 2]


def test_index_with_stderr_not_a_terminal_reports_each_video_as_it_finishes(tmp_path, monkeypatch):
    """Piped to a log (nohup, a CI job, a RayJob), rich draws no bars until the very end: the log
    said nothing for the whole ingest.  Each finished video now gets a plain line at once."""
    from io import StringIO

    from rich.console import Console

    import graphs.ingest as ingest_module
    from tools import cli_common, cli_index

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(3):
        (folder / f"v{i}.mp4").write_bytes(b"stand-in")
    log = StringIO()
    piped = Console(file=log, force_terminal=False, width=100)
    monkeypatch.setattr(cli_common, "console", piped)
    monkeypatch.setattr(cli_index, "console", piped)
    seen_before: list[str] = []

    def fake_ingest(ctx, video, on_event=None):
        seen_before.append(log.getvalue())
        if video.endswith("v1.mp4"):
            raise InputError("video 'v1.mp4' is not a video FFmpeg can read")
        vid = "sha256-" + Path(video).stem
        return {"video_id": vid, "n_clips": 3, "skipped": 1, "encoded": 2, "notes": []}

    monkeypatch.setattr(ingest_module, "ingest_video", fake_ingest)
    env = {"GRANALIGN_STORE": str(tmp_path / "store"), "GRANALIGN_VIDEO_ROOTS": str(tmp_path)}
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "1"], env=env)
    assert result.exit_code == 1, result.output
    assert "v0.mp4" in seen_before[1] and "v1.mp4" in seen_before[2], seen_before
    assert "failed" in seen_before[2].split("v1.mp4", 1)[1].splitlines()[0]
