"""``granalign store check|recover`` and ``granalign videos list|rm`` on real Chroma folders.

The broken store is made the way the reported one behaved: its nearest-neighbour index file is
overwritten, so Chroma segfaults on the first ``count()``.  ``check`` must turn that into one
line; ``recover`` must rebuild the videos from the records the SQLite file still holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from granalign.backends.embedder import make_embedder
from granalign.io.captions_import import import_captions
from granalign.io.store import Store, VideoRecord, caption_id, close_stores, open_store
from tools.cli import app

EMBEDDER = "all-MiniLM-L6-v2"
CAPTIONS = f"captions.{EMBEDDER}"
INGESTED = "sha256-ingested"


def _fill(folder: Path, vids: list[str], n_clips: int) -> None:
    """Imported-caption videos (random vectors: only the texts are recovered), one ingested video
    with frames and query-aware captions, and one cached rewrite."""
    with Store(folder) as store:
        _fill_store(store, vids, n_clips)


def _fill_store(store: Store, vids: list[str], n_clips: int) -> None:
    rng = np.random.default_rng(0)
    for vid in vids:
        texts = [f"{vid} clip {i}: a person does thing {i}" for i in range(n_clips)]
        vectors = rng.standard_normal((n_clips, 384)).astype(np.float32)
        store.put_captions(
            vid, texts, vectors, source="minigpt", prompt_hash="imported", embedder_name=EMBEDDER
        )
        store.put_video(VideoRecord(vid, n_clips, 2.0, 2.0 * n_clips, "minigpt", EMBEDDER))
    vec = rng.standard_normal((2, 384)).astype(np.float32)
    store.put_frames(INGESTED, [0, 1], vec, clip_model="ViT-B-32", sampling_key="s")
    store.put_clip_captions(
        INGESTED, [0, 1], ["a dog", "a cat"], vec, source="qwen", prompt_hash="p", embedder_name=EMBEDDER
    )
    store.put_aware_captions(
        INGESTED,
        [1],
        ["a cat jumps"],
        vec[:1],
        source="qwen",
        prompt_hash="p",
        query_hash="q",
        embedder_name=EMBEDDER,
    )
    store.put_video(
        VideoRecord(INGESTED, 2, 2.0, 4.0, "qwen", EMBEDDER, has_frames=True, path="/videos/a.mp4")
    )
    store.put_rewrites({"rw1": {"text": "a person cooks"}}, {"rw1": "someone cooking"})


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A healthy store of 3 × 500 clips (enough for Chroma to write its index file) and copies."""
    base = tmp_path_factory.mktemp("stores")
    healthy = base / "healthy"
    _fill(healthy, ["vid0", "vid1", "vid2"], 500)
    broken = base / "broken"
    shutil.copytree(healthy, broken)
    index = max(broken.glob("*/data_level0.bin"), key=lambda p: p.stat().st_size)
    index.write_bytes(b"\xff" * index.stat().st_size)
    garbled = base / "garbled"
    shutil.copytree(healthy, garbled)
    db = garbled / "chroma.sqlite3"
    raw = bytearray(db.read_bytes())
    raw[4096 * 2 : 4096 * 40] = b"\xa5" * (4096 * 38)
    db.write_bytes(bytes(raw))
    return {"healthy": healthy, "broken": broken, "garbled": garbled, "base": base}


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "1000", **(env or {})})


def _one_line(output: str) -> str:
    lines = [x for x in output.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def test_check_reports_a_healthy_store(stores):
    got = _cli("store", "check", "--store", str(stores["healthy"]))
    assert got.exit_code == 0, got.output
    line = _one_line(got.output)
    assert f"ok: store {stores['healthy']}: 4 videos (4 complete, 1 ingested from files)" in line
    assert f"{CAPTIONS} 1502" in line and "frames.ViT-B-32 2" in line and "videos 4" in line


def test_check_turns_a_chroma_segfault_into_one_line_with_the_recovery_command(stores):
    got = _cli("store", "check", "--store", str(stores["broken"]))
    assert got.exit_code == 2
    line = _one_line(got.output)
    assert f"error: store {stores['broken']} is broken: Chroma crashed (SIGSEGV)" in line
    assert "while it tried to count collection" in line
    assert f"granalign store recover --store {stores['broken']} --to NEW_FOLDER" in line


def test_check_of_a_garbled_database_names_chromas_error(stores):
    got = _cli("store", "check", "--store", str(stores["garbled"]))
    assert got.exit_code == 2
    line = _one_line(got.output)
    assert "is broken: Chroma failed while it tried to open the store" in line and "malformed" in line


def test_check_names_the_process_that_holds_the_store(stores):
    open_store(stores["healthy"])
    try:
        got = _cli("store", "check", "--store", str(stores["healthy"]))
    finally:
        close_stores()
    assert got.exit_code == 2
    assert f"is in use by pid {os.getpid()}" in _one_line(got.output)


def test_check_of_a_folder_without_a_store(tmp_path):
    got = _cli("store", "check", "--store", str(tmp_path))
    assert got.exit_code == 2 and "holds no Chroma store" in _one_line(got.output)


def test_recover_rebuilds_a_segfaulting_store_from_its_records(stores):
    new = stores["base"] / "recovered"
    got = _cli("store", "recover", "--store", str(stores["broken"]), "--to", str(new))
    close_stores()
    assert got.exit_code == 0, got.output
    assert f"recovered into {new}: 3 videos from their captions, 1 cached rewrites" in got.output
    assert "re-ingest: granalign index /videos/a.mp4" in got.output
    embedder = make_embedder(f"local:{EMBEDDER}")
    with Store(stores["healthy"]) as old, Store(new) as store:
        want = [r for r in old.list_videos() if not r.has_frames]
        got_records = store.list_videos()
        # recovered by importing their captions again, so they carry the import's content key
        # (a later import of the same captions skips them); the fixture's records were put as is
        assert [dataclasses.replace(r, content_key="") for r in got_records] == want
        assert all(len(r.content_key) == 24 for r in got_records)
        for rec in want:
            texts, vectors = store.get_captions(rec.video_id, source="minigpt", embedder_name=EMBEDDER)
            assert texts == old.get_captions(rec.video_id, source="minigpt", embedder_name=EMBEDDER)[0]
            np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)  # re-embedded
        assert store.get_rewrite("rw1") == {"text": "a person cooks"}
    again = _cli("store", "check", "--store", str(new))
    assert again.exit_code == 0 and "3 videos (3 complete, 0 ingested from files)" in again.output


def test_recover_refuses_to_write_into_the_broken_store(stores):
    got = _cli("store", "recover", "--store", str(stores["broken"]), "--to", str(stores["broken"]))
    assert got.exit_code == 2 and "is the broken store itself" in _one_line(got.output)


def test_videos_list_and_rm(tmp_path):
    long_id = "x" * 120
    folder = tmp_path / "store"
    _fill(folder, ["-dash_id", long_id], 3)
    listed = _cli("videos", "list", "--store", str(folder))
    assert listed.exit_code == 0, listed.output
    assert "3 videos in" in listed.output and long_id in listed.output and "/videos/a.mp4" in listed.output
    as_json = _cli("videos", "list", "--json", "--store", str(folder))
    assert as_json.exit_code == 0, as_json.output
    listed_ids = [record["video_id"] for record in json.loads(as_json.output)]  # one JSON document
    assert sorted(listed_ids) == sorted(["-dash_id", long_id, INGESTED])
    empty = _cli("videos", "list", "--json", "--store", str(tmp_path / "empty"))
    assert empty.exit_code == 0 and json.loads(empty.output) == [], empty.output

    gone = _cli("videos", "rm", "--store", str(folder), "--", "-dash_id", INGESTED)
    assert gone.exit_code == 0, gone.output
    assert f"removed -dash_id: 1 from videos, 3 from {CAPTIONS}" in gone.output
    assert f"removed {INGESTED}: 1 from videos, 2 from {CAPTIONS}, 1 from aware_captions." in gone.output
    store = open_store(folder)
    assert [r.video_id for r in store.list_videos()] == [long_id]
    assert store.count(CAPTIONS) == 3 and store.count("frames.ViT-B-32") == 0
    assert not store.has_clip_records("-dash_id") and not store.has_clip_records(INGESTED)

    unknown = _cli("videos", "rm", "--store", str(folder), "nope")
    assert unknown.exit_code == 2
    assert "video 'nope' is not in the store" in _one_line(unknown.output)
    close_stores()


def test_file_names_are_listed_and_recovered_as_they_are_not_as_markup_or_terminal_codes(tmp_path):
    """`[b]` in a name is no bold tag, an ESC shows as \\x1b, and the re-ingest command of a
    name with spaces is quoted for the shell, so it can be pasted."""
    folder = tmp_path / "store"
    _fill(folder, ["vid0"], 3)
    odd = "/videos/[b]old \x1b[2Jcut.mp4"
    with Store(folder) as store:
        store.put_video(dataclasses.replace(store.video(INGESTED), path=odd))
    listed = _cli("videos", "list", "--store", str(folder))
    assert listed.exit_code == 0, listed.output
    assert "/videos/[b]old \\x1b[2Jcut.mp4" in listed.output and "\x1b" not in listed.output
    close_stores()
    new = tmp_path / "new"
    got = _cli("store", "recover", "--store", str(folder), "--to", str(new))
    assert got.exit_code == 0, got.output
    assert "re-ingest: granalign index '/videos/[b]old \\x1b[2Jcut.mp4'" in got.output, got.output
    close_stores()


def test_check_recover_and_rm_print_video_ids_as_they_are_not_as_markup(tmp_path):
    """Ids are free text (an import's ``vid``): ``a[b]c`` lost its ``[b]`` as a bold tag and
    ``[red]x`` its ``[red]`` in check's problem and unfinished lines (recover's unfinished line
    escaped them), and in recover's left-out line and rm's line."""
    folder, new = tmp_path / "store", tmp_path / "new"
    bold, red = "a[b]c", "[red]x"
    _fill(folder, [bold], 5)
    vec = np.random.default_rng(1).standard_normal((2, 384)).astype(np.float32)
    with Store(folder) as store:
        _add_caption_rows(store, bold, [5])
        store.put_clip_captions(
            red, [0, 1], ["x", "y"], vec, source="m", prompt_hash="", embedder_name=EMBEDDER
        )
    close_stores()
    got = _cli("store", "check", "--store", str(folder))
    assert got.exit_code == 1, got.output
    assert _problems(got.output) == [_extra(bold, 6, 5)], got.output
    assert f"unfinished: video {red}: 2 clips stored" in got.output, got.output
    assert f"granalign videos rm -- {red}" in got.output, got.output
    got = _cli("store", "recover", "--store", str(folder), "--to", str(new))
    close_stores()
    assert got.exit_code == 0, got.output
    assert f"left out: {bold}: 1 caption row past its 5 clips" in got.output, got.output
    got = _cli("videos", "rm", "--store", str(folder), "--", bold, red)
    close_stores()
    assert got.exit_code == 0, got.output
    assert f"removed {bold}: " in got.output and f"removed {red}: " in got.output, got.output


# -- caption rows that do not match a video's record ---------------------------------------------


def _add_caption_rows(
    store: Store, vid: str, clips: list[int], *, source: str = "minigpt", prompt_hash: str = "imported"
) -> None:
    """Caption rows written straight into the Chroma collection, past the import's checks: the
    old tail a re-import of a shorter file left before such rows were cleared (246422f)."""
    store._collection(CAPTIONS).upsert(
        ids=[caption_id(vid, c, source, prompt_hash) for c in clips],
        embeddings=np.random.default_rng(len(clips)).standard_normal((len(clips), 384)).astype(np.float32),
        documents=[f"{vid} old clip {c}" for c in clips],
        metadatas=[{"video_id": vid, "clip": c, "source": source, "prompt_hash": prompt_hash} for c in clips],
    )


def _problems(output: str) -> list[str]:
    return [x for x in output.splitlines() if x.startswith("problem:")]


def _extra(vid: str, have: int, n_clips: int) -> str:
    return (
        f"problem: video {vid}: {have} captions in {CAPTIONS} but {n_clips} clips in its record "
        f"({have - n_clips} extra row{'s' if have - n_clips > 1 else ''} past its last clip); "
        f"rebuild it: granalign videos rm -- {vid}, then re-run its import or ingest"
    )


def test_check_reports_caption_rows_past_a_videos_last_clip(stores, tmp_path):
    """The rows are read with the video (503 captions for 500 clips), so the store is not healthy."""
    folder = tmp_path / "extra"
    shutil.copytree(stores["healthy"], folder)
    with Store(folder) as store:
        _add_caption_rows(store, "vid1", [500, 501, 502])
        assert len(store.get_captions("vid1", source="minigpt", embedder_name=EMBEDDER)[0]) == 503
    got = _cli("store", "check", "--store", str(folder))
    assert got.exit_code == 1, got.output
    assert _problems(got.output) == [_extra("vid1", 503, 500)]


def test_check_counts_only_the_rows_a_video_is_read_with(tmp_path):
    """Fewer rows are reported as before; rows of another captioner or caption prompt (a
    re-ingest with other settings) are not read with the video, so they are no problem."""
    folder = tmp_path / "store"
    _fill(folder, ["vid0"], 5)
    with Store(folder) as store:
        store.put_video(dataclasses.replace(store.video(INGESTED), caption_prompt="p"))
        store._collection(CAPTIONS).delete(ids=[caption_id("vid0", 4, "minigpt", "imported")])
        _add_caption_rows(store, INGESTED, [0, 1, 2], source="other", prompt_hash="p")
        _add_caption_rows(store, INGESTED, [0, 1, 2], source="qwen", prompt_hash="old")
    rebuild = "rebuild it: granalign videos rm -- vid0, then re-run its import or ingest"
    got = _cli("store", "check", "--store", str(folder))
    assert got.exit_code == 1, got.output
    assert _problems(got.output) == [f"problem: video vid0: 4 of 5 captions in {CAPTIONS}; {rebuild}"]
    with Store(folder) as store:
        _add_caption_rows(store, INGESTED, [2], source="qwen", prompt_hash="p")
    got = _cli("store", "check", "--store", str(folder))
    assert _problems(got.output) == [
        _extra(INGESTED, 3, 2),
        f"problem: video vid0: 4 of 5 captions in {CAPTIONS}; {rebuild}",
    ]


def test_the_rebuild_check_names_leaves_a_healthy_store(tmp_path):
    folder = tmp_path / "store"
    _fill(folder, ["vid0"], 5)
    with Store(folder) as store:
        _add_caption_rows(store, "vid0", [5, 6])
    assert _problems(_cli("store", "check", "--store", str(folder)).output) == [_extra("vid0", 7, 5)]
    assert _cli("videos", "rm", "--store", str(folder), "--", "vid0").exit_code == 0
    close_stores()
    texts = [f"clip {i} again" for i in range(5)]
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"vid": "vid0", "clip_len_s": 2, "captions": texts}) + "\n")
    with Store(folder) as store:
        import_captions(store, make_embedder(f"local:{EMBEDDER}"), caps, source="minigpt")
        assert store.get_captions("vid0", source="minigpt", embedder_name=EMBEDDER)[0] == texts
    got = _cli("store", "check", "--store", str(folder))
    assert got.exit_code == 0 and not _problems(got.output), got.output


def test_check_names_an_unfinished_ingest_which_videos_list_does_not_show(tmp_path):
    """A killed ingest leaves whole clips and no video record: the store is fine (a re-run
    finishes it), but only check can name its id, which `videos rm` needs once the file is gone."""
    folder = tmp_path / "store"
    _fill(folder, ["vid0"], 5)
    killed = "sha256-killedmidway"
    vec = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
    with Store(folder) as store:
        store.put_frames(killed, [0, 1, 2], vec, clip_model="ViT-B-32", sampling_key="s")
        store.put_clip_captions(
            killed, [0, 1, 2], ["a", "b", "c"], vec, source="qwen", prompt_hash="p", embedder_name=EMBEDDER
        )
    assert killed not in _cli("videos", "list", "--store", str(folder)).output
    close_stores()  # the check's child process opens the folder
    got = _cli("store", "check", "--store", str(folder))
    assert got.exit_code == 0 and not _problems(got.output), got.output
    unfinished = [x for x in got.output.splitlines() if x.startswith("unfinished:")]
    assert unfinished == [
        f"unfinished: video {killed}: 3 clips stored, no video record (an ingest or import that "
        f"stopped): re-run it to finish it, or remove them: granalign videos rm -- {killed}"
    ], got.output
    assert _cli("videos", "rm", "--store", str(folder), "--", killed).exit_code == 0
    close_stores()
    got = _cli("store", "check", "--store", str(folder))
    assert got.exit_code == 0 and "unfinished:" not in got.output, got.output


def test_recover_lists_the_unfinished_ingests_check_lists(tmp_path):
    """Clip rows without a video record (a killed ingest, a stopped import) were passed over in
    silence; recover names each as check does, says it is not recovered and what to re-run."""
    folder, new = tmp_path / "store", tmp_path / "new"
    _fill(folder, ["vid0"], 5)
    vec = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
    with Store(folder) as store:
        store.put_frames("sha256-killed", [0, 1, 2], vec, clip_model="ViT-B-32", sampling_key="s")
        store.put_clip_captions(
            "sha256-killed",
            [0, 1],
            ["a", "b"],
            vec[:2],
            source="qwen",
            prompt_hash="p",
            embedder_name=EMBEDDER,
        )
        store.put_clip_captions(
            "stopped-import", [0, 1], ["x", "y"], vec[:2], source="m", prompt_hash="", embedder_name=EMBEDDER
        )
    close_stores()
    checked = _cli("store", "check", "--store", str(folder)).output
    assert "unfinished: video sha256-killed: 3 clips stored" in checked, checked
    assert "unfinished: video stopped-import: 2 clips stored" in checked, checked
    got = _cli("store", "recover", "--store", str(folder), "--to", str(new))
    close_stores()
    assert got.exit_code == 0, got.output
    flat = " ".join(got.output.split())
    tail = (
        "(an ingest or import that stopped; its clips are not copied): "
        f"re-run that ingest or import with --store {new}"
    )
    for video_id, n in (("sha256-killed", 3), ("stopped-import", 2)):
        line = f"not recovered: unfinished video {video_id}: {n} clips stored, no video record {tail}"
        assert line in flat, got.output
    with Store(new) as store:
        assert not store.has_clip_records("sha256-killed") and not store.has_clip_records("stopped-import")


def test_recover_leaves_out_caption_rows_past_a_videos_last_clip(tmp_path):
    """Such a video came back as lost ("8 of 5 captions readable"); its 5 clips are all there."""
    folder, new = tmp_path / "store", tmp_path / "new"
    _fill(folder, ["vid0", "vid1"], 5)
    with Store(folder) as store:
        _add_caption_rows(store, "vid0", [5, 6, 7])
        want = store.get_captions("vid0", source="minigpt", embedder_name=EMBEDDER)[0][:5]
    got = _cli("store", "recover", "--store", str(folder), "--to", str(new))
    close_stores()
    assert got.exit_code == 0, got.output
    assert f"recovered into {new}: 2 videos from their captions" in got.output
    assert "left out: vid0: 3 caption rows past its 5 clips" in got.output
    assert "not recovered" not in got.output
    with Store(new) as store:
        assert store.get_captions("vid0", source="minigpt", embedder_name=EMBEDDER)[0] == want
    again = _cli("store", "check", "--store", str(new))
    assert again.exit_code == 0 and not _problems(again.output), again.output


def test_check_reports_extra_caption_rows_on_a_chroma_server(tmp_path):
    from tests.servers import chroma_server

    with chroma_server(tmp_path) as url:
        store = Store(None, url)
        _fill_store(store, ["vid0"], 5)
        _add_caption_rows(store, "vid0", [5])
        store.close()
        got = _cli("store", "check", env={"CHROMA_URL": url})
    assert got.exit_code == 1, got.output
    assert f"ok: store {url}: 2 videos" in got.output
    assert _problems(got.output) == [_extra("vid0", 6, 5)]
