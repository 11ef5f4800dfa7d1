"""The files whose content decides a run's answers, digested, so a durable resume can tell
that one was edited since the run started (see :mod:`graphs.durable`).

The answer settings (:meth:`Context.answer_settings`) name these files by id or path only: the
prompt pairs by id, a ``file:`` rewriter by path, the caption and focus prompts not at all.  A
run resumed after one of them was edited would answer with a mix: its finished steps (rewrites,
query-aware captions, the focus) followed the old text, its remaining ones the new.  So a run
records :func:`answer_files` with its checkpoints and a resume compares them
(:func:`check_unchanged`).  The files are a few small texts: hashing them once per run start or
resume costs microseconds.

A file is recorded under a key that stays the same while the file does: a shipped prompt by its
name inside the ``prompts`` package (``prompts:rewrite/core.yaml``), since the package moves with
every reinstall, new venv or container built at another path, and a user's file (a ``file:``
rewrite file) by its resolved path, the one the setting names.
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
    """A file an answer depends on: the setting that brings it in, its path (as messages name
    it), a digest of its content (None when it cannot be read, ``problem`` saying why), and the
    ``key`` it is recorded under (``prompts:<name>`` for a shipped prompt, the resolved path for
    a user's file; empty: the path)."""

    setting: str
    path: str
    digest: str | None
    problem: str = ""
    key: str = ""

    @property
    def record_key(self) -> str:
        return self.key or self.path


SHIPPED = "prompts:"
"""Prefix of the key of a file shipped in the ``prompts`` package: its name there follows."""


def _shipped_key(name: str) -> str:
    return f"{SHIPPED}{name}"


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:16]


def _on_disk(setting: str, path: Path, key: str) -> AnswerFile:
    """A file the run reads whenever it needs it (pairs, a rewrite file): its bytes now."""
    try:
        return AnswerFile(setting, str(path), _digest(path.read_bytes()), key=key)
    except OSError as exc:
        return AnswerFile(setting, str(path), None, exc.strerror or type(exc).__name__, key=key)


def _user_file(setting: str, path: Path) -> AnswerFile:
    """A file the user names by path: keyed by that path, resolved (a relative path read from
    another folder is another file)."""
    return _on_disk(setting, path, str(path.resolve()))


def _pair(pair_id: str) -> AnswerFile:
    """A prompt pair of the package's pair folder, keyed by its name there."""
    return _on_disk("prompt_pairs", prompts.pair_file(pair_id), _shipped_key(f"rewrite/{pair_id}.yaml"))


def _in_use(setting: str, name: str, text: str) -> AnswerFile:
    """A prompt text read once at import: the text this process answers with, not the file's
    bytes now (an edit reaches answers only in a new process, which is when it must count)."""
    path = prompts.text_file(name)
    return AnswerFile(setting, str(path), _digest(text.encode("utf-8")), key=_shipped_key(f"{name}.txt"))


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
        files.append(_user_file("rewriter", Path(rewriter.target)))
    if rewriter.engine in ("local", "openai"):
        files += [_pair(i) for i in _pair_ids(ctx)]
    if rewriter.engine == "openai":
        from granalign.backends import openai_llm

        files.append(_in_use("rewriter", "focus/system", openai_llm.FOCUS_SYSTEM))
        files.append(_in_use("rewriter", "focus/template", openai_llm.FOCUS_TEMPLATE))
    return files


def record(files: list[AnswerFile]) -> str:
    """``[[setting, key, digest], ...]`` as JSON, for a checkpoint's metadata (readable files
    only: a run that cannot read one fails on it by itself)."""
    return json.dumps([[f.setting, f.record_key, f.digest] for f in files if f.digest is not None])


def _recorded(value: Any) -> dict[tuple[str, str], str] | None:
    """``{(setting, key): digest}`` of a checkpoint's :func:`record`; None when a version
    without digests wrote the checkpoint."""
    if not isinstance(value, str):
        return None
    return {(setting, key): digest for setting, key, digest in json.loads(value)}


def _shown(key: str, found: AnswerFile | None) -> str:
    """How a message names a recorded file: its path now, or its key when none is selected."""
    return found.path if found is not None else key


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
    selected = {(f.setting, f.record_key): f for f in files}
    now = {key: selected.get(key) for key in then}
    for found in now.values():
        if found is not None and found.digest is None:
            raise InputError(
                f"thread_id {thread_id!r} holds an unfinished run, but its {found.setting} file "
                f"{found.path} cannot be read to check that it is unchanged ({found.problem}); "
                "restore the file or start a new run"
            )
    changed = [
        f"{setting} file {_shown(key, found)}"
        for (setting, key), digest in then.items()
        if (found := now[setting, key]) is None or found.digest != digest
    ]
    if changed:
        which = "the file" if len(changed) == 1 else "the files"
        raise InputError(
            f"thread_id {thread_id!r} holds an unfinished run: {', '.join(changed)} changed since "
            f"this run started; start a new run or restore {which}"
        )
