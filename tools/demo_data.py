"""Paths of the embedded demo data (a QVHighlights val subset shipped with the project)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_DIR = Path(__file__).resolve().parent / "data" / "qvhighlights_val_subset"


@dataclass(frozen=True)
class DemoData:
    annotations: Path
    captions: Path
    paraphrases: Path
    description: str


DEMO = DemoData(
    annotations=_DIR / "annotations.jsonl",
    captions=_DIR / "captions_minigptv2.jsonl",
    paraphrases=_DIR / "rephrased_queries_baichuan2.jsonl",
    description="100 QVHighlights val queries, MiniGPT-v2 captions, Baichuan2 paraphrases (tools/data/)",
)
