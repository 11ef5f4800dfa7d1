"""Where model weights come from: the local hub cache, the hub (asked once), or a test-only folder.

*First run without the model.*  huggingface_hub retries a failed request five times with
backoff (about 23 s and ten warnings per file), and open_clip and transformers each ask for
several files, so a first run on a machine with neither the model nor internet spent ~50 s in
retries before failing with a message that said nothing about what to do.  Before a loader is
handed a hub id, :func:`require_hub_model` decides once:

* the model's files are in the local cache and ``HF_HUB_OFFLINE`` is set: the loader runs and
  reads them from there;
* ``HF_HUB_OFFLINE`` is set and they are not: nothing is tried;
* otherwise one request to the hub endpoint, with a short timeout and no retry; a hub that does
  not answer (or answers 5xx) means nothing is tried either.

When nothing is tried, one :class:`ConfigError` names the model and says what to set.

*Test-only weights.*  Tests build tiny models with random weights; their captions and scores
mean nothing, so a run on them must say so.  A model folder declares itself test-only with a
marker file (:data:`TEST_WEIGHTS_MARKER`, written by :func:`mark_test_weights`), whose first
line says why; backends report it through their ``weights_note``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from granalign.errors import ConfigError

__all__ = [
    "PROBE_TIMEOUT_S",
    "TEST_WEIGHTS_MARKER",
    "TRANSFORMERS_FILES",
    "declared_test_weights",
    "download_hint",
    "hub_unreachable",
    "mark_test_weights",
    "require_hub_model",
    "weights_notes",
]

PROBE_TIMEOUT_S = 5.0
"""Seconds the one reachability request may take (a hub that answers at all answers faster)."""

TEST_WEIGHTS_MARKER = "GRANALIGN_TEST_WEIGHTS"
"""A file in a model folder whose presence says the weights are random or otherwise test-only."""

TRANSFORMERS_FILES: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ),
)
"""Files a transformers model needs in the cache: each group is a set of alternatives."""


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _cached(repo_id: str, files: Sequence[Sequence[str]]) -> bool:
    """Whether one file of every group is in the local hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    def have(name: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo_id, name), str)
        except Exception:  # an id the hub would refuse: not cached
            return False

    return all(any(have(name) for name in group) for group in files)


def hub_unreachable(repo_id: str) -> str:
    """'' when the hub endpoint answers one request below 500, else why it did not.

    One GET with :data:`PROBE_TIMEOUT_S` and no retry: any answer (even 401 or 404) means the
    hub is there and the real loader can report what it finds.
    """
    from huggingface_hub import constants, get_session

    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{repo_id}"
    try:
        response = get_session().get(url, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return f"HTTP {response.status_code}" if response.status_code >= 500 else ""


def require_hub_model(what: str, repo_id: str, files: Sequence[Sequence[str]], remedy: str) -> None:
    """Return when a loader may be given ``repo_id``; otherwise raise one ConfigError.

    ``what`` names the model for the user ("CLIP ViT-B-32/laion2b_s34b_b79k"), ``files`` are the
    files it needs (groups of alternatives), ``remedy`` says what to set instead.
    """
    from huggingface_hub import constants

    cached = _cached(repo_id, files)
    if _offline():
        if cached:
            return
        raise ConfigError(
            f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, "
            f"so it cannot be downloaded; {remedy}"
        )
    reason = hub_unreachable(repo_id)
    if not reason:
        return
    where = f"the Hugging Face hub at {constants.ENDPOINT} is not reachable ({reason})"
    if cached:
        raise ConfigError(
            f"{what} is in the Hugging Face cache but {where}; set HF_HUB_OFFLINE=1 to use the cache"
        )
    raise ConfigError(
        f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}; {remedy}"
    )


def download_hint(repo_id: str) -> str:
    """The first remedy for every hub model: fetch it where there is internet."""
    return (
        f"download it on a connected machine (hf download {repo_id}) and copy that HF_HOME here "
        "(or point HF_HOME at it)"
    )


def mark_test_weights(folder: Path, why: str) -> None:
    """Declare a model folder test-only (random weights, a toy tokenizer): runs on it say so."""
    (Path(folder) / TEST_WEIGHTS_MARKER).write_text(why.strip() + "\n", encoding="utf-8")


def declared_test_weights(folder: str | Path) -> str:
    """The marker's first line for a test-only model folder, '' for any other model."""
    marker = Path(folder) / TEST_WEIGHTS_MARKER
    try:
        lines = marker.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return (lines[0].strip() if lines else "") or "test-only weights"


def weights_notes(*backends: Any) -> list[str]:
    """The distinct ``weights_note`` of the backends a run uses ('' and missing ones skipped)."""
    notes: list[str] = []
    for backend in backends:
        note = str(getattr(backend, "weights_note", "") or "")
        if note and note not in notes:
            notes.append(note)
    return notes
