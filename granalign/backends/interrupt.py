"""Ctrl-C stops local generation between tokens, also on the worker threads graph nodes run on.

LangGraph runs sync nodes on a thread pool.  Ctrl-C raises KeyboardInterrupt in the main thread
only, which then waits for the running node: a SmolLM2 rewrite on a CPU went on through all its
batches (~40 s) before the process could exit.  While :func:`stop_generation_on_interrupt` is
active (the CLI wraps every command in it), SIGINT also sets an event that local ``generate``
calls check after every token (:func:`stop_criteria`); a generation stopped that way raises
KeyboardInterrupt instead of returning truncated text, which would otherwise be cached as a
finished rewrite or caption.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["stop_criteria", "stop_generation_on_interrupt", "stopped"]

_STOP = threading.Event()


def stopped() -> bool:
    """Whether an interrupt arrived while :func:`stop_generation_on_interrupt` was active."""
    return _STOP.is_set()


@contextmanager
def stop_generation_on_interrupt() -> Iterator[None]:
    """While active, SIGINT also stops local generation on every thread (see the module doc).

    The previous handler still runs (so the main thread gets its KeyboardInterrupt as before)
    and is restored on exit.  Outside the main thread, or where SIGINT is ignored or not
    handled from Python, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN / SIG_DFL / set outside Python: leave it alone
        yield
        return

    def on_interrupt(signum: int, frame: FrameType | None) -> Any:
        _STOP.set()
        return previous(signum, frame)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _STOP.clear()


def stop_criteria() -> Any:
    """A ``StoppingCriteriaList`` for ``generate`` that ends every sequence once interrupted."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _OnInterrupt(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            done = torch.full(
                (input_ids.shape[0],), _STOP.is_set(), dtype=torch.bool, device=input_ids.device
            )
            return done  # type: ignore[return-value]

    return StoppingCriteriaList([_OnInterrupt()])
