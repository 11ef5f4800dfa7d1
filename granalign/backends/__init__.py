"""Model backends behind GranAlign's small protocols, one module per engine.

Backends import their heavy libraries (torch, transformers, openai) lazily, so importing the
library, the graph or the CLI stays fast and works where an engine is not installed.
"""
