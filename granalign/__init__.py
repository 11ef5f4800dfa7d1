"""GranAlign: training-free zero-shot video moment retrieval (AAAI 2026, arXiv 2601.00584).

The library floor of the project: pure math (``similarity``, ``fusion``, ``proposals``,
``nms``), evaluation, data formats, model backends and the Chroma store.  The math modules
import numpy only, so a new proposal rule can be tried without any model.
"""

__version__ = "0.1.0"
