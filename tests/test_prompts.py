"""Prompt pairs as data: the shipped pairs load, and every malformed file names file and field."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from granalign.errors import InputError
from prompts import (
    DEFAULT_M,
    DEFAULT_PAIRS,
    PROMPT_DIR,
    PromptError,
    PromptPair,
    available_pair_ids,
    load_all_prompt_pairs,
    load_prompt_pair,
    load_prompt_pairs,
    prompt_hash,
)

GOOD = """\
id: {id}
description: a test pair
system: You rewrite queries.
simplify: |
  Make it short: "{{query}}"
detail: |
  Make it precise: "{{query}}"
"""


def write_pair(directory: Path, pair_id: str, text: str | None = None) -> Path:
    path = directory / f"{pair_id}.yaml"
    path.write_text(GOOD.format(id=pair_id) if text is None else text, encoding="utf-8")
    return path


def test_every_shipped_pair_loads_and_renders() -> None:
    pairs = load_all_prompt_pairs()
    assert len(pairs) >= 4
    assert [p.id for p in pairs] == sorted(p.id for p in pairs)
    for pair in pairs:
        assert pair.description and pair.simplify and pair.detail
        assert pair.simplify != pair.detail
        query = "A man in a {red} hat opens a door."
        assert query in pair.render_simplify(query)
        assert query in pair.render_detail(query)
        assert "{" not in pair.render_simplify("q").replace("{red}", "")
    assert len({(p.simplify, p.detail) for p in pairs}) == len(pairs), "pairs must differ"


def test_default_order_names_shipped_pairs_and_selects_m() -> None:
    shipped = set(available_pair_ids())
    assert set(DEFAULT_PAIRS) <= shipped
    default = load_prompt_pairs()
    assert len(default) == DEFAULT_M == 3
    assert {p.id for p in default} == set(DEFAULT_PAIRS[:DEFAULT_M])
    assert [p.id for p in default] == sorted(p.id for p in default)


def test_selection_by_ids_is_sorted_and_validated() -> None:
    assert [p.id for p in load_prompt_pairs(["plain", "core"])] == ["core", "plain"]
    with pytest.raises(PromptError, match=r"'nope' not found.*available: .*core"):
        load_prompt_pairs(["nope"])
    with pytest.raises(PromptError, match="selected twice"):
        load_prompt_pairs(["core", "core"])


def test_new_file_in_folder_is_a_new_pair(tmp_path: Path) -> None:
    write_pair(tmp_path, "zeta")
    write_pair(tmp_path, "alpha")
    assert available_pair_ids(tmp_path) == ["alpha", "zeta"]
    pairs = load_all_prompt_pairs(tmp_path)
    assert [p.id for p in pairs] == ["alpha", "zeta"]
    assert pairs[0].system == "You rewrite queries."
    # no shipped id in a custom folder: the default selection tops up by id order
    assert [p.id for p in load_prompt_pairs(directory=tmp_path)] == ["alpha", "zeta"]
    write_pair(tmp_path, "core")
    assert [p.id for p in load_prompt_pairs(directory=tmp_path)] == ["alpha", "core", "zeta"]


def test_system_is_optional(tmp_path: Path) -> None:
    text = GOOD.format(id="nosys").replace("system: You rewrite queries.\n", "")
    pair = load_prompt_pair(write_pair(tmp_path, "nosys", text))
    assert pair.system == ""


@pytest.mark.parametrize(
    ("name", "edit", "field", "message"),
    [
        (
            "missing",
            lambda t: t.replace('detail: |\n  Make it precise: "{query}"\n', ""),
            "detail",
            "missing",
        ),
        (
            "type",
            lambda t: t.replace("description: a test pair", "description: [a, b]"),
            "description",
            "string",
        ),
        (
            "placeholder",
            lambda t: t.replace('short: "{query}"', 'short: "{query}" {video}'),
            "simplify",
            "{video}",
        ),
        ("noquery", lambda t: t.replace('precise: "{query}"', "precise"), "detail", "must contain"),
        ("brace", lambda t: t.replace('short: "{query}"', 'short: "{query}" {'), "simplify", "malformed"),
        ("conversion", lambda t: t.replace('precise: "{query}"', 'precise: "{query!r}"'), "detail", "plain"),
        ("unknown", lambda t: t + "simplfy: typo\n", "simplfy", "unknown field"),
        (
            "empty",
            lambda t: t.replace("description: a test pair", "description: '  '"),
            "description",
            "empty",
        ),
        ("idstem", lambda t: t.replace("id: idstem", "id: other"), "id", "file stem"),
        (
            "sysquery",
            lambda t: t.replace("You rewrite queries.", "You rewrite the query {query}."),
            "system",
            "reach the model literally",
        ),
    ],
)
def test_malformed_file_names_file_and_field(
    tmp_path: Path, name: str, edit: Callable[[str], str], field: str, message: str
) -> None:
    path = write_pair(tmp_path, name, edit(GOOD.format(id=name)))
    with pytest.raises(PromptError) as info:
        load_prompt_pair(path)
    text = str(info.value)
    assert str(path) in text
    assert field in text
    assert message in text


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_pair(tmp_path, "syntax", "id: syntax\ndescription: x\nsimplify: [unclosed\ndetail: y\n")
    with pytest.raises(PromptError, match=re.escape(str(path)) + r":\d+: YAML syntax error"):
        load_prompt_pair(path)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xe9", "not valid UTF-8"),  # a Latin-1 accent pasted from another editor
        (b"\x1b[0m", "YAML syntax error"),  # a terminal colour code pasted with the text
    ],
)
def test_bad_bytes_name_file_and_line(tmp_path: Path, raw: bytes, problem: str) -> None:
    """A pair file is many lines of prose: a bad byte is reported with its line, as a syntax error is."""
    text = GOOD.format(id="bytes").encode("utf-8")
    path = tmp_path / "bytes.yaml"
    path.write_bytes(text.replace(b"Make it precise", b"Make it pr" + raw + b"cise"))
    line = text.decode().splitlines().index("detail: |") + 2
    with pytest.raises(PromptError, match=re.escape(f"{path}:{line}: {problem}")):
        load_prompt_pair(path)


@pytest.mark.parametrize("text", ["", "- a\n- list\n", "just a string\n"])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_pair(tmp_path, "shape", text)
    with pytest.raises(PromptError, match=re.escape(str(path)) + ": expected a mapping"):
        load_prompt_pair(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="not found"):
        load_prompt_pair(tmp_path / "absent.yaml")
    with pytest.raises(PromptError, match="folder not found"):
        load_prompt_pairs(directory=tmp_path / "absent")
    with pytest.raises(PromptError, match="no prompt pairs"):
        load_prompt_pairs(directory=tmp_path)


def test_a_broken_file_does_not_block_other_pairs(tmp_path: Path) -> None:
    write_pair(tmp_path, "good")
    write_pair(tmp_path, "broken", "id: [\n")
    assert [p.id for p in load_prompt_pairs(["good"], tmp_path)] == ["good"]
    with pytest.raises(PromptError, match=r"broken\.yaml"):
        load_all_prompt_pairs(tmp_path)


def test_prompt_hash_is_stable_and_tracks_templates() -> None:
    pair = PromptPair("x", "desc", "short {query}", "long {query}", "sys")
    h = prompt_hash(pair)
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert h == prompt_hash(PromptPair("x", "desc", "short {query}", "long {query}", "sys"))
    assert h == prompt_hash(PromptPair("x", "other description", "short {query}", "long {query}", "sys"))
    assert h != prompt_hash(PromptPair("x", "desc", "shorter {query}", "long {query}", "sys"))
    assert h != prompt_hash(PromptPair("x", "desc", "short {query}", "longer {query}", "sys"))
    assert h != prompt_hash(PromptPair("x", "desc", "short {query}", "long {query}", "other"))
    assert h != prompt_hash(PromptPair("y", "desc", "short {query}", "long {query}", "sys"))


def test_prompt_hash_of_file_changes_with_its_template(tmp_path: Path) -> None:
    path = write_pair(tmp_path, "p")
    before = prompt_hash(load_prompt_pair(path))
    assert before == prompt_hash(load_prompt_pair(path))
    path.write_text(GOOD.format(id="p").replace("Make it short", "Make it brief"), encoding="utf-8")
    assert prompt_hash(load_prompt_pair(path)) != before


def test_shipped_hashes_are_distinct() -> None:
    hashes = [prompt_hash(p) for p in load_all_prompt_pairs()]
    assert len(set(hashes)) == len(hashes)
    assert PROMPT_DIR.name == "rewrite"


def test_library_loader_turns_prompt_errors_into_input_errors(tmp_path: Path) -> None:
    """prompts/ imports nothing from the library, so the library wraps its errors for the CLI."""
    from granalign import prompt_files

    with pytest.raises(InputError, match="'nope' not found"):
        prompt_files.load_prompt_pairs(["nope"])
    with pytest.raises(InputError, match="prompt pair folder not found"):
        prompt_files.available_pair_ids(tmp_path / "missing")
    with pytest.raises(InputError, match="prompt text file not found"):
        prompt_files.prompt_text("captions/missing")


def test_caption_and_focus_prompts_are_prompt_files() -> None:
    """Every prompt text lives in prompts/: the backends use exactly the files' text."""
    from granalign.backends import captioner, openai_llm
    from prompts import load_text

    assert load_text("captions/agnostic") == captioner.AGNOSTIC_PROMPT
    assert load_text("captions/aware") == captioner.AWARE_PROMPT and "{focus}" in captioner.AWARE_PROMPT
    assert load_text("focus/system") == openai_llm.FOCUS_SYSTEM
    assert load_text("focus/template") == openai_llm.FOCUS_TEMPLATE and "{query}" in openai_llm.FOCUS_TEMPLATE


def test_a_pair_file_that_is_a_folder_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "folder.yaml").mkdir()
    write_pair(tmp_path, "good")
    where = re.escape(str(tmp_path / "folder.yaml"))
    with pytest.raises(PromptError, match=where + ": prompt pair 'folder' is a folder"):
        load_prompt_pairs(["folder"], tmp_path)
    assert [p.id for p in load_all_prompt_pairs(tmp_path)] == ["good"]  # not a pair, not listed


def test_an_unchanged_pair_file_is_parsed_once_and_an_edit_is_read_at_once(tmp_path: Path) -> None:
    """Every retrieval checks its pair selection, so the parsed pairs are kept (by the file's
    bytes): an unchanged file is not parsed again, and an edit of the same size made within the
    same clock tick of the file system is still read."""
    path = write_pair(tmp_path, "p")
    first = load_prompt_pair(path)
    assert load_prompt_pair(path) is first
    path.write_text(GOOD.format(id="p").replace("Make it short", "Make it brief"), encoding="utf-8")
    edited = load_prompt_pair(path)
    assert "Make it brief" in edited.simplify and edited is not first
    assert load_prompt_pair(path) is edited
