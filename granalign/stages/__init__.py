"""GranAlign's stages, one module per box of the paper's figure, each a plain function.

==================  =============================================  =====================
stage               module                                         graph node
==================  =============================================  =====================
1 query rewriting   :mod:`granalign.stages.rewrite` (variants,     ``rewrite``, ``fuse``
                    drift replacement)
2 query focus       :mod:`granalign.stages.aware_captions`         ``focus``
3 CLIP filter       :mod:`granalign.stages.clip_filter`            ``clip_filter``
4 aware captions    :mod:`granalign.stages.aware_captions`         ``caption``
5 granular fusion   :mod:`granalign.stages.fusion`                 ``fuse``
6 proposals         :mod:`granalign.stages.proposals`              ``propose``
7 NMS, saliency     :mod:`granalign.stages.nms`                    ``nms``
==================  =============================================  =====================

A stage takes arrays, texts, backend objects (the Protocols in :mod:`granalign.backends`) and
a small settings dataclass; it never sees LangGraph, a graph's Context or its state.  The
graph nodes (:mod:`graphs.retrieval`) read state and Context, call one stage and write state;
the benchmarks (``tools/benchmark_suite.py``) call the very same functions.
"""
