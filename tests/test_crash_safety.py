"""``kill -9`` during a benchmark and during an experiment, then re-run.

Real processes (``granalign bench`` / ``granalign experiment`` on the embedded 100-query
QVHighlights subset, real MiniLM, real Chroma) are killed once their journal holds finished
queries; the re-run must take those from the journal (not recompute them), finish, and write
exactly the predictions of an uninterrupted run.  The journal itself is tested for torn writes
and for logs of other settings.  (Ingest crash safety is in tests/test_ingest.py; graph runs
resume by thread id in tests/test_durable.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from granalign.io.jsonl import Journal, read_jsonl
from tools.demo_data import DEMO

ROOT = Path(__file__).resolve().parents[1]
GRANALIGN = [sys.executable, "-m", "tools.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


# -- the journal ---------------------------------------------------------------------------------


def test_journal_keeps_rows_across_reopen_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, "k1")
    j.append([{"qid": 1}, {"qid": 2}])
    j.close()
    with path.open("a") as fh:
        fh.write('{"qid": 3, "pred": {"trunc')  # a write cut by kill -9
    j = Journal(path, "k1")
    assert j.rows == [{"qid": 1}, {"qid": 2}]
    j.append([{"qid": 3}])
    j.close()
    assert [r.get("qid") for r in read_jsonl(path)] == [None, 1, 2, 3]  # header + rows, no garbage


def test_journal_of_other_settings_is_discarded_not_mixed(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, "old-settings")
    j.append([{"qid": 1}])
    j.close()
    j = Journal(path, "new-settings")
    assert j.rows == []
    j.discard()
    assert not path.exists()


# -- real processes ------------------------------------------------------------------------------


def _run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*GRANALIGN, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kw)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _kill_when(journal_glob: str, folder: Path, args: list[str], min_rows: int) -> list[dict]:
    """Start ``granalign args``, SIGKILL it once a journal under ``folder`` holds ``min_rows`` rows."""
    proc = subprocess.Popen(
        [*GRANALIGN, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for path in folder.glob(journal_glob):
                lines = path.read_text().splitlines()
                if len(lines) > min_rows:  # header + rows
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
                    return [json.loads(x) for x in lines[1:] if x.endswith("}")]
            if proc.poll() is not None:
                raise AssertionError(f"run ended before the kill: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        raise AssertionError("no journal rows appeared")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crash") / "store"


BENCH = [
    "bench",
    "--annotations",
    str(DEMO.annotations),
    "--captions",
    str(DEMO.captions),
    "--concurrency",
    "1",
    "--limit",
    "60",
]


@pytest.mark.slow
def test_bench_killed_mid_pass_resumes_and_equals_an_uninterrupted_run(store, tmp_path):
    _run([*BENCH, "--store", str(store), "--out", str(tmp_path / "ref.jsonl")])  # also imports captions
    assert not list((store / "journals").glob("*.jsonl"))  # a finished run leaves no journal
    logged = _kill_when("journals/bench-*.jsonl", store, [*BENCH, "--store", str(store)], min_rows=1)
    again = _run([*BENCH, "--store", str(store), "--out", str(tmp_path / "got.jsonl")])
    assert f"resumed: {len(logged)} queries" in again.stdout + again.stderr
    assert read_jsonl(tmp_path / "got.jsonl") == read_jsonl(tmp_path / "ref.jsonl")
    assert not list((store / "journals").glob("*.jsonl"))


@pytest.mark.slow
def test_experiment_killed_mid_setting_keeps_finished_settings_and_resumes(store, tmp_path):
    para = DEMO.annotations.parent / "rephrased_queries_baichuan2.jsonl"
    args = [
        "experiment",
        "--annotations",
        str(DEMO.annotations),
        "--captions",
        str(DEMO.captions),
        "--paraphrases",
        str(para),
        "--rewriter",
        "none",
        "--only",
        "Q_r->C_agn,Q_r+para->C_agn",
        "--concurrency",
        "1",
        "--limit",
        "60",
        "--store",
        str(store),
    ]
    _run([*args, "--out-dir", str(tmp_path / "ref")])
    out = tmp_path / "got"
    settings = out / "settings"
    _kill_when("Q_r+para-C_agn/preds.partial.jsonl", settings, [*args, "--out-dir", str(out)], min_rows=1)
    assert (settings / "Q_r-C_agn" / "row.json").exists()  # the finished setting was saved
    again = _run([*args, "--out-dir", str(out)])
    said = again.stdout + again.stderr
    assert "Q_r->C_agn: " in said and "(cached)" in said
    row = json.loads((settings / "Q_r+para-C_agn" / "row.json").read_text())
    assert 0 < row["resumed"] < row["n"]
    for name in ("Q_r-C_agn", "Q_r+para-C_agn"):
        assert read_jsonl(settings / name / "preds.jsonl") == read_jsonl(
            tmp_path / "ref" / "settings" / name / "preds.jsonl"
        )
        assert not (settings / name / "preds.partial.jsonl").exists()
