"""What a calling model may read of an error: what went wrong and what to do, no server internals.

The tools (LangChain, MCP) and the agent hand error text to a model, which may be steered by
untrusted content and may repeat anything to its user.  The library's messages are written for
the operator at a terminal (the CLI prints them as they are): they name the store folder, the
process holding it (pid, host, command line), the video roots, model and server addresses.  A
model needs none of that to fix its call, and none of it is its user's business.

:func:`model_message` turns an exception into the text a model sees:

1. an error that carries a ``public`` text (:class:`granalign.errors.GranAlignError`, set where
   the library knows its message names internals, e.g. ``StoreBusyError``) is shown by it;
2. any other text has this deployment's own values replaced by stand-ins (:class:`Redactor`):
   the store, lock, checkpoint and download folders, the video roots (``<video root>/a.mp4``),
   the home folder (``~``), Chroma, LangGraph and model server addresses, model paths, and a
   lock holder written as ``pid N on HOST (COMMAND)``.  Only known values are replaced, so a
   message keeps its sense; text inside the caller's own arguments is left alone (a model may
   be told about the path it passed, not about the roots around it);
3. an error another host wrote (its ``foreign`` attribute is true: a remote retrieval server's
   refusal, :class:`tools.langchain_tool.RemoteRefusal`) names that host's folders and
   addresses, which are not known here: besides this host's values, every absolute path and
   URL outside the caller's own arguments is replaced (:data:`FOREIGN`).

The front ends log the full message first (:func:`logged`), so an operator loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from granalign.errors import GranAlignError

__all__ = ["FOREIGN", "HOLDER", "Redactor", "logged", "model_message"]

HOLDER = re.compile(r"pid \d+ on \S+ \(.*?\)(?=;| \(waited|$)", re.DOTALL)
"""A store lock holder as :func:`granalign.io.locks.store_holder` writes it (the command may
hold parentheses; the holder ends where the lock messages go on)."""
ANOTHER_PROCESS = "another process"
_END = r"(?![\w-]|\.\w)"
"""A hidden value ends at a path or name boundary: ``/srv/store`` is not ``/srv/store2``."""
_START = r"(?<![\w.-])"
"""And starts at one: ``/srv/store`` inside ``/data/srv/store`` is another folder."""
FOREIGN = re.compile(
    r"[A-Za-z][\w+.-]*://[^\s'\"`<>]+"  # an address: http://10.0.0.5:8000/x, file:///srv/x
    r"|(?<![\w.~/\\<>:-])(?:~|[A-Za-z]:)?[/\\](?=[\w.~-])[^\s'\"`<>,;]*"  # /srv/x, ~/x, C:\\x
)
"""An absolute path or URL in text another host wrote: ``and/or``, ``1/2`` and a stand-in's
tail (``<video root>/a.mp4``) are not one."""
FOREIGN_STAND_IN = {"path": "<server path>", "address": "<server address>"}
_TAIL = ".,:;)]}!?"
"""Punctuation that ends a sentence around a path, not the path."""
_WORD = re.compile(r"[\w.-]+")
"""A value that is one name (a relative folder ``store``, a bare host): a word of prose as well."""


def _value_pattern(value: str) -> str:
    """Where ``value`` counts as written: at name boundaries; a one-name value (``store``: a
    store folder given relative) only as a path's first part (``store/x``) or quoted
    (``'store'``), so "the video store is in use" keeps its words."""
    v = re.escape(value)
    if _WORD.fullmatch(value):
        return rf"{_START}{v}(?=[/\\])|(?<=['\"`]){v}(?=['\"`])"
    return _START + v + _END


@dataclass(frozen=True)
class Redactor:
    """Values of this deployment a model must not read, each with the words that stand for it."""

    hidden: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Redactor:
        """Home folder included; empty and one-character values (``/``, ``.``) are dropped, so a
        stand-in never replaces a bare separator."""
        found = {value: stand for value, stand in [*pairs, *paths(_home(), "~")] if len(value) > 1}
        return cls(tuple(sorted(found.items(), key=lambda kv: -len(kv[0]))))

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        values = [_value_pattern(v) for v, _ in self.hidden]
        return re.compile("|".join([HOLDER.pattern, *values]), re.DOTALL)

    def text(self, text: str, keep: Iterable[str] = (), *, foreign: bool = False) -> str:
        """``text`` with hidden values replaced, except where they lie inside the caller's own
        arguments ``keep`` (a hidden value that only overlaps one is still replaced); with
        ``foreign`` (text another host wrote) any other absolute path or URL too."""
        keep = [k for k in keep if k]
        stands = dict(self.hidden)

        def inside(where: str, m: re.Match[str]) -> bool:
            spans = (x.span() for k in keep for x in re.finditer(re.escape(k), where))
            return any(a <= m.start() and m.end() <= b for a, b in spans)

        def swap(m: re.Match[str]) -> str:
            return m.group(0) if inside(text, m) else stands.get(m.group(0), ANOTHER_PROCESS)

        known = self._pattern.sub(swap, text)
        if not foreign:
            return known

        def scrub(m: re.Match[str]) -> str:  # the caller's arguments are still as it wrote them
            found = m.group(0)
            body = found.rstrip(_TAIL)
            if not body or inside(known, m):
                return found
            return FOREIGN_STAND_IN["address" if "://" in body else "path"] + found[len(body) :]

        return FOREIGN.sub(scrub, known)

    def message(self, exc: BaseException, keep: Iterable[str] = ()) -> str:
        """The text of ``exc`` a model may read (see the module docstring); an error that is not
        the library's is named by its type and first line (a traceback helps nobody there)."""
        foreign = bool(getattr(exc, "foreign", False))
        if isinstance(exc, GranAlignError):
            return self.text(exc.public if exc.public is not None else str(exc), keep, foreign=foreign)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return self.text(f"{type(exc).__name__}{': ' + first if first else ''}", keep, foreign=foreign)


def _home() -> Path | None:
    """The home folder, or None where there is none to name (no ``HOME`` and a uid without a
    passwd entry, as in containers run under an arbitrary uid): ``Path.home()`` raises there,
    and an error message must still reach the model."""
    try:
        return Path.home()
    except (RuntimeError, KeyError, OSError):
        return None


def paths(path: str | os.PathLike[str] | None, stand_in: str) -> list[tuple[str, str]]:
    """A folder or file as it may be written in a message: as given, expanded and resolved."""
    if not path:
        return []
    given = Path(path)
    forms = {str(given), str(given.expanduser())}
    with contextlib.suppress(OSError, RuntimeError):  # a symlink loop: the written forms count
        forms |= {str(given.expanduser().resolve()), str(given.expanduser().absolute())}
    return [(form, stand_in) for form in forms]


def server(url: str | None, stand_in: str) -> list[tuple[str, str]]:
    """A server address: the URL (without a trailing ``/``), and its ``host:port``; for a URL
    with credentials (``http://user:key@host:8000``) also both without them, as client
    libraries write an address, and the credentials themselves."""
    if not url:
        return []
    out = [(url.rstrip("/"), stand_in)]
    try:
        parts = urlsplit(url)
    except ValueError:
        return out
    userinfo, at, host = parts.netloc.rpartition("@")
    out += [(parts.netloc, stand_in)] if parts.netloc else []
    if at:
        bare = parts._replace(netloc=host).geturl().rstrip("/")
        out += [(bare, stand_in), (host, stand_in), (userinfo, "<credentials>")]
    return out


def spec(text: str, stand_in: str) -> list[tuple[str, str]]:
    """A backend spec's addresses (``openai:URL#model``; a captioner's replicas
    ``openai:URL1,URL2#model`` each) or local path (``local:/models/x``); a hub id
    (``local:smollm2``) is no secret and stays."""
    _, _, target = text.partition(":")
    target = target.split("#", 1)[0].strip()
    if target.startswith(("http://", "https://")):
        return [p for url in target.split(",") for p in server(url.strip(), stand_in)]
    if _reads_as_path(target):
        return paths(target, stand_in)
    return []


def _reads_as_path(target: str) -> bool:
    """A location on this host, not a hub id: ``org/name`` holds a ``/`` as a relative path
    does, so it is a path only where one exists (the loaders read it so)."""
    if target.startswith(("/", "~", ".")) or "\\" in target:
        return True
    try:
        return Path(target).exists()
    except (OSError, ValueError):
        return True


def context_values(ctx: Any) -> list[tuple[str, str]]:
    """What a retrieval Context (``graphs.context.Context``) points at on this host."""
    from graphs import resources
    from graphs.durable import checkpoint_path

    out = [
        *paths(resources.local_state_dir(ctx), "<store>"),
        *paths(resources.lock_dir_for(ctx), "<lock folder>"),
        *paths(checkpoint_path(ctx), "<checkpoint file>"),
        *server(resources.chroma_url(ctx), "<Chroma server>"),
        *(p for root in resources.video_roots(ctx) for p in paths(root, "<video root>")),
        *paths(ctx.clip_pretrained if os.sep in ctx.clip_pretrained else None, "<CLIP weights>"),
    ]
    for name in ("rewriter", "embedder", "captioner", "aware_captioner"):
        out += spec(str(getattr(ctx, name) or ""), f"<{name.replace('_', ' ')} model>")
    return out


def logged(log: logging.Logger, what: str, exc: BaseException) -> None:
    """The full message for the operator: the library's one-line errors as a warning, anything
    else with its traceback (a bug, or a failure the library did not foresee)."""
    if isinstance(exc, GranAlignError):
        log.warning("%s failed: %s", what, exc)
    else:
        log.error("%s failed: %s", what, exc, exc_info=exc)


def model_message(
    exc: BaseException, redactor: Redactor, *, log: logging.Logger, what: str, keep: Sequence[str] = ()
) -> str:
    """Log ``exc`` in full, and return the text of it a model may read."""
    logged(log, what, exc)
    return redactor.message(exc, keep)
