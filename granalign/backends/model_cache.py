"""One loaded transformers model per (model, device) per process, for the local backends.

The local captioner and the local rewriter both load on first use (building a graph or the
CLI must not pay a model load), share the model between threads (parallel graph branches
must not load it twice) and serialise ``generate`` on a lock of their own.  A load failure
is the user's configuration, so it becomes one :class:`ConfigError` naming the model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from granalign.backends.interrupt import stop_criteria, stopped
from granalign.errors import ConfigError


@dataclass
class LoadedModel:
    """A model and its ``tokenizer`` (or processor); ``lock`` serialises its ``generate`` calls."""

    tokenizer: Any
    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


def pad_left(tokenizer: Any) -> None:
    """Decoder-only batching: new tokens follow the prompt, so padding goes on the left."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


class ModelCache:
    """Loaded models of one role (``"captioner"``, ``"rewriter"``) by (model, device)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str, device: str, load: Callable[[], tuple[Any, Any]]) -> LoadedModel:
        """The model ``name`` on ``device``, loaded once by ``load`` (→ tokenizer, model).

        Our own ConfigErrors (a model not in the cache, offline) pass unchanged; any other
        failure is reported as a model that could not be loaded.
        """
        with self._lock:
            loaded = self._loaded.get((name, device))
            if loaded is not None:
                return loaded
            try:
                tokenizer, model = load()
            except ConfigError:
                raise
            except ImportError as exc:
                raise ConfigError(f"{self.role} model {name!r}: a library is missing ({exc})") from exc
            except Exception as exc:  # any loader failure is a configuration problem for the user
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(f"{self.role} model {name!r} could not be loaded: {reason}") from exc
            loaded = self._loaded[(name, device)] = LoadedModel(tokenizer, model)
            return loaded

    def clear(self) -> None:
        """Forget every loaded model (tests; a long-running process switching models)."""
        with self._lock:
            self._loaded.clear()


def generate_greedy(model: Any, what: str, **inputs: Any) -> Any:
    """``model.generate`` greedy (one beam, no sampling: output a function of the input, as the
    caches assume), stopped by Ctrl-C on any thread.

    An interrupted run raises KeyboardInterrupt naming ``what`` ("captioning", "rewriting"):
    cut-short text must never be returned, since it would be cached.
    """
    generated = model.generate(
        **inputs,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        stopping_criteria=stop_criteria(),
    )
    if stopped():
        raise KeyboardInterrupt(f"{what} stopped by an interrupt (Ctrl-C)")
    return generated
