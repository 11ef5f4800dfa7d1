"""Caption import embeds each distinct text once per store; the ONNX int8 MiniLM backend (real models)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from granalign.backends.embedder import TextEmbedder, make_embedder
from granalign.errors import ConfigError, InputError
from granalign.io import captions_import
from granalign.io.caption_embedding import chunks_of_videos
from granalign.io.captions_import import IMPORT_PROMPT_HASH, import_captions, read_captions_file
from granalign.io.store import Store, caption_id

ROWS = [
    {
        "vid": "v1",
        "clip_len_s": 2,
        "captions": ["a dog runs on grass", "a dog runs on grass", "a cat sleeps"],
    },
    {"vid": "v2", "clip_len_s": 2, "captions": ["a cat sleeps", "people cook in a kitchen"]},
    {"vid": "v3", "clip_len_s": 2, "captions": ["a dog runs on grass", "a man chops onions on a board"]},
    {"vid": "v4", "clip_len_s": 2, "captions": ["a city street at night", "people cook in a kitchen"]},
]
DISTINCT = sorted({c for r in ROWS for c in r["captions"]})  # 5 texts in 9 captions


class CountingEmbedder:
    """The real embedder, recording every text it is asked to embed."""

    def __init__(self, inner: TextEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture
def captions(tmp_path: Path) -> Path:
    path = tmp_path / "caps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture
def counting() -> CountingEmbedder:
    return CountingEmbedder(make_embedder("local:all-MiniLM-L6-v2"))


def _stored(store: Store, name: str) -> dict[str, tuple[list[str], NDArray[np.float32]]]:
    return {r["vid"]: store.get_captions(r["vid"], source="caps", embedder_name=name) for r in ROWS}


@pytest.mark.parametrize("chunk_texts", [1, 3, 1000])
def test_each_distinct_text_is_embedded_once_across_videos_and_chunks(
    tmp_path: Path, captions: Path, counting: CountingEmbedder, chunk_texts: int
) -> None:
    store = Store(tmp_path / "s")
    report = import_captions(store, counting, captions, source="caps", chunk_texts=chunk_texts)
    assert (report.imported, report.captions) == (4, 9)
    assert sorted(counting.texts) == DISTINCT  # texts shared by videos in different chunks: once
    for row in ROWS:
        texts, emb = store.get_captions(row["vid"], source="caps", embedder_name=counting.name)
        assert texts == row["captions"] and emb.shape == (len(texts), 384)


def test_rerun_and_reimport_under_another_source_embed_nothing(
    tmp_path: Path, captions: Path, counting: CountingEmbedder
) -> None:
    store = Store(tmp_path / "s")
    import_captions(store, counting, captions, source="caps")
    counting.texts.clear()
    again = import_captions(store, counting, captions, source="caps")
    assert (again.imported, again.skipped) == (0, 4) and counting.texts == []
    other = import_captions(store, counting, captions, source="other")  # new ids, known texts
    assert other.imported == 4 and counting.texts == []
    assert store.get_captions("v1", source="other", embedder_name=counting.name)[0] == ROWS[0]["captions"]


def test_killed_import_resumes_and_ends_as_a_clean_import(
    tmp_path: Path, captions: Path, counting: CountingEmbedder
) -> None:
    store = Store(tmp_path / "s")

    def crash_after_first(done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_captions(
            store,
            counting,
            captions,
            source="caps",
            batch_videos=1,
            chunk_texts=3,
            on_progress=crash_after_first,
        )
    assert store.complete_video_ids(["v1", "v2", "v3", "v4"], source="caps", embedder_name=counting.name) == {
        "v1"
    }
    resumed = import_captions(store, counting, captions, source="caps", batch_videos=1, chunk_texts=3)
    assert (resumed.skipped, resumed.imported) == (1, 3)
    assert sorted(counting.texts) == DISTINCT  # the killed run's texts were not embedded again

    clean = Store(tmp_path / "clean")
    import_captions(clean, counting.inner, captions, source="caps")
    got, want = _stored(store, counting.name), _stored(clean, counting.name)
    for vid, (texts, emb) in want.items():
        assert got[vid][0] == texts and np.allclose(got[vid][1], emb, atol=1e-6)


def test_float_import_stores_the_same_ids_and_embeddings_as_before(tmp_path: Path, captions: Path) -> None:
    """Before: one embed call over the sorted distinct texts of each 32-video chunk."""
    embedder = make_embedder("local:all-MiniLM-L6-v2")
    store = Store(tmp_path / "s")
    import_captions(store, embedder, captions, source="caps", chunk_texts=2)
    before = dict(zip(DISTINCT, embedder.embed(DISTINCT), strict=True))
    name = store.captions_collection(embedder.name)
    ids = [
        caption_id(r["vid"], i, "caps", IMPORT_PROMPT_HASH) for r in ROWS for i in range(len(r["captions"]))
    ]
    assert store.existing_ids(name, ids) == set(ids) and store.count(name) == len(ids)
    for vid, (texts, emb) in _stored(store, embedder.name).items():
        assert np.allclose(emb, np.stack([before[t] for t in texts]), atol=1e-6), vid


def test_chunks_never_split_a_video(captions: Path) -> None:
    videos = list(read_captions_file(captions))
    chunks = list(chunks_of_videos(videos, chunk_texts=3))
    assert [v.vid for c in chunks for v in c] == ["v1", "v2", "v3", "v4"]
    assert [[v.vid for v in c] for c in chunks] == [["v1", "v2"], ["v3", "v4"]]


# -- ONNX backends -----------------------------------------------------------------------------
SENTENCES = [
    "a dog runs on the beach",
    "A woman is cooking pasta in a small kitchen.",
    "city lights at night",
    "two men play chess in a park",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Export into a folder of the test's own, offline, and forget embedders built elsewhere."""
    folder = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRANALIGN_ONNX_CACHE", str(folder))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        make_embedder.cache_clear()
        yield folder
    make_embedder.cache_clear()


def test_int8_backend_loads_offline_and_is_close_to_float(onnx_cache: Path) -> None:
    reference = make_embedder("local:all-MiniLM-L6-v2").embed(SENTENCES)
    int8 = make_embedder("local:all-MiniLM-L6-v2#onnx-int8")
    vectors = int8.embed(SENTENCES)
    assert int8.name == "all-MiniLM-L6-v2#onnx-int8"
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert ((vectors * reference).sum(axis=1) > 0.99).all()
    assert (onnx_cache / next(p.name for p in onnx_cache.iterdir()) / "model_int8.onnx").exists()
    assert np.array_equal(int8.embed(SENTENCES[::-1]), vectors[::-1])  # rows follow the input order


def test_onnx_float_backend_matches_pytorch(onnx_cache: Path) -> None:
    reference = make_embedder("local:all-MiniLM-L6-v2").embed(SENTENCES)
    assert np.allclose(make_embedder("local:all-MiniLM-L6-v2#onnx").embed(SENTENCES), reference, atol=1e-5)


def test_int8_and_float_vectors_live_in_separate_collections(
    tmp_path: Path, captions: Path, onnx_cache: Path
) -> None:
    store = Store(tmp_path / "s")
    float_emb, int8 = (
        make_embedder("local:all-MiniLM-L6-v2"),
        make_embedder("local:all-MiniLM-L6-v2#onnx-int8"),
    )
    import_captions(store, float_emb, captions, source="caps")
    report = import_captions(store, int8, captions, source="caps")
    assert report.imported == 4  # complete for the float embedder is not complete for int8
    assert store.captions_collection(int8.name) != store.captions_collection(float_emb.name)
    assert store.count(store.captions_collection(int8.name)) == 9
    assert store.count(store.texts_collection(int8.name)) == len(DISTINCT)


def test_unknown_backend_suffix_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"#onnx-int4 is unknown; allowed: #onnx, #onnx-int8"):
        make_embedder("local:all-MiniLM-L6-v2#onnx-int4")


def _library(tmp_path: Path, n: int, tail: str = "") -> Path:
    path = tmp_path / "library.jsonl"
    rows = [
        {"vid": f"w{i}", "clip_len_s": 2, "captions": [f"scene {i}", "a dog runs on grass"]} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


@pytest.mark.parametrize(
    ("group_videos", "chunk_texts", "first_write_by"),
    [(5, 4, 45), (1000, 4, 44)],  # groups end at 5 videos, or at 4 captions (2 videos)
)
def test_a_library_file_streams_through_the_import(
    tmp_path: Path,
    counting: CountingEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    group_videos: int,
    chunk_texts: int,
    first_write_by: int,
) -> None:
    """Memory holds a group and a chunk, not the file: videos are written while it is still read."""
    path = _library(tmp_path, 40)
    monkeypatch.setattr(captions_import, "GROUP_VIDEOS", group_videos)
    read: list[str] = []
    real_read = captions_import.read_captions_file

    def spy(p: Path) -> Iterator[captions_import.CaptionedVideo]:
        for video in real_read(p):
            read.append(video.vid)
            yield video

    monkeypatch.setattr(captions_import, "read_captions_file", spy)
    store = Store(tmp_path / "s")
    real_put = store.put_video
    read_at_write: list[int] = []

    def put_video(record: Any) -> None:
        read_at_write.append(len(read))
        real_put(record)

    monkeypatch.setattr(store, "put_video", put_video)
    report = import_captions(store, counting, path, source="caps", chunk_texts=chunk_texts)
    assert (report.total, report.imported) == (40, 40)
    assert len(read) == 80  # a validating pass, then the importing pass
    assert read_at_write[0] <= first_write_by  # written after one group of the second pass
    assert len(read) - read_at_write[0] >= 30  # most of the file is read after that write
    assert len(counting.texts) == len(set(counting.texts)) == 41  # 40 scenes and the shared text


def test_a_bad_last_line_stops_the_import_before_anything_is_written(
    tmp_path: Path, counting: CountingEmbedder
) -> None:
    path = _library(tmp_path, 40, tail=json.dumps({"vid": "w40", "captions": ["no clip length"]}) + "\n")
    store = Store(tmp_path / "s")
    missing = r"library.jsonl:41: 'clip_len_s' \(seconds per caption\) is missing"
    with pytest.raises(InputError, match=missing):
        import_captions(store, counting, path, source="caps")
    assert counting.texts == []
    assert store.list_videos() == []
