"""The README's examples run as written after ``make run`` (issue 10, item 3).

``make run`` (``granalign demo``) imports the shipped QVHighlights subset into the default
store.  Here the store is prepared the same way (the demo's captions file, the demo's source
name) for the subset videos the README names, and then every Python block is executed as it
stands, the shell block introduced as runnable after ``make run`` is run command by command,
and every other ``granalign`` command line is checked against the CLI: the command exists and
each of its options is one the command declares.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from granalign.backends.embedder import make_embedder
from granalign.io.captions_import import import_captions, source_name_for
from granalign.io.jsonl import read_jsonl
from graphs import resources
from graphs.context import Context
from tools.cli import app
from tools.demo_data import DEMO

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE_INTRO = "After `make run`"
QVH_ID = re.compile(r"-?[\w-]{11}_\d+\.\d_\d+\.\d")
SUBSET_VIDS = {row["vid"] for row in read_jsonl(DEMO.annotations)}


def code_blocks(lang: str) -> list[tuple[str, str]]:
    """``(the text line before the block, the block's code)`` for every fenced ``lang`` block."""
    blocks: list[tuple[str, str]] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            intro = next((line for line in reversed(lines[:i]) if line.strip()), "")
            end = lines.index("```", i + 1)
            blocks.append((intro, "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


def granalign_commands(code: str) -> list[list[str]]:
    """The ``granalign`` command lines of a shell block, as argument lists (continuations joined)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and Path(words[0]).name == "granalign":
            commands.append(words[1:])
    return commands


def runnable_blocks() -> list[str]:
    return [code for intro, code in code_blocks("bash") if intro.startswith(RUNNABLE_INTRO)]


def synopsis_commands() -> list[list[str]]:
    runnable = runnable_blocks()
    blocks = [code for _, code in code_blocks("bash") if code not in runnable]
    return [cmd for code in blocks for cmd in granalign_commands(code)]


@pytest.fixture(scope="module")
def after_make_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default store as ``make run`` leaves it, for the subset videos the README names."""
    named = set(QVH_ID.findall(README.read_text(encoding="utf-8"))) & SUBSET_VIDS
    assert named, "the README names no video of the shipped subset"
    store = tmp_path_factory.mktemp("readme") / "store"
    ctx = Context(store_dir=str(store))
    report = import_captions(
        resources.store_for(ctx),
        make_embedder(ctx.embedder),
        DEMO.captions,
        source=source_name_for(DEMO.captions),
        only=named,
    )
    assert report.imported == len(named)
    return store


@pytest.fixture
def user_shell(after_make_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's environment after ``make run``: the default store is the prepared one."""
    monkeypatch.setenv("GRANALIGN_STORE", str(after_make_run))
    for name in ("GRANALIGN_GRAPH_URL", "GRANALIGN_REWRITER", "GRANALIGN_VIDEO_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_video_id_in_the_examples_ships_with_the_project() -> None:
    for lang in ("python", "bash"):
        for _, code in code_blocks(lang):
            for vid in QVH_ID.findall(code):
                assert vid in SUBSET_VIDS, f"README example uses {vid}, which is not in {DEMO.annotations}"


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_python_example_runs_as_written(
    index: int, user_shell: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, code = code_blocks("python")[index]
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "out" in namespace:  # the graph example: windows of the named video, best first
        moments = namespace["out"]["moments"]
        assert moments and all(s < e for s, e, _ in moments)
        assert [m[2] for m in moments] == sorted((m[2] for m in moments), reverse=True)
    printed = capsys.readouterr().out
    if "print(" in code:
        assert "moment(s), best first" in printed or "video_id" in printed, printed


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_python_example_is_formatted_as_the_project_is(index: int) -> None:
    """Users paste these blocks: they should look like the code ``ruff format`` keeps."""
    import subprocess
    import sys

    _, code = code_blocks("python")[index]
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "format", "--diff", "--stdin-filename", "readme_block.py", "-"],
        input=code + "\n",
        capture_output=True,
        text=True,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_after_make_run_commands_run_as_written(user_shell: Path) -> None:
    [block] = runnable_blocks()
    commands = granalign_commands(block)
    assert commands
    for args in commands:
        got = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert got.exit_code == 0, (args, got.output)
        if "--plot" in args:
            assert (user_shell / args[args.index("--plot") + 1]).stat().st_size > 0
        if "--json" in args:
            result = json.loads(got.stdout[got.stdout.index("{") :])
            video = args[args.index("--video") + 1] if "--video" in args else args[1]
            assert result["video_id"] == video and result["moments"]


def _options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("args", synopsis_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_other_command_line_parses(args: list[str]) -> None:
    group = typer.main.get_command(app)
    name, *rest = args
    command = group.commands.get(name)  # type: ignore[attr-defined]
    assert command is not None, f"README shows `granalign {name}`, which is no command"
    words = [w.strip("[]") for w in rest]
    for i, word in enumerate(words):
        if word.startswith("--") and word != "--":
            option = word.split("=", 1)[0]
            assert option in _options(command), f"`granalign {name}` has no option {option}"
            if option == "--set":
                assert words[i + 1].split("=", 1)[0] in Context.__dataclass_fields__, words[i + 1]
    helped = CliRunner().invoke(app, [name, "--help"])
    assert helped.exit_code == 0, helped.output


def _documented_keys(text: str) -> set[str]:
    return {key.strip().rstrip("?") for key in text.replace("\n", " ").split(",")}


def test_the_graphs_inputs_and_outputs_are_the_keys_the_readme_names() -> None:
    """The retrieval output lacked ``clip_len_s`` (what a saliency value spans) and the ingest
    output ``path``: a reader of the README could not know either came back."""
    from graphs.state import IngestInput, IngestOutput, RetrievalInput, RetrievalOutput

    text = README.read_text(encoding="utf-8")
    found = re.search(r"input `\{(.*?)\}` \(a file\), output `\{(.*?)\}`", text, re.S)
    assert found, "the README no longer describes the ingest graph's input and output"
    assert _documented_keys(found[1]) == set(IngestInput.__annotations__)
    assert _documented_keys(found[2]) == set(IngestOutput.__annotations__)
    found = re.search(r"Input `\{(.*?)\}`, output `\{(.*?)\}`", text, re.S)
    assert found, "the README no longer describes the retrieval graph's input and output"
    assert _documented_keys(found[1]) == set(RetrievalInput.__annotations__)
    assert _documented_keys(found[2]) == set(RetrievalOutput.__annotations__)
