"""Chroma store and caption import: idempotent, resumable, clear errors (real MiniLM, real Chroma)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from granalign.backends.embedder import make_embedder
from granalign.errors import ConfigError, InputError
from granalign.io.captions_import import import_captions, read_captions_file
from granalign.io.store import Store


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {
        "vid": "v1",
        "clip_len_s": 2,
        "captions": ["a dog runs on grass", "a dog runs on grass", "a cat sleeps"],
    },
    {"vid": "v2", "clip_len_s": 2, "captions": ["people cook in a kitchen", "a man chops onions"]},
    {"vid": "v3", "clip_len_s": 2, "captions": ["a city street at night"], "duration": 2.5},
]


@pytest.fixture
def embedder():
    return make_embedder("local:all-MiniLM-L6-v2")


def test_real_minilm_embeddings_are_unit_norm(embedder):
    vec = embedder.embed(["a dog runs", "a cat sleeps"])
    assert vec.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert embedder.name == "all-MiniLM-L6-v2"


def test_import_is_idempotent_and_reads_back_in_clip_order(tmp_path, embedder):
    store = Store(tmp_path / "s")
    path = _write(tmp_path / "caps.jsonl", ROWS)
    first = import_captions(store, embedder, path, source="caps")
    assert (first.imported, first.skipped, first.captions) == (3, 0, 6)
    col = store.captions_collection(embedder.name)
    n = store.count(col)
    second = import_captions(store, embedder, path, source="caps")
    assert (second.imported, second.skipped) == (0, 3)
    assert store.count(col) == n == 6
    texts, emb = store.get_captions("v1", source="caps", embedder_name=embedder.name)
    assert texts == ROWS[0]["captions"]
    assert emb.shape == (3, 384)
    assert np.allclose(emb[0], emb[1])
    rec = store.video("v3")
    assert rec is not None and rec.duration_s == 2.5 and rec.n_clips == 1 and not rec.has_frames


def test_killed_import_resumes_only_unfinished_videos(tmp_path, embedder):
    """Simulate a crash after the first batch: the next run imports only what is missing."""
    store = Store(tmp_path / "s")
    path = _write(tmp_path / "caps.jsonl", ROWS)
    calls: list[int] = []

    def crash_after_first(done: int, total: int) -> None:
        calls.append(done)
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_captions(store, embedder, path, source="caps", batch_videos=1, on_progress=crash_after_first)
    again = import_captions(store, embedder, path, source="caps", batch_videos=1)
    assert again.skipped == 1 and again.imported == 2


def test_import_only_subset(tmp_path, embedder):
    store = Store(tmp_path / "s")
    path = _write(tmp_path / "caps.jsonl", ROWS)
    rep = import_captions(store, embedder, path, source="caps", only={"v2"})
    assert (rep.total, rep.imported) == (1, 1)
    assert store.video("v1") is None


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"vid": "", "captions": ["x"]}', "'vid'"),
        ('{"vid": "a", "captions": []}', "'captions'"),
        ('{"vid": "a", "captions": [1, 2]}', "'captions'"),
        ('{"vid": "a", "captions": ["x"], "clip_len_s": -1}', "'clip_len_s'"),
        ('{"vid": "a", "captions": ["x"]}', "'clip_len_s' (seconds per caption) is missing"),
        ('{"vid": "../../etc/passwd", "clip_len_s": 2, "captions": ["x"]}', "cannot be a store id"),
        ('{"vid": "clip.mp4", "clip_len_s": 2, "captions": ["x"]}', "cannot be a store id"),
        ('{"vid": "~me", "clip_len_s": 2, "captions": ["x"]}', "cannot be a store id"),
        ('{"vid": " a", "clip_len_s": 2, "captions": ["x"]}', "cannot be a store id"),
        ('{"vid": "a\\tb", "clip_len_s": 2, "captions": ["x"]}', "cannot be a store id"),
        (  # refused by iter_jsonl with the field, before any caption is validated
            '{"vid": "a", "clip_len_s": 2, "captions": ["x", "a \\ud800 b"]}',
            "'captions'[1] is not valid Unicode",
        ),
        ('{"vid": "a", "captions": ["x"]', "malformed JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_malformed_caption_lines_name_file_and_line(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"vid": "ok", "clip_len_s": 2, "captions": ["fine"]}\n' + line + "\n")
    with pytest.raises(InputError) as err:
        list(read_captions_file(path))
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


def test_duplicate_video_and_missing_file(tmp_path):
    path = _write(tmp_path / "dup.jsonl", [ROWS[0], ROWS[0]])
    with pytest.raises(InputError, match="appears twice"):
        list(read_captions_file(path))
    with pytest.raises(InputError, match="file not found"):
        list(read_captions_file(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="is a directory"):
        list(read_captions_file(tmp_path))


def test_rewrite_cache_round_trip(tmp_path):
    store = Store(tmp_path / "s")
    store.put_rewrites({"k1": {"pair_id": "core", "simplified": "a", "detailed": "b"}}, {"k1": "q"})
    assert store.get_rewrite("k1") == {"pair_id": "core", "simplified": "a", "detailed": "b"}
    assert store.get_rewrite("missing") is None
    assert set(store.get_rewrites(["k1", "k2"])) == {"k1"}


def test_bad_chroma_url_is_a_config_error():
    with pytest.raises(ConfigError, match="CHROMA_URL"):
        Store(None, "ftp://nowhere")


def test_import_against_a_real_chroma_server(tmp_path, embedder):
    """Same import through ``chroma run`` on loopback (the CHROMA_URL deployment)."""
    from tests.servers import chroma_server

    with chroma_server(tmp_path) as url:
        store = Store(None, url)
        path = _write(tmp_path / "caps.jsonl", ROWS)
        assert import_captions(store, embedder, path, source="caps").imported == 3
        assert import_captions(store, embedder, path, source="caps").skipped == 3
        texts, emb = store.get_captions("v2", source="caps", embedder_name=embedder.name)
        assert texts == ROWS[1]["captions"] and emb.shape == (2, 384)


def test_the_shipped_caption_file_states_its_clip_length_and_ids():
    """The demo's MiniGPT-v2 file has clip_len_s on every line and ids like '-4Mlqc7PbZY_360.0_510.0'."""
    from tools.demo_data import DEMO

    videos = list(read_captions_file(DEMO.captions))
    assert len(videos) == 100 and {v.clip_len_s for v in videos} == {2.0}
    assert any(v.vid.startswith("-") for v in videos)


def test_reimport_after_a_kill_before_the_video_record_keeps_no_old_clips(tmp_path, embedder, monkeypatch):
    """Killed after a video's captions, before its record; the file then shrinks: the re-import
    must read back the new captions only, not the new ones followed by the old file's tail."""
    store = Store(tmp_path / "s")
    old = [f"old {i}" for i in range(6)]
    path = _write(tmp_path / "caps.jsonl", [{"vid": "v1", "clip_len_s": 2, "captions": old}])

    def killed(record: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "put_video", killed)
    with pytest.raises(KeyboardInterrupt):
        import_captions(store, embedder, path, source="caps")
    monkeypatch.undo()
    _write(path, [{"vid": "v1", "clip_len_s": 2, "captions": ["new a", "new b"]}])
    assert import_captions(store, embedder, path, source="caps").imported == 1
    texts, emb = store.get_captions("v1", source="caps", embedder_name=embedder.name)
    assert texts == ["new a", "new b"] and emb.shape == (2, 384)
    assert store.video("v1").n_clips == 2
