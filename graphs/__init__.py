"""LangGraph state machines over the granalign library: the retrieval graph and its Context."""
