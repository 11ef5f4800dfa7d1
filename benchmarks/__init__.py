"""Benchmarks: the suite behind ``granalign benchmark`` and the ingest/memory script it reuses."""
