"""The files whose content decides a run's answers, digested, so a durable resume can tell
that one was edited since the run started (see :mod:`graphs.durable`).

The answer settings (:meth:`Context.answer_settings`) name these files by id or path only: the
prompt pairs by id, a ``file:`` rewriter by path, the caption and focus prompts not at all.  A
run resumed after one of them was edited would answer with a mix: its finished steps (rewrites,
query-aware captions, the focus) followed the old text, its remaining ones the new.  So a run
records :func:`answer_files` with its checkpoints and a resume compares them
(:func:`check_unchanged`).  The files are a few small texts: hashing them once per run start or
resume costs microseconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prompts
from granalign.backends import captioner
from granalign.errors import GranAlignError, InputError
from granalign.specs import parse_spec
from graphs import resources
from graphs.context import Context

__all__ = ["AnswerFile", "answer_files", "check_unchanged", "record"]


@dataclass(frozen=True)
class AnswerFile:
    """A file an answer depends on: the setting that brings it in, its path, a digest of its
    content (None when it cannot be read, ``problem`` saying why)."""

    setting: str
    path: str
    digest: str | None
    problem: str = ""


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:16]


def _on_disk(setting: str, path: Path) -> AnswerFile:
    """A file the run reads whenever it needs it (pairs, a rewrite file): its bytes now."""
    try:
        return AnswerFile(setting, str(path), _digest(path.read_bytes()))
    except OSError as exc:
        return AnswerFile(setting, str(path), None, exc.strerror or type(exc).__name__)


def _in_use(setting: str, name: str, text: str) -> AnswerFile:
    """A prompt text read once at import: the text this process answers with, not the file's
    bytes now (an edit reaches answers only in a new process, which is when it must count)."""
    return AnswerFile(setting, str(prompts.text_file(name)), _digest(text.encode("utf-8")))


def _pair_ids(ctx: Context) -> list[str]:
    """The run's pair ids; none when the selection is wrong: the run reports that itself."""
    try:
        return resources.pair_ids_for(ctx)
    except GranAlignError:
        return []


def answer_files(ctx: Context) -> list[AnswerFile]:
    """Every file whose content decides ``ctx``'s answers, with its digest.

    The caption prompts always (ingest and key clips); the prompt pairs only for a model
    rewriter (``none`` and a ``file:`` rewriter answer without their text; the file's own
    content counts instead); the focus prompts only for a served rewriter (the one that asks
    a model for the query's focus).
    """
    files = [
        _in_use("captioner", "captions/agnostic", captioner.AGNOSTIC_PROMPT),
        _in_use("aware_captioner", "captions/aware", captioner.AWARE_PROMPT),
    ]
    rewriter = parse_spec(ctx.rewriter, role="rewriter")
    if rewriter.engine == "file":
        files.append(_on_disk("rewriter", Path(rewriter.target)))
    if rewriter.engine in ("local", "openai"):
        files += [_on_disk("prompt_pairs", prompts.pair_file(i)) for i in _pair_ids(ctx)]
    if rewriter.engine == "openai":
        from granalign.backends import openai_llm

        files.append(_in_use("rewriter", "focus/system", openai_llm.FOCUS_SYSTEM))
        files.append(_in_use("rewriter", "focus/template", openai_llm.FOCUS_TEMPLATE))
    return files


def record(files: list[AnswerFile]) -> str:
    """``[[setting, path, digest], ...]`` as JSON, for a checkpoint's metadata (readable files
    only: a run that cannot read one fails on it by itself)."""
    return json.dumps([[f.setting, f.path, f.digest] for f in files if f.digest is not None])


def _recorded(value: Any) -> dict[tuple[str, str], str] | None:
    """``{(setting, path): digest}`` of a checkpoint's :func:`record`; None when a version
    without digests wrote the checkpoint."""
    if not isinstance(value, str):
        return None
    return {(setting, path): digest for setting, path, digest in json.loads(value)}


def check_unchanged(thread_id: str, recorded: Any, files: list[AnswerFile]) -> None:
    """Refuse to resume ``thread_id`` when a file its run recorded reads otherwise now.

    Only what was recorded is compared: a run checkpointed before digests were kept resumes
    as it did then, and one checkpointed before a kind of file was recorded is not refused for
    it.  A recorded file the run no longer selects (a pair folder that changed under the default
    selection) counts as changed.
    """
    then = _recorded(recorded)
    if not then:
        return
    now = {(f.setting, f.path): f for f in files}
    for key in then:
        found = now.get(key)
        if found is not None and found.digest is None:
            raise InputError(
                f"thread_id {thread_id!r} holds an unfinished run, but its {found.setting} file "
                f"{found.path} cannot be read to check that it is unchanged ({found.problem}); "
                "restore the file or start a new run"
            )
    changed = [
        f"{setting} file {path}"
        for (setting, path), digest in then.items()
        if (setting, path) not in now or now[setting, path].digest != digest
    ]
    if changed:
        which = "the file" if len(changed) == 1 else "the files"
        raise InputError(
            f"thread_id {thread_id!r} holds an unfinished run: {', '.join(changed)} changed since "
            f"this run started; start a new run or restore {which}"
        )
