"""Numpy-only math of the method: g, smoothing, feedback, fusion, proposals, NMS, moments.

No I/O, no models, no LangGraph: a researcher can test a new rule with arrays alone.
"""
