"""Prompt pairs for GranAlign's query rewriting, kept as data files.

Step 1 of GranAlign rewrites a query into ``m`` pairs ``(Q_s, Q_d)``: one *simplified* rewrite
(common words, core entities and actions; recall) and one *detailed* rewrite (fine-grained words,
temporal context; precision), one pair per *prompt pair*.  Prompt pairs are what researchers
compare, so they live as YAML files in ``prompts/rewrite/<id>.yaml`` instead of in code: a new
file in that folder is a new pair, with no code change.

File format (one pair per file)::

    id: core                      # must equal the file stem
    description: one line that says what the pair does
    system: optional system message, sent as written (no {query})
    simplify: template with {query}
    detail: template with {query}

The shipped templates carry no few-shot example on purpose: the offline default
SmolLM2-135M copied the example's content into a quarter to a half of its answers ("A woman
in a red coat ..." for a query about noodles) and was better without; larger models do not
need one.

Templates use Python ``str.format`` syntax with ``{query}`` as the only placeholder (write
``{{`` / ``}}`` for literal braces).  A malformed file raises :class:`PromptError` naming the file
and the field, because a typo in a prompt file should fail at load time, not silently change
an experiment.

Fixed prompt texts (the agnostic and aware caption prompts, the focus extraction) are plain
text files read by :func:`load_text` (``prompts/captions/*.txt``, ``prompts/focus/*.txt``).

This package is data plus its loader: it imports nothing from ``granalign`` (the library sits
above it and wraps :class:`PromptError` into its own ``InputError``, see
``granalign.prompt_files``).
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_M",
    "DEFAULT_PAIRS",
    "PROMPT_DIR",
    "PromptError",
    "PromptPair",
    "available_pair_ids",
    "load_all_prompt_pairs",
    "load_prompt_pair",
    "load_prompt_pairs",
    "load_text",
    "pair_file",
    "prompt_hash",
    "text_file",
]

PROMPT_DIR: Path = Path(__file__).resolve().parent / "rewrite"
"""The shipped prompt-pair folder (the default for every loader)."""

TEXT_DIR: Path = Path(__file__).resolve().parent
"""Where the fixed prompt texts live (``<group>/<name>.txt``)."""


class PromptError(ValueError):
    """A prompt file or folder is missing or malformed (the message names the file and field).

    A ValueError of its own, not the library's InputError: this package must not import the
    library that imports it; ``granalign.prompt_files`` turns it into an InputError.
    """


DEFAULT_PAIRS: tuple[str, ...] = ("core", "plain", "event", "caption_style", "visual")
"""Preference order of the shipped pairs; the default selection is its first ``DEFAULT_M``.

``core``, ``plain`` and ``event`` come first because they differ most from each other (strip to
the skeleton / change the vocabulary / change the point of view), which is what the paper's
averaging over ``m`` pairs needs; ``caption_style`` and ``visual`` are alternatives to compare.
"""

DEFAULT_M: int = 3
"""The paper's ``m`` (number of prompt pairs)."""

_REQUIRED: tuple[str, ...] = ("id", "description", "simplify", "detail")
_OPTIONAL: tuple[str, ...] = ("system",)
_TEMPLATES: tuple[str, ...] = ("simplify", "detail")
_PLACEHOLDER = "query"


@dataclass(frozen=True)
class PromptPair:
    """One prompt pair: a template for the simplified and one for the detailed rewrite."""

    id: str
    description: str
    simplify: str
    detail: str
    system: str = ""

    def render_simplify(self, query: str) -> str:
        """The user message asking for the simplified rewrite of ``query``."""
        return self.simplify.format(query=query)

    def render_detail(self, query: str) -> str:
        """The user message asking for the detailed rewrite of ``query``."""
        return self.detail.format(query=query)


def prompt_hash(pair: PromptPair) -> str:
    """A 12-hex-digit cache key for what the model sees.

    It covers ``id``, ``system`` and both templates, not ``description``: editing the one-line
    description must not invalidate cached rewrites, but any change of a template must.
    """
    canonical = json.dumps(
        {"id": pair.id, "system": pair.system, "simplify": pair.simplify, "detail": pair.detail},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a field given twice (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"field {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing or unreadable file is a PromptError naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"{path}: prompt pair file not found") from None
    except OSError as exc:
        raise PromptError(f"{path}: cannot read prompt pair file ({exc.strerror})") from None


def _read_yaml(path: Path, raw: bytes) -> Any:
    """Parse ``raw`` (the bytes of ``path``) with ``safe_load``; syntax errors name the file and
    the 1-based line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PromptError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: no mark, a position
            where = f":{text[: exc.position].count(chr(10)) + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PromptError(f"{path}{where}: YAML syntax error ({problem})") from None


def _check_template(path: Path, field: str, template: str) -> None:
    """Reject templates that would fail or silently ignore the query at render time."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PromptError(
            f"{path}: field {field!r}: malformed template ({exc}); write {{{{ and }}}} for literal braces"
        ) from None
    names = [name for _, name, _, _ in parsed if name is not None]
    for name in names:
        if name != _PLACEHOLDER:
            raise PromptError(
                f"{path}: field {field!r}: unknown placeholder {{{name}}}; only {{query}} is allowed"
            )
    if _PLACEHOLDER not in names:
        raise PromptError(f"{path}: field {field!r}: template must contain {{query}}")
    for _, field_name, spec, conversion in parsed:
        if field_name is not None and (spec or conversion):
            raise PromptError(f"{path}: field {field!r}: write the placeholder as plain {{query}}")


def _check_fields(path: Path, data: Any) -> dict[str, str]:
    """Validate the mapping read from ``path``: required/known fields, all non-empty strings."""
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else type(data).__name__
        raise PromptError(f"{path}: expected a mapping with fields {', '.join(_REQUIRED)}, got {kind}")
    for field in _REQUIRED:
        if field not in data:
            raise PromptError(f"{path}: missing field {field!r}")
    unknown = sorted(str(k) for k in data if k not in _REQUIRED + _OPTIONAL)
    if unknown:
        allowed = ", ".join(_REQUIRED + _OPTIONAL)
        raise PromptError(f"{path}: unknown field {unknown[0]!r} (allowed: {allowed})")
    out: dict[str, str] = {}
    for field in _REQUIRED + _OPTIONAL:
        if field not in data:
            continue
        value = data[field]
        if not isinstance(value, str):
            raise PromptError(f"{path}: field {field!r} must be a string, got {type(value).__name__}")
        if not value.strip() and field != "system":
            raise PromptError(f"{path}: field {field!r} is empty")
        out[field] = value.strip()
    return out


_PARSED: dict[tuple[str, bytes], PromptPair] = {}
"""Pairs already parsed, by (path, the file's bytes): every retrieval checks its pair selection
(also with a rewriter that reads none), and parsing the YAML of m files each time cost ~2 ms a
query.  Keyed on the bytes, not the modification time: an edit within the file system's clock
tick that keeps the size would otherwise read as unchanged; reading a small file is cheap."""


def load_prompt_pair(path: str | os.PathLike[str]) -> PromptPair:
    """Load and validate one prompt-pair file (errors name the file and the field)."""
    p = Path(path)
    raw = _read_bytes(p)
    key = (str(p), raw)
    pair = _PARSED.get(key)
    if pair is None:
        pair = _parse_prompt_pair(p, raw)
        if len(_PARSED) > 1024:  # edits and other folders add keys; none is ever needed again
            _PARSED.clear()
        _PARSED[key] = pair
    return pair


def _parse_prompt_pair(p: Path, raw: bytes) -> PromptPair:
    fields = _check_fields(p, _read_yaml(p, raw))
    if "," in fields["id"] or fields["id"] != fields["id"].strip():
        raise PromptError(
            f"{p}: pair id {fields['id']!r} cannot be selected (prompt_pairs and --pairs are "
            "comma-separated lists); rename the file and its id without commas or edge spaces"
        )
    if fields["id"] != p.stem:
        raise PromptError(f"{p}: field 'id' is {fields['id']!r} but must equal the file stem {p.stem!r}")
    for field in _TEMPLATES:
        _check_template(p, field, fields[field])
    if "{" + _PLACEHOLDER + "}" in fields.get("system", ""):  # not a template: it would arrive verbatim
        raise PromptError(
            f"{p}: field 'system' is sent as written, so {{query}} there would reach the model "
            "literally; put the query in simplify and detail"
        )
    return PromptPair(
        id=fields["id"],
        description=fields["description"],
        simplify=fields["simplify"],
        detail=fields["detail"],
        system=fields.get("system", ""),
    )


def _directory(directory: str | os.PathLike[str] | None) -> Path:
    d = PROMPT_DIR if directory is None else Path(directory)
    if not d.is_dir():
        raise PromptError(f"{d}: prompt pair folder not found")
    return d


def available_pair_ids(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Ids of the pairs in ``directory`` (file stems of ``*.yaml``), sorted; files are not parsed."""
    return sorted(p.stem for p in _directory(directory).glob("*.yaml") if p.is_file())


def _default_ids(available: list[str]) -> list[str]:
    """The first ``DEFAULT_M`` of ``DEFAULT_PAIRS`` present, topped up by id order.

    Topping up keeps a custom folder without the shipped ids usable with no selection given.
    """
    ordered = [i for i in DEFAULT_PAIRS if i in available]
    ordered += [i for i in available if i not in ordered]
    return ordered[:DEFAULT_M]


def load_prompt_pairs(
    ids: list[str] | None = None, directory: str | os.PathLike[str] | None = None
) -> list[PromptPair]:
    """Load the selected pairs from ``directory`` (default: the shipped folder), sorted by id.

    ``ids=None`` selects the default ``m = DEFAULT_M`` pairs (see :data:`DEFAULT_PAIRS`). Only
    the selected files are parsed, so a broken file elsewhere in the folder does not block an
    experiment that does not use it.
    """
    d = _directory(directory)
    available = available_pair_ids(d)
    if ids is None:
        selected = _default_ids(available)
    else:
        if isinstance(ids, str):
            raise PromptError(f"prompt pair ids must be a list of ids, got the string {ids!r}")
        selected = list(ids)
        seen: set[str] = set()
        for pair_id in selected:
            if pair_id in seen:
                raise PromptError(f"prompt pair {pair_id!r} is selected twice (it would count double)")
            seen.add(pair_id)
            if pair_id not in available:
                path = pair_file(pair_id, d)
                if path.exists():  # only files are listed: name what is there, not "not found"
                    kind = "a folder" if path.is_dir() else "not a regular file"
                    raise PromptError(f"{path}: prompt pair {pair_id!r} is {kind}, not a YAML file")
                raise PromptError(
                    f"prompt pair {pair_id!r} not found in {d}; available: {', '.join(available) or 'none'}"
                )
    if not selected:
        raise PromptError(f"{d}: no prompt pairs selected (the folder has no *.yaml files)")
    return sorted((load_prompt_pair(pair_file(i, d)) for i in selected), key=lambda p: p.id)


def pair_file(pair_id: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """Where pair ``pair_id`` lives in ``directory`` (default: the shipped folder); not checked
    to exist.  One rule for the loaders and for whoever records which files a run read."""
    return (PROMPT_DIR if directory is None else Path(directory)) / f"{pair_id}.yaml"


def load_all_prompt_pairs(directory: str | os.PathLike[str] | None = None) -> list[PromptPair]:
    """Every pair in ``directory``, sorted by id (for experiments that compare all of them)."""
    return load_prompt_pairs(available_pair_ids(directory), directory)


def text_file(name: str) -> Path:
    """The file of fixed prompt text ``name`` (``captions/agnostic`` → ``prompts/captions/agnostic.txt``)."""
    return TEXT_DIR / f"{name}.txt"


def load_text(name: str) -> str:
    """The fixed prompt text ``prompts/<name>.txt`` (``name`` like ``captions/agnostic``).

    Returned exactly as written but for the file's final newline: these texts are hashed into
    cache keys (the agnostic caption prompt is part of every ingested clip's id), so an edit
    of one is a new key, never a silent reuse of captions made with another prompt.
    """
    path = text_file(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"{path}: prompt text file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: cannot read prompt text ({exc})") from None
    text = text[:-1] if text.endswith("\n") else text
    if not text.strip():
        raise PromptError(f"{path}: prompt text is empty")
    return text
