"""JSON-lines reading and atomic writing.

Benchmark files are large and hand-edited files are common, so a malformed line must be
reported with the file and line number; and outputs are written through a temporary file and
``os.replace`` so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from granalign.errors import InputError


def _open_checked(path: Path) -> Path:
    try:
        if not path.exists():
            raise InputError(f"{path}: file not found")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, expected a JSONL file")
        if not path.is_file():
            raise InputError(f"{path}: not a regular file (a device, FIFO or socket), expected a JSONL file")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: file is not readable")
    return path


def _parse_line(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except (RecursionError, ValueError) as exc:  # absurd nesting; integers past Python's digit limit
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise InputError(f"{where}: unreadable JSON ({reason})") from None


#: A JSON escape of a UTF-16 surrogate; a lone one (``"\\ud800"``) is valid JSON but no text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate_at(obj: Any, path: str = "") -> str | None:
    """Where in ``obj`` (``'query'``, ``'rephrased_query'[2]``) a string holds a lone surrogate."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path or "a value"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        here = f"{path}[{key!r}]" if path else repr(key)
        if isinstance(key, str) and _lone_surrogate_at(key) is not None:
            return f"a key of {path}" if path else "a key"
        found = _lone_surrogate_at(value, here)
        if found is not None:
            return found
    return None


def _check_unicode(obj: Any, line: str, where: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no output file, hash, tokenizer
    or store takes: refused here with the file, line and field, not as a traceback later."""
    if _SURROGATE_ESCAPE.search(line) is None:
        return
    try:
        field = _lone_surrogate_at(obj)
    except RecursionError:
        field = "a value"
    if field is not None:
        raise InputError(f"{where}: {field} is not valid Unicode (a lone surrogate escape like \\ud800)")


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line; errors name the file and the 1-based line.

    A string holding a lone surrogate escape (``"\\ud800"``) is refused like malformed JSON.
    """
    p = _open_checked(Path(path))
    try:
        with p.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise InputError(f"{p}:{lineno}: not valid UTF-8 ({exc.reason})") from None
                if not line:
                    continue
                obj = _parse_line(line, f"{p}:{lineno}")
                if not isinstance(obj, dict):
                    raise InputError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                _check_unicode(obj, line, f"{p}:{lineno}")
                yield obj
    except OSError as exc:
        raise InputError(f"{p}: cannot be read ({exc.strerror or exc})") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a whole JSONL file (see :func:`iter_jsonl` for the error contract)."""
    return list(iter_jsonl(path))


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (other threads may be
    creating files); elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` so that readers see either the old file or the complete new one.

    The temporary file ``mkstemp`` creates is private (0600); it gets the mode a plain
    ``open`` would give (0666 less the umask) before it replaces the target, like every CLI's
    outputs.  A failed write is one :class:`InputError` naming the file, not a traceback.
    """
    p = Path(path)
    try:
        _write_replacing(p, text)
    except OSError as exc:
        raise InputError(f"{p}: cannot be written ({exc.strerror or exc})") from None


def _write_replacing(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write ``rows`` as JSON lines."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=4) + "\n")


class Journal:
    """An append-only JSONL log of finished work that survives ``kill -9``.

    The first line names what the log belongs to (``key``: a hash of the run's settings); a
    log of other settings is discarded, never mixed in.  Every :meth:`append` is flushed and
    fsync'd, so a kill loses at most the rows being written; a torn last line is dropped on
    open (the good lines are rewritten atomically before appending resumes).
    """

    def __init__(self, path: str | os.PathLike[str], key: str) -> None:
        self.path = Path(path)
        self.key = key
        self.rows: list[dict[str, Any]] = self._recover()
        self._fh = self.path.open("a", encoding="utf-8")

    def _recover(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
            parsed = []
            for line in lines:
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
                    break  # a torn write: everything after it is dropped
                if not isinstance(obj, dict):
                    break
                parsed.append(obj)
            if parsed and parsed[0].get("journal") == self.key:
                rows = parsed[1:]
        header = json.dumps({"journal": self.key}) + "\n"
        atomic_write_text(self.path, header + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return rows

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if text:
            self._fh.write(text)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def discard(self) -> None:
        """The work is saved elsewhere (atomically): the log is no longer needed."""
        self.close()
        self.path.unlink(missing_ok=True)
