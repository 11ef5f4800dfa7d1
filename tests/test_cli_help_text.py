"""Help and settings text a newcomer reads first: what it names must exist and read as written.

No store and no models: `granalign settings` and `--help` only, through Typer's runner.
"""

from __future__ import annotations

import re
from io import StringIO

import pytest
from rich.console import Console
from typer.testing import CliRunner

from graphs.context import describe
from tools import benchmark_suite, cli_bench
from tools.cli import app


def _flat(text: str) -> str:
    """Table and panel text on one line: box characters and runs of whitespace become one space."""
    return re.sub(r"[\s│┃║|]+", " ", text)


def test_settings_shows_every_meaning_whole_brackets_included(monkeypatch: pytest.MonkeyPatch) -> None:
    # "[m] number of prompt pairs" and "[rewrite validation] A rewrite side ..." lost their
    # brackets: the table read the descriptions as console markup
    buf = StringIO()
    monkeypatch.setattr(cli_bench, "out", Console(file=buf, width=2000, color_system=None))
    result = CliRunner().invoke(app, ["settings"])
    assert result.exit_code == 0, result.output
    shown = _flat(buf.getvalue())
    bracketed = [text for _, _, text in describe() if "[" in text]
    assert bracketed  # [m], [K %], [τ], [n %], [λ], [rewrite validation], ...
    for name, default, text in describe():
        assert f" {name} " in shown
        assert _flat(text) in shown, (name, text)
        assert _flat(repr(default)) in shown, (name, default)


def test_benchmark_help_names_every_benchmark() -> None:
    # --only listed six of the seven names (not ray_ingest), and --quick named only long_video
    result = CliRunner().invoke(app, ["benchmark", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    for name in benchmark_suite.BENCHMARKS:
        assert name in shown, name
    for name in benchmark_suite.SLOW:
        assert re.search(rf"{name}[^.]*left out of --quick|no [^.]*{name}", shown), name


def test_store_recover_help_says_its_store_is_the_damaged_one_read_from() -> None:
    # --store read "Chroma store folder (default ...)" as everywhere, though recover only reads
    # it (straight from SQLite) and writes the store given by --to
    result = CliRunner().invoke(app, ["store", "recover", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    assert "--store <path> The damaged store folder to recover from:" in shown, shown
    assert "SQLite file, without Chroma" in shown and "$GRANALIGN_STORE" in shown, shown


def test_request_attempts_says_what_is_retried() -> None:
    # it said "only HTTP 5xx and timeouts are retried"; 429s and unusable 200s are retried too
    import openai

    from granalign.backends.openai_llm import retry_on

    meaning = {name: text for name, _, text in describe()}["request_attempts"]
    assert openai.RateLimitError in retry_on()
    for retried in ("5xx", "429", "timeouts", "200 without a usable completion"):
        assert retried in meaning, retried


def test_a_misspelt_setting_variable_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    # --set nms_iuo=0.5 is refused, but GRANALIGN_NMS_IUO=0.5 was ignored without a word
    from graphs.context import misspelt_setting_variables
    from tools import cli_common

    others = "STORE GRAPH_URL GRAPH_ID MCP_TOKEN URL_ALLOWLIST URL_MAX_MB DOWNLOAD_CACHE_MB CHROMA_TIMEOUT"
    others += " CHROMA_TOKEN CHROMA_TOKEN_FILE CHROMA_AUTH_HEADER AGENT_MODEL ONNX_CACHE SHARED_DATA"
    assert misspelt_setting_variables({f"GRANALIGN_{n}": "x" for n in others.split()}) == []
    assert misspelt_setting_variables({"GRANALIGN_NMS_IOU": "0.5", "GRANALIGN_TOPK": "5"}) == [
        ("GRANALIGN_TOPK", "GRANALIGN_TOP_K")
    ]

    buf = StringIO()
    monkeypatch.setattr(cli_common, "console", Console(file=buf, width=300, color_system=None))
    monkeypatch.setenv("GRANALIGN_NMS_IUO", "0.5")
    ctx = cli_common.make_context(None, ["top_n=3"])
    assert ctx.nms_iou == 0.95 and ctx.top_n == 3  # still not read: a warning, not an error
    assert buf.getvalue().strip() == (
        "warning: GRANALIGN_NMS_IUO is not a setting and is not read; did you mean GRANALIGN_NMS_IOU? "
        "(granalign settings lists them)"
    )


def test_a_dash_id_hint_fits_the_command() -> None:
    # `videos rm -dB_...` was told to use --video (an option it does not have) and shown a
    # retrieve command; `bench -l 5` was told about video ids
    vid = "-dB_W38mCRM_210.0_360.0"
    rm = CliRunner().invoke(app, ["videos", "rm", vid], env={"COLUMNS": "300"})
    assert rm.exit_code == 2
    assert f"go after '--': granalign videos rm -- {vid}" in _flat(rm.output)
    assert "--video" not in rm.output and "retrieve" not in rm.output
    retrieve = CliRunner().invoke(app, ["retrieve", vid, "a query"], env={"COLUMNS": "300"})
    assert retrieve.exit_code == 2 and "--video ID" in retrieve.output
    typo = CliRunner().invoke(app, ["bench", "-l", "5"], env={"COLUMNS": "300"})
    assert typo.exit_code == 2 and "No such option: -l" in typo.output and "video id" not in typo.output


@pytest.mark.parametrize(
    ("typed", "meant"), [("nms_iuo", "nms_iou"), ("topk", "top_k"), ("rewritter", "rewriter")]
)
def test_a_misspelt_set_name_is_one_line_naming_the_setting_meant(typed: str, meant: str) -> None:
    # it was refused with every setting's name, ~50 of them wrapped over seven lines, and
    # the one meant somewhere among them
    result = CliRunner().invoke(app, ["retrieve", "some_video", "a query", "--set", f"{typed}=1"])
    assert result.exit_code == 2
    assert _flat(result.output).strip() == (
        f"error: --set {typed}: unknown setting; did you mean '{meant}'? (granalign settings lists them)"
    )


def test_a_set_name_like_no_setting_is_one_line() -> None:
    result = CliRunner().invoke(app, ["retrieve", "some_video", "a query", "--set", "colour=red"])
    assert result.exit_code == 2
    assert (
        _flat(result.output).strip() == "error: --set colour: unknown setting (granalign settings lists them)"
    )
