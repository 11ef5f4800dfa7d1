"""Errors a user can act on.

Every error that reaches a user names the input and what is wrong with it, so the CLI can
print the message alone instead of a traceback from deep inside a library.
"""

from __future__ import annotations


class GranAlignError(Exception):
    """Base class of every error the CLI reports as a one-line message.

    ``public``: the same error worded for a caller on the far side of a tool (a model), set
    where the message names what only this host's operator should read (a folder, a process,
    a server); None when the message itself may go out (the tools still replace this
    deployment's paths and addresses in it: ``tools.redact``).
    """

    public: str | None = None


class InputError(GranAlignError, ValueError):
    """An input (file, line, argument, setting) is missing or malformed."""


class ConfigError(InputError):
    """A setting (backend spec, hyperparameter) is out of range or unknown."""


class BackendError(GranAlignError, RuntimeError):
    """A model server could not answer (down, timed out, HTTP error) after the allowed retries.

    A RuntimeError too: LangGraph Server passes the message of builtin error types to API
    clients and replaces any other with "An internal error occurred"."""
