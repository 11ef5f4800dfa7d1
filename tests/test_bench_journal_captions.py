"""A bench journal belongs to the captions it was answered from (real MiniLM, real Chroma)."""

from __future__ import annotations

from pathlib import Path

from granalign.io.jsonl import read_jsonl, write_jsonl
from graphs.context import Context
from tools import bench
from tools.demo_data import DEMO


def test_a_journal_of_other_captions_is_not_resumed(tmp_path: Path) -> None:
    """Killed with a journal of file A's answers, then re-run after the captions file changed:
    the re-run must answer from the new captions, like an uninterrupted run, not replay A's rows."""
    anns = read_jsonl(DEMO.annotations)[:4]
    annotations = tmp_path / "ann.jsonl"
    write_jsonl(annotations, anns)
    caps = {c["vid"]: c for c in read_jsonl(DEMO.captions)}
    old = [caps[v] for v in dict.fromkeys(a["vid"] for a in anns)]
    new = [{**c, "captions": list(reversed(c["captions"]))} for c in old]
    captions, journal = tmp_path / "caps.jsonl", tmp_path / "journal.jsonl"
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter="none")
    write_jsonl(captions, old)
    bench.run_benchmark(annotations, captions, ctx, concurrency=1, journal_path=journal, keep_journal=True)
    write_jsonl(captions, new)  # the file is edited before the re-run
    again = bench.run_benchmark(annotations, captions, ctx, concurrency=1, journal_path=journal)
    fresh = bench.run_benchmark(
        annotations, captions, Context(store_dir=str(tmp_path / "fresh"), rewriter="none"), concurrency=1
    )
    assert again.resumed == 0
    assert again.predictions == fresh.predictions
