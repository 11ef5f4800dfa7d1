"""Backend spec strings: ``engine:target`` chosen in Context or the environment.

One small grammar for every backend role keeps configuration a plain string (an environment
variable, a CLI flag, a Studio form field) while still failing early with the list of what is
allowed, instead of deep inside an engine.

Grammar::

    none                        (roles where "nothing" is meaningful, e.g. the rewriter)
    file:<path>                 precomputed outputs (captions, rewrites)
    local:<hf-id-or-path>       a model run in this process (transformers, open_clip, ...)
    openai:<base_url>#<model>   an OpenAI-compatible server (vLLM in production)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from granalign.errors import ConfigError

Engine = Literal["none", "file", "local", "openai"]
ENGINES: tuple[Engine, ...] = ("none", "file", "local", "openai")


@dataclass(frozen=True)
class BackendSpec:
    """A parsed spec; ``model`` is only set for ``openai:`` specs."""

    engine: Engine
    target: str = ""
    model: str = ""

    def __str__(self) -> str:
        if self.engine == "none":
            return "none"
        if self.engine == "openai":
            return f"openai:{self.target}#{self.model}"
        return f"{self.engine}:{self.target}"


def parse_spec(spec: str, *, role: str, allowed: tuple[Engine, ...] = ENGINES) -> BackendSpec:
    """Parse ``spec`` for ``role`` (used in messages), accepting only ``allowed`` engines."""
    if not isinstance(spec, str):
        raise ConfigError(f"{role} backend spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    forms = ", ".join(_FORMS[e] for e in allowed)
    if text == "none":
        engine, rest = "none", ""
    elif ":" in text:
        engine, rest = text.split(":", 1)
    else:
        raise ConfigError(f"{role} backend spec {spec!r} is not understood; allowed: {forms}")
    if engine not in allowed:
        raise ConfigError(f"{role} backend engine {engine!r} in {spec!r} is unknown; allowed: {forms}")
    if engine == "none":
        if rest.strip():  # "none:smollm2" is a typo, not a way to switch the backend off
            raise ConfigError(
                f"{role} backend spec {spec!r}: 'none' takes nothing after it; allowed: {forms}"
            )
        return BackendSpec("none")
    if not rest:
        raise ConfigError(f"{role} backend spec {spec!r} names no target; allowed: {forms}")
    if engine == "openai":
        url, sep, model = rest.partition("#")
        if not sep or not url or not model:
            raise ConfigError(f"{role} backend spec {spec!r} must look like openai:<base_url>#<model>")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{role} backend spec {spec!r}: base_url must start with http:// or https://")
        return BackendSpec("openai", url, model)
    return BackendSpec(engine, rest)


_FORMS: dict[Engine, str] = {
    "none": "none",
    "file": "file:<path>",
    "local": "local:<hf-id-or-path>",
    "openai": "openai:<base_url>#<model>",
}
