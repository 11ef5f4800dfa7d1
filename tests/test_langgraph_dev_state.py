"""Each ``langgraph dev`` the tests start keeps its threads and runs to itself.

The in-memory runtime saves them in ``.langgraph_api/`` of its working directory and, when it
starts, restarts the runs it finds there unfinished; servers sharing that folder (all started in
the repository) handed one test module's leftovers to the next module's server.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.servers import langgraph_dev


@pytest.mark.slow
def test_a_servers_unfinished_run_does_not_reach_the_next_server(tmp_path: Path) -> None:
    """A run still pending when its server stops is not there, nor its thread, in the next server
    (before, the second server loaded both and would have started the run)."""
    from langgraph_sdk import get_sync_client

    marker = {"granalign_test": uuid.uuid4().hex}
    with langgraph_dev({}, tmp_path / "first.log", timeout=180) as url:
        client = get_sync_client(url=url)
        thread = client.threads.create(metadata=marker)
        run = client.runs.create(
            thread["thread_id"], "retrieval", input={"video": "kitchen", "query": "a cut"}, after_seconds=3600
        )
        assert client.runs.get(thread["thread_id"], run["run_id"])["status"] == "pending"
        assert client.threads.search(metadata=marker)
    with langgraph_dev({}, tmp_path / "second.log", timeout=180) as url:
        client = get_sync_client(url=url)
        assert client.threads.search(metadata=marker) == []


def test_the_servers_state_folder_stays_out_of_git() -> None:
    """``langgraph dev`` started by hand in the repository still writes ``.langgraph_api/`` there."""
    root = Path(__file__).resolve().parents[1]
    got = subprocess.run(
        ["git", "check-ignore", "-q", ".langgraph_api/.langgraph_ops.pckl"], cwd=root, check=False
    )
    assert got.returncode == 0, ".langgraph_api/ is not git-ignored"
