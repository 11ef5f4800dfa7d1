"""``granalign retrieve`` prints what the user typed and what the store holds as plain text.

Real MiniLM, real Chroma; a tiny captions import; the command runs in-process through Typer's
runner.  Queries and stored ids are free text: brackets (Rich markup) and dollar signs
(matplotlib mathtext) in them must reach the table, the notes and the plot as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from granalign.backends.embedder import make_embedder
from granalign.core.match import likely_from
from granalign.io.captions_import import import_captions
from graphs import resources
from graphs.context import Context
from tools.cli import app

ODD_VID = "clip [bold]7"  # any printable non-path name is a store id (captions_import)
CAPTIONS = ["a man chops onions in a kitchen"] * 3 + ["a dog runs on a beach"] * 5


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_retrieve")
    caps = path / "caps.jsonl"
    caps.write_text(json.dumps({"vid": ODD_VID, "clip_len_s": 2, "captions": CAPTIONS}) + "\n")
    ctx = Context(store_dir=str(path / "store"))
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="t")
    resources.clear_caches(close_stores=True)
    return path / "store"


def _retrieve(store_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["retrieve", "--store", str(store_dir), *args], env={"COLUMNS": "1000"})


def test_brackets_in_the_query_and_the_id_are_printed_not_read_as_markup(store_dir: Path) -> None:
    query = "a dog [/][/] runs [bold]on a beach"
    got = _retrieve(store_dir, "--video", ODD_VID, query)
    assert got.exception is None or isinstance(got.exception, SystemExit), got.exception
    assert got.exit_code == 0, got.output
    assert f"{ODD_VID}: {query}" in " ".join(got.output.split())  # the table's title, as typed


def test_dollar_signs_in_the_query_do_not_break_the_plot(store_dir: Path, tmp_path: Path) -> None:
    plot = tmp_path / "t.png"
    got = _retrieve(store_dir, "--video", ODD_VID, "a sign reading $x^$ on a beach", "--plot", str(plot))
    assert got.exception is None or isinstance(got.exception, SystemExit), got.exception
    assert got.exit_code == 0 and plot.is_file(), got.output


def test_retrieve_gives_the_match_in_json_and_in_the_table(store_dir: Path) -> None:
    """The scores are normalised per video; the match says whether the video shows the query."""
    shown = _retrieve(store_dir, "--video", ODD_VID, "a dog runs on a beach", "--json")
    absent = _retrieve(store_dir, "--video", ODD_VID, "a rocket launches into space", "--json")
    assert shown.exit_code == 0 and absent.exit_code == 0, shown.output + absent.output
    a, b = json.loads(shown.stdout), json.loads(absent.stdout)
    assert a["match_embedder"] == b["match_embedder"] == "all-MiniLM-L6-v2"
    upper = likely_from(len(a["saliency"]))  # the level for this video's caption count
    assert -1.0 <= b["match"] < 0.30 < upper <= a["match"] <= 1.0  # a caption says so word for word
    table = _retrieve(store_dir, "--video", ODD_VID, "a rocket launches into space")
    assert table.exit_code == 0, table.output
    assert f"match {b['match']:g} (all-MiniLM-L6-v2: below 0.30 the video rarely shows it" in table.output
