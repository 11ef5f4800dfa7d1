"""Editing and adding prompt pairs (experiment rows follow the text, m takes new files, typos
in a pair file fail at load) and errors LangGraph API clients can read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import prompts
from granalign.errors import BackendError, InputError
from graphs import resources
from graphs.context import Context
from prompts import PROMPT_DIR, PromptError, load_prompt_pairs
from tools.experiment import Setting, _config_key

PAIR = """\
id: mine
description: my pair
simplify: |
  Short: "{query}"
detail: |
  Long: "{query}"
"""


@pytest.fixture
def pair_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped prompt folder plus one new pair, used as the shipped folder."""
    d = tmp_path / "rewrite"
    shutil.copytree(PROMPT_DIR, d)
    (d / "mine.yaml").write_text(PAIR, encoding="utf-8")
    monkeypatch.setattr(prompts, "PROMPT_DIR", d)
    return d


def test_editing_a_pair_invalidates_its_experiment_row(pair_dir: Path) -> None:
    setting = Setting("pair:mine", "", {"include_original": False}, pairs=("mine",))
    before = _config_key(setting, Context(rewriter="none"))
    (pair_dir / "mine.yaml").write_text(PAIR.replace("Short:", "Translate into French:"), encoding="utf-8")
    assert _config_key(setting, Context(rewriter="none")) != before


def test_m_beyond_the_shipped_order_takes_new_pair_files(pair_dir: Path) -> None:
    ids = [p.id for p in resources.pairs_for(Context(m=6))]
    assert len(ids) == 6 and "mine" in ids
    with pytest.raises(InputError, match="only 6"):
        resources.pairs_for(Context(m=7))


def test_a_field_given_twice_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dup.yaml").write_text(
        PAIR.replace("id: mine", "id: dup") + 'simplify: "Other {query}"\n', encoding="utf-8"
    )
    with pytest.raises(PromptError, match=r"dup\.yaml:\d+: .*'simplify' is given twice"):
        load_prompt_pairs(["dup"], tmp_path)


def test_a_pair_id_with_a_comma_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "a,b.yaml").write_text(PAIR.replace("id: mine", "id: a,b"), encoding="utf-8")
    with pytest.raises(PromptError, match=r"a,b\.yaml: .*comma"):
        load_prompt_pairs(["a,b"], tmp_path)


def test_backend_errors_reach_langgraph_api_clients_with_their_message() -> None:
    from langgraph_api import serde  # what `langgraph dev` uses to send a run's error

    out = serde.default(BackendError("the server at http://vlm:8001/v1 refused the connection"))
    assert out["message"] == "the server at http://vlm:8001/v1 refused the connection"


def test_an_unreachable_agent_model_is_a_backend_error_naming_the_endpoint() -> None:
    from agent.context import AgentContext
    from agent.graph import build_agent

    agent = build_agent(tools=[])
    ctx = AgentContext(model="openai:http://127.0.0.1:9/v1#m", timeout_s=2)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9/v1"):
        agent.invoke({"messages": [{"role": "user", "content": "hi"}]}, context=ctx)


def test_editing_a_pair_starts_a_new_bench_journal(pair_dir: Path) -> None:
    """A killed bench resumes from its journal only if nothing changed, the pairs' text included."""
    from tools.bench import _run_key

    ctx = Context(rewriter="none", prompt_pairs="mine")
    before = _run_key(ctx, [])
    assert _run_key(ctx, []) == before
    (pair_dir / "mine.yaml").write_text(PAIR.replace("Short:", "Translate into French:"), encoding="utf-8")
    assert _run_key(ctx, []) != before
