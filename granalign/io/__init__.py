"""Everything that touches files or the store: Chroma store, video decoding, JSONL, caption
import, locks.
"""
