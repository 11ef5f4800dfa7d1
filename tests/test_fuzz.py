"""Fuzzing (hypothesis) of the untrusted-input boundaries and of the core math.

Four contracts, each checked on generated inputs:

* the JSONL readers (``granalign.io.jsonl``, ``tools.bench.read_annotations``, the captions
  reader, the ``file:`` rewriter): any bytes give either a parsed result or an ``InputError``
  that names the file (and a real line of it), never another exception type;
* backend specs (``granalign.specs.parse_spec`` and the ``make_*`` factories): any string gives
  a valid ``BackendSpec`` or a ``ConfigError``, and an invalid spec never builds a backend;
* tool arguments (``tools.safety`` through ``MomentRetriever.prepare`` and the LangChain tool):
  any value gives a clean request or an ``InputError`` with a message, never a file outside the
  configured roots, never a file opened at all while validating;
* the math (similarity, fusion, smoothing, feedback, proposals, NMS, moments): random shapes
  (one clip, empty), NaN/inf where an array is accepted: finite outputs in range, windows
  inside ``[0, duration]`` with start < end, scores sorted, or an ``InputError``.
  ``tests/test_core_math.py`` already pins the properties of unit-interval curves near real
  video lengths; the cases here are the ones it does not generate.

Every bug this file found (pathological JSON, unreadable files, infinite clip lengths, boolean
durations, durations that round to zero or overflow, overflowing norms, spreads and smoothing
sums) is fixed in the library and kept below as a regression test with its minimal example.
A new finding goes there as ``xfail(strict=True)`` naming the file and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from granalign.backends.rewriter import make_rewriter
from granalign.core.feedback import feedback_queries
from granalign.core.fusion import granular_fusion, variant_scores
from granalign.core.moments import clips_to_seconds, localize_moments, saliency
from granalign.core.nms import temporal_iou, temporal_nms
from granalign.core.proposals import ProposalParams, contrast_windows, generate_proposals, merge_clips
from granalign.core.similarity import cosine_similarity, minmax_normalise, normalised_similarity
from granalign.core.smoothing import gaussian_smooth, smoothed_similarity
from granalign.errors import ConfigError, InputError
from granalign.io.captions_import import read_captions_file
from granalign.io.jsonl import iter_jsonl
from granalign.rewrite import FileRewriter
from granalign.specs import ENGINES, BackendSpec, parse_spec
from graphs.context import Context
from tools.bench import read_annotations
from tools.langchain_tool import (
    MAX_TOP_K,
    MomentRetriever,
    RetrieveMomentsInput,
    ToolSettings,
    make_retrieve_moments_tool,
)
from tools.safety import MAX_QUERY_CHARS, UnsafeInputError

FAST = settings(max_examples=80, deadline=None, database=None)
MEDIUM = settings(max_examples=200, deadline=None, database=None)
WITH_MODULE_FIXTURE = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# =============================================================================================
# JSONL readers
# =============================================================================================

READERS: dict[str, Callable[[Path], object]] = {
    "iter_jsonl": lambda p: list(iter_jsonl(p)),
    "read_annotations": read_annotations,
    "read_captions_file": lambda p: list(read_captions_file(p)),
    "FileRewriter": FileRewriter,
    "make_rewriter(file:)": lambda p: make_rewriter(f"file:{p}"),
}

FIELDS = (
    "qid",
    "query",
    "vid",
    "duration",
    "captions",
    "clip_len_s",
    "rephrased_query",
    "rewrites",
    "pair_id",
    "simplified",
    "detailed",
    "fallback",
    "reason",
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), kids, max_size=5)
    ),
    max_leaves=12,
)


@st.composite
def near_valid_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A row every reader would accept, with up to three fields replaced or removed.

    Random dicts fail on their first field; starting from a valid row reaches every check.
    Small id ranges make duplicate qids and vids (another error path) common.
    """
    row: dict[str, Any] = {
        "qid": draw(st.integers(0, 3) | st.sampled_from(["q0", "q1"])),
        "query": draw(st.sampled_from(["a man cooks", "  a dog runs ", "a girl sings"])),
        "vid": f"v{draw(st.integers(0, 3))}",
        "duration": draw(st.sampled_from([150, 150.0, 4.0, 1e-3])),
        "clip_len_s": draw(st.sampled_from([2, 2.0, 0.5])),
        "captions": ["a man", "a pot on a stove"],
        "rephrased_query": ["a man is cooking"],
        "rewrites": [{"pair_id": "p1", "simplified": "man cooks", "detailed": "a man cooks food"}],
    }
    for key in draw(st.lists(st.sampled_from(sorted(row)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del row[key]
        else:
            row[key] = draw(json_values)
    return row


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


jsonl_lines = st.one_of(
    near_valid_rows().map(_dump),
    json_values.map(_dump),
    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [b"", b"   ", b"\t", b"NaN", b"{", b"}", b"[]", b"{}", b'{"a": Infinity}', b"\xef\xbb\xbf{}"]
    ),
    st.binary(max_size=24),
)
jsonl_files = st.one_of(
    st.lists(jsonl_lines, max_size=6).map(b"\n".join),
    st.lists(jsonl_lines, max_size=4).map(b"\r\n".join),
    st.binary(max_size=200),
)

_LINE_REF = re.compile(r":(\d+):")


def _check_reader_error(exc: InputError, path: Path, content: bytes) -> None:
    message = str(exc)
    assert str(path) in message, message  # names the file
    rest = message.split(str(path), 1)[1]
    ref = _LINE_REF.match(rest)
    if ref:  # and a line the file has
        assert 1 <= int(ref.group(1)) <= content.count(b"\n") + 1, message


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzfiles")


@pytest.mark.parametrize("reader", sorted(READERS))
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(content=jsonl_files)
def test_jsonl_readers_parse_or_raise_input_error(fuzz_dir: Path, reader: str, content: bytes) -> None:
    path = fuzz_dir / f"{reader.replace(':', '_').replace('(', '').replace(')', '')}.jsonl"
    path.write_bytes(content)
    try:
        got = READERS[reader](path)
    except InputError as exc:
        _check_reader_error(exc, path, content)
        event("refused")
        return
    event("parsed")
    # what a reader returns holds what its validation promised
    if reader == "read_annotations":
        assert isinstance(got, list) and got
        for ann in got:
            assert isinstance(ann.query, str) and ann.query.strip() and isinstance(ann.vid, str) and ann.vid
            assert math.isfinite(ann.duration) and ann.duration > 0
    elif reader == "read_captions_file":
        assert isinstance(got, list)
        assert len({v.vid for v in got}) == len(got)
        for video in got:
            assert video.captions and all(isinstance(c, str) for c in video.captions)
            assert math.isfinite(video.duration_s) and video.duration_s > 0 and video.clip_len_s > 0
    elif reader in ("FileRewriter", "make_rewriter(file:)"):
        assert isinstance(got, FileRewriter)
        variants = got.variants_for("a man cooks", 1)
        assert variants[0].simplified == "a man cooks"  # the original always comes first


@pytest.mark.parametrize("reader", ["iter_jsonl", "read_annotations", "read_captions_file", "FileRewriter"])
def test_jsonl_readers_refuse_missing_files_and_folders(fuzz_dir: Path, reader: str) -> None:
    for path, needle in (
        (fuzz_dir / "missing.jsonl", "file not found"),
        (fuzz_dir, "is a directory"),
        (fuzz_dir / "a\x00b.jsonl", "file not found"),
    ):
        with pytest.raises(InputError, match=needle):
            READERS[reader](path)


# =============================================================================================
# backend specs
# =============================================================================================

ROLES: dict[str, tuple[str, ...]] = {
    "rewriter": ("none", "file", "local", "openai"),
    "text embedder": ("local",),
    "CLIP model": ("local",),
    "captioner": ("local", "openai"),
}

spec_texts = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda e, sep, t: f"{e}{sep}{t}",
        st.sampled_from([*ENGINES, "NONE", "Local", "openai ", " file", "http", "hf", ""]),
        st.sampled_from([":", "::", "", " : ", "#"]),
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(
                [
                    "http://127.0.0.1:8000/v1#qwen",
                    "https://h#",
                    "#model",
                    "ftp://h#m",
                    "http://h#m#n",
                    "smollm2",
                    " ",
                    "\x00",
                ]
            ),
        ),
    ),
)


@MEDIUM
@given(spec=spec_texts, role=st.sampled_from(sorted(ROLES)))
def test_parse_spec_gives_a_valid_spec_or_config_error(spec: str, role: str) -> None:
    allowed = ROLES[role]
    try:
        parsed = parse_spec(spec, role=role, allowed=allowed)  # type: ignore[arg-type]
    except ConfigError as exc:
        assert role in str(exc)
        return
    assert isinstance(parsed, BackendSpec) and parsed.engine in allowed
    if parsed.engine == "none":
        assert parsed.target == "" and parsed.model == ""
    else:
        assert parsed.target
    if parsed.engine == "openai":
        assert parsed.target.startswith(("http://", "https://")) and parsed.model
    # the printed form parses back to the same spec (what a CLI echoes can be pasted back)
    assert parse_spec(str(parsed), role=role, allowed=allowed) == parsed  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["none:smollm2", "none: x"])
def test_parse_spec_refuses_a_target_after_none(spec: str) -> None:
    """A typo must not silently switch the backend off."""
    with pytest.raises(ConfigError, match="'none' takes nothing after it"):
        parse_spec(spec, role="rewriter")
    assert parse_spec("none:", role="rewriter").engine == "none"


@pytest.mark.parametrize("value", [None, 1, 2.5, b"local:x", True])
def test_parse_spec_refuses_non_strings(value: object) -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        parse_spec(value, role="rewriter")  # type: ignore[arg-type]


def _no_backend(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"an invalid spec built a backend: {args!r}")


@FAST
@given(spec=spec_texts)
def test_factories_refuse_invalid_specs_without_building_anything(spec: str) -> None:
    from granalign.backends import captioner, clip, embedder, llm_local, openai_llm
    from granalign.backends.captioner import make_captioner
    from granalign.backends.clip import make_clip_encoder
    from granalign.backends.embedder import make_embedder

    factories: dict[str, Callable[[str], object]] = {
        "rewriter": make_rewriter,
        "text embedder": make_embedder,
        "CLIP model": lambda s: make_clip_encoder(s, "none"),
        "captioner": make_captioner,
    }
    with pytest.MonkeyPatch.context() as mp:
        for module, name in (
            (embedder, "SentenceTransformerEmbedder"),
            (clip, "OpenClipEncoder"),
            (captioner, "LocalVLMCaptioner"),
            (captioner, "OpenAICaptioner"),
            (llm_local, "LocalLLMRewriter"),
            (openai_llm, "OpenAIRewriter"),
        ):
            mp.setattr(module, name, _no_backend)
        for role, make in factories.items():
            try:
                parse_spec(spec, role=role, allowed=ROLES[role])  # type: ignore[arg-type]
            except ConfigError:
                with pytest.raises(ConfigError):
                    make(spec)
                continue
            if role == "rewriter" and spec.strip() == "none":
                assert make(spec).name == "none"  # type: ignore[attr-defined]


# =============================================================================================
# tool arguments
# =============================================================================================

KNOWN_ID = "known_vid-1.0_2.0"
PARTIAL_ID = "partial_vid"
ALLOW = ("allowed.example", "*.media.example")


class _FakeStore:
    """The two store calls ``prepare`` makes, without Chroma."""

    def video(self, video_id: str) -> Any:
        if video_id == KNOWN_ID:
            return SimpleNamespace(complete=True)
        if video_id == PARTIAL_ID:
            return SimpleNamespace(complete=False)
        return None


class _FakeRetriever(MomentRetriever):
    """The real validation and result shaping; a fake store and a canned graph result."""

    def _store(self, ctx: Any) -> Any:
        return _FakeStore()

    def _stream_sync(self, req: Any) -> Any:
        yield "custom", {"stage": "load_video"}
        yield "values", {"video_id": req.video.value, "query": req.query, "moments": [[0.0, 2.0, 0.9]] * 30}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """root/ with videos, links in and out, a FIFO; outside/ with a secret video."""
    base = tmp_path_factory.mktemp("fuzztree").resolve()
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "clip.mp4").write_bytes(b"not really a video")
    (root / "sub" / "deep.mp4").write_bytes(b"x")
    (root / KNOWN_ID).write_bytes(b"a file named like an id")
    (outside / "secret.mp4").write_bytes(b"secret")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "inner_link.mp4").symlink_to(root / "clip.mp4")
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    os.mkfifo(root / "pipe.mp4")
    return {"root": root, "outside": outside}


PATH_PARTS = [
    "..",
    ".",
    "/",
    "//",
    "\\",
    "~",
    "\x00",
    "\n",
    "\u202e",
    "\u200b",
    "sub",
    "clip.mp4",
    "escape.mp4",
    "escape_dir",
    "secret.mp4",
    "inner_link.mp4",
    "loop.mp4",
    "pipe.mp4",
    KNOWN_ID,
    PARTIAL_ID,
    "{ROOT}",
    "{OUTSIDE}",
    "/etc/passwd",
    "/dev/zero",
    "%2e%2e",
    "C:",
    " ",
]
SCHEMES = [
    "http",
    "https",
    "HTTPS",
    "file",
    "data",
    "javascript",
    "ftp",
    "ws",
    "gopher",
    "s3",
    "smb",
    "about",
    "blob",
    "mailto",
    "jar",
    "view-source",
    "x-custom",
    "",
]
HOSTS = [
    "allowed.example",
    "ALLOWED.example.",
    "cdn.media.example",
    "media.example",
    "evil.example",
    "allowed.example.evil.example",
    "evil.example#@allowed.example",
    "allowed.example@evil.example",
    "user:pw@allowed.example",
    "allowed.example:99999",
    "allowed.example:80",
    "127.0.0.1",
    "[::1]",
    "169.254.169.254",
    "[fe80::1%25eth0]",
    "",
    "xn--80ak6aa92e.com",
]

video_args = st.one_of(
    st.lists(st.sampled_from(PATH_PARTS), min_size=1, max_size=8).map("".join),
    st.builds(
        lambda scheme, sep, host, path: f"{scheme}{sep}{host}/{path}",
        st.sampled_from(SCHEMES),
        st.sampled_from(["://", ":", ":/", ":///"]),
        st.sampled_from(HOSTS),
        st.text(max_size=10),
    ),
    st.text(max_size=40),
    st.integers(1015, 1030).map(lambda n: "a" * n),
    st.integers(120, 135).map(lambda n: "v" * n),
    st.sampled_from([KNOWN_ID, PARTIAL_ID, f" {KNOWN_ID} ", "", "   ", "."]),
    st.none() | st.integers() | st.floats() | st.booleans() | st.binary(max_size=8),
    st.lists(st.text(max_size=3), max_size=2),
)
query_args = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(["a", " ", "\x00", "\u202e", "\u200b", "\r\n", "\x1b[31m", "ﬁ", "é"]), max_size=30
    ).map("".join),
    st.integers(495, 505).map(lambda n: "x" * n),
    st.none() | st.integers() | st.floats() | st.booleans() | st.binary(max_size=8),
)
top_k_args = st.one_of(
    st.integers(-3, MAX_TOP_K + 3),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["5", "5.0", "NaN", "inf", "1e3", "", "0x5", " 5 "]),
    st.none(),
    st.just([5]),
)


GOOD_VIDEOS = [
    "clip.mp4",
    "sub/deep.mp4",
    "inner_link.mp4",
    "{ROOT}/clip.mp4",
    "{ROOT}//sub/./deep.mp4",
    KNOWN_ID,
    "https://allowed.example/v.mp4",
    "http://cdn.media.example:8080/a?b=c",
]


def _half(good: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` or ``hostile`` with even odds (``|`` would flatten ``hostile``'s many branches)."""
    return st.booleans().flatmap(lambda pick: good if pick else hostile)


# half plausible, half hostile: a request is only accepted when all three arguments are clean
mixed_videos = _half(st.sampled_from(GOOD_VIDEOS), video_args)
mixed_queries = _half(st.sampled_from(["a dog runs", " a man\tchops onions "]), query_args)
mixed_top_k = _half(st.integers(1, MAX_TOP_K), top_k_args)


def _expand(value: object, tree: dict[str, Path]) -> object:
    if isinstance(value, str):
        return value.replace("{ROOT}", str(tree["root"])).replace("{OUTSIDE}", str(tree["outside"]))
    return value


_OPENS: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENS is not None and event == "open" and isinstance(args[0], str | bytes):
        _OPENS.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while _OPENS is set


def _check_request(
    req: Any, video: object, query: object, top_k: object, tree: dict[str, Path], *, remote: bool
) -> None:
    assert type(top_k) is int and 1 <= top_k <= MAX_TOP_K and req.top_k == top_k
    assert isinstance(query, str) and isinstance(req.query, str) and 1 <= len(req.query) <= MAX_QUERY_CHARS
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Co", "Cs", "Cn") for ch in req.query)
    assert isinstance(video, str)
    kind, value = req.video.kind, req.video.value
    if kind == "id":
        assert value == video.strip()
        assert remote or value == KNOWN_ID  # an unknown or unfinished id is never accepted locally
    elif kind == "path":
        real = Path(value)
        assert str(real) == os.path.realpath(real)  # no link left to follow later
        assert real.is_relative_to(tree["root"]) and real.is_file()
    else:
        assert kind == "url"
        parts = urlsplit(value)
        assert parts.scheme.lower() in ("http", "https") and parts.username is None
        host = (parts.hostname or "").rstrip(".")
        assert host == "allowed.example" or host.endswith(".media.example")


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "remote"])
@WITH_MODULE_FIXTURE
@given(video=mixed_videos, query=mixed_queries, top_k=mixed_top_k)
def test_prepare_accepts_only_clean_arguments(
    tree: dict[str, Path], remote: bool, video: object, query: object, top_k: object
) -> None:
    global _OPENS
    video = _expand(video, tree)
    retriever = _FakeRetriever(
        ToolSettings(
            graph_url="http://127.0.0.1:9" if remote else "",
            context=Context(),
            roots=(tree["root"],),
            url_allowlist=ALLOW,
        )
    )
    _OPENS = []
    try:
        req = retriever.prepare(video, query, top_k)
    except InputError as exc:
        event("refused")
        assert str(exc).strip()
        if isinstance(video, str) and video and "\x00" not in video:
            assert str(tree["outside"]) not in str(exc) or str(tree["outside"]) in video  # no path disclosure
        return
    finally:
        opened, _OPENS = _OPENS, None
        # validating never reads a file: not a video, not anything outside the roots
        assert not [p for p in opened if tree["root"].parent in Path(os.path.abspath(p)).parents], opened
    event(f"accepted {req.video.kind}")
    _check_request(req, video, query, top_k, tree, remote=remote)


@WITH_MODULE_FIXTURE
@given(
    args=_half(
        st.fixed_dictionaries(
            {"video": mixed_videos, "query": mixed_queries}, optional={"top_k": mixed_top_k}
        ),
        st.fixed_dictionaries(
            {},
            optional={"video": video_args, "query": query_args, "top_k": top_k_args, "extra": json_scalars},
        ),
    )
)
def test_langchain_tool_answers_every_argument_set_with_text(
    tree: dict[str, Path], args: dict[str, Any]
) -> None:
    """What an LLM may send: the tool answers with text (a result or an error), never raises."""
    tool = make_retrieve_moments_tool(
        _FakeRetriever(ToolSettings(context=Context(), roots=(tree["root"],), url_allowlist=ALLOW))
    )
    args = {k: _expand(v, tree) for k, v in args.items()}
    out = tool.invoke(args)
    assert isinstance(out, str) and out
    if out.startswith(("Error:", "Invalid arguments for retrieve_moments")):
        event(out.split(":")[0])
        return
    event("answered")
    assert out.startswith("Video ") and "moment(s)" in out
    k = RetrieveMomentsInput.model_validate(args).top_k  # as the tool's schema coerced it
    assert out.count(" s (score ") == k  # top_k windows, no more


def test_prepare_refuses_unknown_and_unfinished_ids(tree: dict[str, Path]) -> None:
    retriever = _FakeRetriever(ToolSettings(context=Context(), roots=(tree["root"],), url_allowlist=ALLOW))
    assert retriever.prepare(KNOWN_ID, "a dog", 3).video.kind == "id"  # the id wins over the file
    with pytest.raises(UnsafeInputError, match="neither an indexed video id"):
        retriever.prepare(PARTIAL_ID, "a dog", 3)
    with pytest.raises(UnsafeInputError, match="symbolic link that leads outside"):
        retriever.prepare("escape_dir/secret.mp4", "a dog", 3)
    with pytest.raises(UnsafeInputError, match=r"'loop\.mp4' is neither an indexed video id"):
        retriever.prepare("loop.mp4", "a dog", 3)


# =============================================================================================
# core math
# =============================================================================================

moderate = st.floats(-1e6, 1e6, allow_subnormal=False)
unit = st.floats(0.0, 1.0)
bad_values = st.sampled_from([math.nan, math.inf, -math.inf])


@FAST
@given(
    data=st.data(),
    q=st.integers(1, 4),
    n=st.integers(1, 40),
    d=st.integers(1, 8),
    sigma=st.sampled_from([0.0, 0.5, 2.0, 50.0]),
)
def test_similarity_stack_is_finite_and_normalised(
    data: st.DataObject, q: int, n: int, d: int, sigma: float
) -> None:
    queries = data.draw(arrays(np.float64, (q, d), elements=moderate))
    captions = data.draw(arrays(np.float64, (n, d), elements=moderate))
    cos = cosine_similarity(queries, captions)
    assert cos.shape == (q, n) and np.all(np.isfinite(cos)) and np.all(np.abs(cos) <= 1.0)
    for g in (normalised_similarity(queries, captions), smoothed_similarity(queries, captions, sigma)):
        assert g.shape == (q, n) and np.all((g >= 0.0) & (g <= 1.0))
        for row in g:  # every row spans [0, 1] exactly, or is flat zero (no preference)
            assert (row.min() == 0.0 and row.max() == 1.0) or not row.any()
    if n == 1:
        assert not normalised_similarity(queries, captions).any()  # one clip: nothing to prefer


@FAST
@given(data=st.data(), m=st.integers(1, 3), n=st.integers(1, 30))
def test_feedback_rows_are_unit_or_zero(data: st.DataObject, m: int, n: int) -> None:
    d = data.draw(st.integers(1, 6))
    queries = data.draw(arrays(np.float64, (m, d), elements=moderate))
    captions = data.draw(arrays(np.float64, (n, d), elements=moderate))
    k, w = data.draw(st.integers(0, n + 2)), data.draw(st.floats(0.0, 2.0))
    out = feedback_queries(queries, captions, k=k, weight=w)
    assert out.shape == (m, d) and np.all(np.isfinite(out))
    if k and w:
        norms = np.linalg.norm(out, axis=1)
        assert np.all(np.isclose(norms, 1.0) | (norms == 0.0))


@FAST
@given(data=st.data(), m=st.integers(1, 3), n=st.integers(1, 30))
def test_fusion_ignores_nan_where_no_aware_caption(data: st.DataObject, m: int, n: int) -> None:
    """Documented: entries of g_detailed_aware outside aware_mask are ignored and may be NaN."""
    g_s = data.draw(arrays(np.float64, (m, n), elements=unit))
    mask = data.draw(arrays(np.bool_, (n,)))
    g_a = data.draw(arrays(np.float64, (m, n), elements=unit | bad_values))
    g_a[:, mask] = np.nan_to_num(g_a[:, mask], nan=0.5, posinf=1.0, neginf=0.0)
    curves = variant_scores(g_s, g_a, mask)
    fused = granular_fusion(g_s, g_a, mask)
    assert np.all(np.isfinite(curves)) and np.all((fused >= 0) & (fused <= 1))


@FAST
@given(data=st.data(), n=st.integers(1, 60))
def test_contrast_windows_properties(data: st.DataObject, n: int) -> None:
    scores = data.draw(arrays(np.float64, (n,), elements=unit))
    min_len = data.draw(st.integers(1, 12))
    max_windows = data.draw(st.integers(1, 6))
    dedup = data.draw(st.floats(0.05, 1.0))
    out = contrast_windows(
        scores,
        min_len=min_len,
        stride=data.draw(st.integers(1, 3)),
        max_windows=max_windows,
        max_candidates=data.draw(st.sampled_from([1, 50, 500_000])),
        dedup_iou=dedup,
    )
    assert out.ndim == 2 and out.shape[1] == 3 and out.shape[0] <= max_windows
    assert np.all(np.isfinite(out))
    starts, ends, sc = out[:, 0], out[:, 1], out[:, 2]
    assert np.all((starts >= 0) & (starts <= ends) & (ends < n))
    assert np.all(ends - starts + 1 >= min_len) and np.all(ends - starts + 1 < n)
    assert np.all((sc > 0.5) & (sc <= 1.0)) and np.all(np.diff(sc) <= 0)
    if out.shape[0] > 1:  # kept windows are thinned at dedup_iou (half-open clip intervals)
        iou = temporal_iou(np.column_stack((starts, ends + 1)), np.column_stack((starts, ends + 1)))
        np.fill_diagonal(iou, 0.0)
        assert np.all(iou < dedup)


@FAST
@given(ids=st.lists(st.integers(0, 200), max_size=30), gap=st.integers(1, 10))
def test_merge_clips_covers_every_id_once(ids: list[int], gap: int) -> None:
    runs = merge_clips(np.array(ids, dtype=np.int64), gap)
    assert runs.shape == (len(runs), 2)
    assert np.all(runs[:, 0] <= runs[:, 1])
    if len(runs) > 1:
        assert np.all(runs[1:, 0] - runs[:-1, 1] > gap)  # separate runs are more than gap apart
    for i in set(ids):
        assert np.sum((runs[:, 0] <= i) & (i <= runs[:, 1])) == 1
    assert {int(x) for x in runs.ravel()} <= set(ids)  # runs start and end on real ids


@FAST
@given(a=arrays(np.float64, st.tuples(st.integers(0, 8), st.just(2)), elements=st.floats(-1e4, 1e4)))
def test_temporal_iou_is_symmetric_and_bounded(a: np.ndarray) -> None:
    a = np.sort(a, axis=1)
    iou = temporal_iou(a, a)
    assert iou.shape == (len(a), len(a)) and np.all((iou >= 0.0) & (iou <= 1.0 + 1e-12))
    np.testing.assert_allclose(iou, iou.T, atol=1e-12)
    positive = a[:, 1] > a[:, 0]
    np.testing.assert_allclose(np.diag(iou)[positive], 1.0)


@st.composite
def wide_retrieval_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Unlike test_core_math: durations independent of the clip count (far shorter or longer),
    any clip length, fractional drop_pct and λ, one-clip videos, every proposal option."""
    n = draw(st.integers(1, 80))
    v = draw(st.integers(0, 3))
    return {
        "variant_scores": draw(arrays(np.float64, (v, n), elements=unit)),
        "fused": draw(arrays(np.float64, (n,), elements=unit)),
        "clip_len": draw(st.floats(1e-3, 1e4)),
        "duration": draw(st.floats(1e-3, 1e6)),
        "params": ProposalParams(
            num_bins=draw(st.integers(1, 40)),
            top_k=draw(st.integers(1, 20)),
            gap=draw(st.integers(1, 10)),
            drop_pct=draw(st.floats(0.0, 100.0)),
            lam=draw(st.floats(0.0, 1.0)),
        ),
        "mode": draw(st.sampled_from(["pooled", "fused"])),
        "contrast": draw(st.booleans()),
        "contrast_min_len": draw(st.integers(1, 20)),
        "nms_iou": draw(st.floats(0.01, 1.0)),
        "top_n": draw(st.integers(1, 15)),
    }


@MEDIUM
@given(inputs=wide_retrieval_inputs())
def test_localize_contract_for_any_clip_length_and_duration(inputs: dict[str, Any]) -> None:
    args = dict(inputs)
    curves, fused = args.pop("variant_scores"), args.pop("fused")
    out = localize_moments(curves, fused, **args)
    duration = args["duration"]
    assert 1 <= len(out) <= args["top_n"]
    for start, end, score in out:
        assert all(math.isfinite(x) for x in (start, end, score))
        assert 0.0 <= start < end <= duration
        assert 0.0 <= score <= 1.0
    assert [w[2] for w in out] == sorted((w[2] for w in out), reverse=True)
    curve = saliency(fused, sigma=float(args["clip_len"] % 5))
    assert len(curve) == fused.size and all(0.0 <= x <= 1.0 for x in curve)


def _inject(array: np.ndarray, data: st.DataObject) -> np.ndarray:
    broken = array.astype(np.float64).copy()
    flat = broken.reshape(-1)
    flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(bad_values)
    return broken


MATH_CALLS: dict[str, Callable[[np.ndarray], object]] = {
    "cosine_similarity(queries)": lambda x: cosine_similarity(x, np.ones((3, x.shape[1]))),
    "cosine_similarity(captions)": lambda x: cosine_similarity(np.ones((1, x.shape[1])), x),
    "minmax_normalise": minmax_normalise,
    "gaussian_smooth": lambda x: gaussian_smooth(x, 1.0),
    "smoothed_similarity": lambda x: smoothed_similarity(x, np.ones((2, x.shape[1])), 1.0),
    "feedback_queries": lambda x: feedback_queries(x, np.ones((4, x.shape[1]))),
    "granular_fusion(g_simplified)": lambda x: granular_fusion(
        x, np.full(x.shape, 0.5), np.ones(x.shape[1], bool)
    ),
    "generate_proposals": lambda x: generate_proposals(x.ravel()),
    "contrast_windows": lambda x: contrast_windows(x.ravel(), min_len=1),
    "saliency": lambda x: saliency(x.ravel(), sigma=1.0),
    "temporal_nms": lambda x: temporal_nms(
        np.column_stack([np.abs(x.ravel()), np.abs(x.ravel()) + 1, x.ravel()]), 0.5, 3
    ),
    "temporal_iou": lambda x: temporal_iou(np.column_stack([x.ravel(), x.ravel()]), np.zeros((1, 2))),
    "clips_to_seconds": lambda x: clips_to_seconds(
        np.column_stack([np.abs(x.ravel()), np.abs(x.ravel()), x.ravel()]), 2.0, 10.0
    ),
    "localize_moments(fused)": lambda x: localize_moments(
        np.zeros((0, x.shape[1])), x.ravel(), clip_len=2.0, duration=9.0
    ),
    "localize_moments(variants)": lambda x: localize_moments(
        x, np.full(x.shape[1], 0.5), clip_len=2.0, duration=9.0
    ),
}


@pytest.mark.parametrize("call", sorted(MATH_CALLS))
@settings(max_examples=25, deadline=None, database=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 3), st.integers(1, 12)))
def test_non_finite_inputs_are_input_errors(call: str, data: st.DataObject, shape: tuple[int, int]) -> None:
    good = data.draw(arrays(np.float64, shape, elements=unit))
    with np.errstate(all="ignore"), pytest.raises(InputError, match=r"NaN|infinite|finite"):
        MATH_CALLS[call](_inject(good, data))


EMPTY_SHAPES = [(0,), (0, 0), (0, 3), (3, 0), (1, 0)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
@pytest.mark.parametrize(
    "call",
    [
        "cosine_similarity",
        "minmax_normalise",
        "gaussian_smooth",
        "feedback_queries",
        "granular_fusion",
        "generate_proposals",
        "contrast_windows",
        "saliency",
        "temporal_nms",
        "temporal_iou",
        "clips_to_seconds",
        "localize_moments",
    ],
)
def test_empty_inputs_give_an_empty_result_or_input_error(call: str, shape: tuple[int, ...]) -> None:
    x = np.zeros(shape)
    calls: dict[str, Callable[[], object]] = {
        "cosine_similarity": lambda: cosine_similarity(x, x),
        "minmax_normalise": lambda: minmax_normalise(x),
        "gaussian_smooth": lambda: gaussian_smooth(x, 1.0),
        "feedback_queries": lambda: feedback_queries(x, x),
        "granular_fusion": lambda: granular_fusion(x, x, np.ones(shape[-1], bool)),
        "generate_proposals": lambda: generate_proposals(x),
        "contrast_windows": lambda: contrast_windows(x),
        "saliency": lambda: saliency(x),
        "temporal_nms": lambda: temporal_nms(x, 0.5, 3),
        "temporal_iou": lambda: temporal_iou(x, x),
        "clips_to_seconds": lambda: clips_to_seconds(x, 2.0, 10.0),
        "localize_moments": lambda: localize_moments(x, x, clip_len=2.0, duration=10.0),
    }
    try:
        out = calls[call]()
    except InputError:
        return
    values = np.asarray(out, dtype=np.float64)
    # nothing in, nothing out; zero-length embeddings are zero vectors: similar to nothing (0)
    assert values.size == 0 or (call == "cosine_similarity" and not values.any()), values


@FAST
@given(
    windows=arrays(np.float64, st.tuples(st.integers(1, 12), st.just(3)), elements=st.floats(-1e3, 1e3)),
    clip_len=st.floats(1e-3, 100.0),
    duration=st.floats(1e-3, 1e4),
)
def test_clips_to_seconds_clamps_or_refuses(windows: np.ndarray, clip_len: float, duration: float) -> None:
    try:
        out = clips_to_seconds(windows, clip_len, duration)
    except InputError as exc:
        assert "start_clip" in str(exc)
        assert np.any(windows[:, 0] < 0) or np.any(windows[:, 1] < windows[:, 0])
        return
    assert np.all(np.isfinite(out)) and np.all((out[:, :2] >= 0) & (out[:, :2] <= duration))
    assert np.all(out[:, 0] <= out[:, 1])


# =============================================================================================
# bugs found by the fuzzing above (all fixed): minimal examples as regression tests
# =============================================================================================


@pytest.mark.parametrize("reader", ["iter_jsonl", "read_annotations", "read_captions_file", "FileRewriter"])
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"qid": ' + b"[" * 100_000 + b"\n", id="deep-nesting-RecursionError"),
        pytest.param(b'{"qid": ' + b"1" * 4301 + b"}\n", id="huge-integer-ValueError"),
    ],
)
def test_jsonl_pathological_json_is_an_input_error(fuzz_dir: Path, reader: str, content: bytes) -> None:
    path = fuzz_dir / "pathological.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(f"{path}:1:")):
        READERS[reader](path)


@pytest.mark.parametrize(
    "reader", ["iter_jsonl", "read_annotations", "read_captions_file", "make_rewriter(file:)"]
)
def test_jsonl_too_long_file_name_is_an_input_error(fuzz_dir: Path, reader: str) -> None:
    with pytest.raises(InputError) as err:
        READERS[reader](fuzz_dir / ("a" * 300 + ".jsonl"))
    assert "a" * 300 in str(err.value)  # names the file


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_jsonl_read_error_is_an_input_error() -> None:
    with pytest.raises(InputError, match="/proc/self/mem"):
        list(iter_jsonl("/proc/self/mem"))  # EIO on read


def test_captions_reader_refuses_infinite_clip_length(fuzz_dir: Path) -> None:
    path = fuzz_dir / "inf_clip.jsonl"
    path.write_text('{"vid": "v", "captions": ["a"], "clip_len_s": Infinity, "duration": 2}\n')
    with pytest.raises(InputError, match="clip_len_s"):
        list(read_captions_file(path))


def test_captions_reader_refuses_boolean_duration(fuzz_dir: Path) -> None:
    path = fuzz_dir / "bool_duration.jsonl"
    path.write_text('{"vid": "v", "captions": ["a"], "clip_len_s": 2, "duration": true}\n')
    with pytest.raises(InputError, match="duration"):
        list(read_captions_file(path))


def test_localize_refuses_a_duration_that_rounds_to_zero() -> None:
    with pytest.raises(InputError, match="duration must be a number of seconds in"):
        localize_moments(np.zeros((0, 1)), np.array([0.5]), clip_len=2.0, duration=1e-5)


def test_localize_refuses_durations_beyond_any_video() -> None:
    with pytest.raises(InputError, match="clip_len must be a number of seconds in"):
        localize_moments(np.zeros((0, 3)), np.array([0.0, 1.0, 0.0]), clip_len=1e308, duration=1e308)


def test_minmax_normalise_of_a_range_past_the_float_maximum() -> None:
    with np.errstate(all="ignore"):
        out = minmax_normalise(np.array([-1e308, 1e308, 0.0]))
    assert np.all(np.isfinite(out)), out


def test_gaussian_smooth_near_the_float_maximum() -> None:
    with np.errstate(all="ignore"):
        out = gaussian_smooth(np.array([1e308, 1e308, 1e308]), 1.0)
    assert np.all(np.isfinite(out)), out


@pytest.mark.parametrize("scale", [1e200, 1e-200], ids=["huge", "tiny"])
def test_cosine_similarity_of_extreme_magnitudes(scale: float) -> None:
    with np.errstate(all="ignore"):
        sims = cosine_similarity(np.array([[scale, scale]]), np.array([[1.0, 1.0]]))
    assert sims[0, 0] == pytest.approx(1.0)
