"""Coverage-guided fuzzing (atheris / libFuzzer) of the untrusted-input boundaries. On demand only.

Not part of the test suite: ``tests/test_fuzz.py`` (hypothesis) runs in CI.  This script lets
libFuzzer's coverage feedback search much longer for inputs that break the same contracts:

* ``jsonl``: bytes as a JSONL file through every reader (``iter_jsonl``, ``read_annotations``,
  the captions reader, the ``file:`` rewriter): a result or ``InputError``, nothing else;
* ``spec``: text as a backend spec (``parse_spec`` for every role): a spec or ``ConfigError``;
* ``video``: text as a tool's ``video`` argument (``tools.safety.parse_video_arg`` over a
  temporary root with links in and out): a clean ``VideoArg`` inside the root or an
  ``InputError``.

Any other exception is a crash: libFuzzer stops and writes the input to
``$TMPDIR/granalign-atheris/<target>-crash-<sha1>`` (state and corpus are kept there).
Known bugs (see the ``test_bug_*`` tests in tests/test_fuzz.py) are skipped with
``--skip-known`` so the search can go past them.

Needs ``atheris`` (binary wheels for CPython 3.11 on Linux: ``pip install atheris==3.0.0``; not a
project dependency).  Usage::

    .venv/bin/python -m benchmarks.fuzz_atheris jsonl [--skip-known] [libFuzzer flags...]
    .venv/bin/python -m benchmarks.fuzz_atheris video -max_total_time=120 corpus_dir/

libFuzzer flags pass through (``-runs=N``, ``-max_total_time=S``, ``-max_len=N``, corpus folders).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

try:
    import atheris
except ImportError:  # pragma: no cover - optional tool
    sys.exit("atheris is not installed: .venv/bin/pip install atheris==3.0.0 (CPython 3.11 wheel)")

with atheris.instrument_imports(include=["granalign", "tools.bench", "tools.safety"]):  # not the deps
    from granalign.errors import ConfigError, InputError
    from granalign.io.captions_import import read_captions_file
    from granalign.io.jsonl import iter_jsonl
    from granalign.rewrite import FileRewriter
    from granalign.specs import parse_spec
    from tools.bench import read_annotations
    from tools.safety import parse_video_arg

KNOWN = (RecursionError,)
"""Known bug classes (granalign/io/jsonl.py), skipped with --skip-known."""

_TMP = Path(tempfile.gettempdir()) / "granalign-atheris"
"""State kept between runs (libFuzzer ends the process without Python's clean-up): the video
tree, the token dictionary, the growing jsonl corpus and crash files.  Delete it freely."""
_TMP.mkdir(exist_ok=True)


def _is_known(exc: BaseException) -> bool:
    return isinstance(exc, KNOWN) or (
        type(exc) is ValueError and "integer string conversion" in str(exc)
    )  # jsonl.py:42, > 4300 digits


def fuzz_jsonl(data: bytes, skip_known: bool) -> None:
    path = _TMP / f"input-{os.getpid()}.jsonl"
    path.write_bytes(data)
    try:
        _read_all(path, skip_known)
    finally:
        path.unlink(missing_ok=True)


def _read_all(path: Path, skip_known: bool) -> None:
    readers: list[Callable[[Path], object]] = [
        lambda p: list(iter_jsonl(p)),
        read_annotations,
        lambda p: list(read_captions_file(p)),
        FileRewriter,
    ]
    for read in readers:
        try:
            read(path)
        except InputError as exc:
            if str(path) not in str(exc):
                raise AssertionError(f"error does not name the file: {exc}") from exc
        except Exception as exc:
            if not (skip_known and _is_known(exc)):
                raise


def fuzz_spec(data: bytes, skip_known: bool) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(256)
    for role, allowed in (
        ("rewriter", ("none", "file", "local", "openai")),
        ("text embedder", ("local",)),
        ("captioner", ("local", "openai")),
    ):
        try:
            spec = parse_spec(text, role=role, allowed=allowed)  # type: ignore[arg-type]
        except ConfigError:
            continue
        if spec.engine not in allowed or (spec.engine != "none" and not spec.target):
            raise AssertionError(f"accepted an invalid spec {text!r}: {spec}")
        if parse_spec(str(spec), role=role, allowed=allowed) != spec:  # type: ignore[arg-type]
            raise AssertionError(f"{text!r} does not round-trip: {spec}")


def _video_tree() -> Path:
    """root/ with two videos and links that escape to outside/ (built once per process)."""
    root, outside = _TMP / "root", _TMP / "outside"
    if not (root / "escape_dir").is_symlink():
        (root / "sub").mkdir(parents=True, exist_ok=True)
        outside.mkdir(exist_ok=True)
        (root / "clip.mp4").write_bytes(b"x")
        (root / "sub" / "deep.mp4").write_bytes(b"x")
        (outside / "secret.mp4").write_bytes(b"x")
        (root / "escape.mp4").unlink(missing_ok=True)
        (root / "escape.mp4").symlink_to(outside / "secret.mp4")
        (root / "escape_dir").symlink_to(outside)
    return root.resolve()


def fuzz_video(data: bytes, skip_known: bool) -> None:
    root = _video_tree()
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(1100)
    try:
        arg = parse_video_arg(
            text,
            is_known_id=lambda vid: vid == "known_id",
            roots=(root,),
            allowlist=("allowed.example", "*.media.example"),
        )
    except InputError:
        return
    if arg.kind == "path":
        real = Path(arg.value)
        if not (real.is_relative_to(root) and real.is_file() and str(real) == os.path.realpath(real)):
            raise AssertionError(f"{text!r} accepted as {arg.value!r}, outside the root or not a file")
    elif arg.kind == "id" and arg.value != "known_id":
        raise AssertionError(f"{text!r} accepted as an unknown id")
    elif arg.kind == "url" and not arg.value.lower().startswith(("http://", "https://")):
        raise AssertionError(f"{text!r} accepted as a URL")


TARGETS: dict[str, Callable[[bytes, bool], None]] = {
    "jsonl": fuzz_jsonl,
    "spec": fuzz_spec,
    "video": fuzz_video,
}


JSONL_TOKENS = [
    *(f'"{k}":' for k in ("qid", "query", "vid", "duration", "captions", "clip_len_s", "rephrased_query")),
    *(f'"{k}":' for k in ("rewrites", "pair_id", "simplified", "detailed", "fallback", "reason")),
    *("{", "}", "[", "]", ",", '"', "\\n", "\\u0000", "\\ud800", "NaN", "Infinity", "-Infinity"),
    *("true", "false", "null", "0", "-1", "1e309", "[[[[[[[[", "99999999999999999999"),
]
SEEDS = [
    b'{"qid": 1, "query": "a man cooks", "vid": "v1", "duration": 150}\n',
    b'{"vid": "v1", "clip_len_s": 2, "duration": 4, "captions": ["a man", "a pot"]}\n',
    b'{"qid": 1, "query": "a man cooks", "rephrased_query": ["a man is cooking"], '
    b'"rewrites": [{"pair_id": "p", "simplified": "man cooks", "detailed": "a man cooks food"}]}\n',
]


def _jsonl_flags(flags: list[str]) -> list[str]:
    """A token dictionary and a seed corpus for ``jsonl`` unless the caller gave their own."""
    out = list(flags)
    if not any(f.startswith("-dict=") for f in flags):
        tokens = _TMP / "jsonl.dict"
        escaped = (t.replace("\\", "\\\\").replace('"', '\\"') for t in JSONL_TOKENS)
        tokens.write_text("".join(f'"{t}"\n' for t in escaped))
        out.append(f"-dict={tokens}")
    if not any(not f.startswith("-") for f in flags):  # no corpus folder given
        corpus = _TMP / "corpus"
        corpus.mkdir(exist_ok=True)
        for i, seed in enumerate(SEEDS):
            (corpus / f"seed{i}").write_bytes(seed)
        out.append(str(corpus))
    return out


def main() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] not in TARGETS:
        names = "|".join(TARGETS)
        sys.exit(f"usage: python -m benchmarks.fuzz_atheris {{{names}}} [--skip-known] [libFuzzer flags]")
    target = TARGETS[argv[0]]
    skip_known = "--skip-known" in argv
    flags = [a for a in argv[1:] if a != "--skip-known"]
    if argv[0] == "jsonl":
        flags = _jsonl_flags(flags)
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags.insert(0, f"-artifact_prefix={_TMP}/{argv[0]}-")
    atheris.Setup([sys.argv[0], *flags], lambda data: target(data, skip_known))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
