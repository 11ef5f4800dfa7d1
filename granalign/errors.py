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
    clients and replaces any other with "An internal error occurred".

    ``status``: the HTTP status of the server's last answer when an answer ended the request
    (401, 404, 503 after the retries, ...); None when there was none (not reachable, timed out,
    a 200 without a usable completion).
    """

    status: int | None = None

    def __init__(self, *args: object, status: int | None = None) -> None:
        super().__init__(*args)
        self.status = status

    @property
    def misconfigured(self) -> bool:
        """Whether the server's answer says this deployment is set up wrong rather than busy:
        401/403 (the API key) or 404 (the model's name, the base URL's path).  Every later
        request to that server fails the same way, unlike after a 429, a 5xx or a timeout."""
        return self.status in MISCONFIGURED_STATUSES


MISCONFIGURED_STATUSES = frozenset({401, 403, 404})
"""HTTP answers of a model server that no retry or later request changes (see ``BackendError``)."""
