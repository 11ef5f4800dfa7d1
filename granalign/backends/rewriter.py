"""Build the rewriter a spec string names: the one place that knows every rewriter backend.

Here rather than in :mod:`granalign.rewrite` because the LLM backends import that module (for
:class:`~granalign.rewrite.Rewrite` and the output cleaning); a factory there would make the two
import each other.  A backend is imported only when its spec is used (no torch for ``none``).
"""

from __future__ import annotations

from granalign.errors import ConfigError
from granalign.rewrite import FileRewriter, IdentityRewriter, Rewriter
from granalign.specs import parse_spec

__all__ = ["make_rewriter"]


def make_rewriter(spec: str, *, timeout_s: float = 60.0, attempts: int = 3, concurrency: int = 8) -> Rewriter:
    """Build the rewriter a spec string names (the forms: :mod:`granalign.rewrite`).

    ``timeout_s`` (per request), ``attempts`` and ``concurrency`` only concern ``openai:`` specs.
    """
    parsed = parse_spec(spec, role="rewriter", allowed=("none", "file", "local", "openai"))
    if parsed.engine == "none":
        return IdentityRewriter()
    if parsed.engine == "file":
        return FileRewriter(parsed.target)
    if parsed.engine == "local":
        from granalign.backends.llm_local import LocalLLMRewriter  # torch only for this spec

        return LocalLLMRewriter(parsed.target)
    from granalign.backends.openai_llm import OpenAIRewriter, ServerSettings

    if "," in parsed.target:  # otherwise every request goes to a path like /v1,http://.../v1
        raise ConfigError(
            f"rewriter {spec!r}: one base URL expected (openai:<url>#<model>); a comma-separated "
            "list of replicas is for the captioner, a rewriter takes one server (or its load balancer)"
        )
    settings = ServerSettings(
        parsed.target, parsed.model, timeout_s=timeout_s, attempts=attempts, concurrency=concurrency
    )
    return OpenAIRewriter(settings)
