"""Researcher commands on bad input: one line naming the input (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from granalign.errors import InputError
from granalign.io.jsonl import read_jsonl
from granalign.rewrite import FileRewriter
from tools.cli import app
from tools.demo_data import DEMO


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def _with_lone_surrogate(rows: list[dict[str, Any]], path: Path) -> Path:
    """``json.dumps`` writes a lone surrogate as the escape ``\\ud800``: valid JSON, no text."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "\\ud800" in path.read_text()
    return path


def test_bench_refuses_a_query_holding_a_lone_surrogate(tmp_path: Path) -> None:
    anns = read_jsonl(DEMO.annotations)[:2]
    anns[1]["query"] = "a man \ud800 chops onions"
    path = _with_lone_surrogate(anns, tmp_path / "ann.jsonl")
    got = _invoke("bench", "--annotations", str(path), "--captions", str(DEMO.captions),
                  "--rewriter", "none", "--store", str(tmp_path / "store"))  # fmt: skip
    assert got.exit_code == 2, got.output
    assert f"{path}:2: 'query' is not valid Unicode" in got.output
    assert got.exception is None or isinstance(got.exception, SystemExit)


def test_a_paraphrase_file_holding_a_lone_surrogate_is_refused_with_its_line(tmp_path: Path) -> None:
    rows = read_jsonl(DEMO.paraphrases)[:3]
    rows[2]["rephrased_query"][1] = "a lady \ud800 sits"
    path = _with_lone_surrogate(rows, tmp_path / "para.jsonl")
    with pytest.raises(InputError, match=r"para.jsonl:3: 'rephrased_query'\[1\] is not valid Unicode"):
        FileRewriter(path)
