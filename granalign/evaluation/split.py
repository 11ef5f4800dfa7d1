"""A fixed split of any annotation file into a *tune* half and a *report* half, by video.

Settings are chosen on the tune half and reported on the report half (issue 13): numbers
tuned and reported on the same queries over-fit.  The split is by video id, so every query
of a video lands on the same side (queries of one video share captions and look alike; split
by query, a setting could learn a video on one side and be rewarded on the other).

The side of a video depends only on its id and :data:`SPLIT_SALT`: the first 8 bytes of
``sha256(SPLIT_SALT + vid)`` as an unsigned integer, even → ``tune``, odd → ``report``.  No
random state, file order or machine enters, so the same video is on the same side in every
annotation file, on every machine and in every run.  Duration-shifted sets (``granalign
shift``) have new vids; build them with ``shift --split report`` so that every source video
is on the report side.  A ``--split`` on such a set goes by each query's ``source_vid``, never
by the derived vid (whose hash would put about half of the other half's queries on this
side).  Changing the salt re-draws the split; never change it without re-tuning every default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Literal, TypeVar, get_args

from granalign.errors import ConfigError

Half = Literal["tune", "report"]
HALVES: tuple[str, ...] = get_args(Half)
SPLIT_SALT = "granalign-split-v1:"
"""The documented seed of the split (prefix hashed with every vid)."""

T = TypeVar("T")


def split_of(vid: str) -> Half:
    """The half (``tune`` or ``report``) that the video ``vid`` belongs to, always the same."""
    digest = hashlib.sha256((SPLIT_SALT + vid).encode("utf-8")).digest()
    return "tune" if int.from_bytes(digest[:8], "big") % 2 == 0 else "report"


def check_half(half: str) -> Half:
    """``half`` as a :data:`Half`, or a ConfigError naming the allowed values."""
    if half not in HALVES:
        raise ConfigError(f"split must be one of {', '.join(HALVES)}, got {half!r}")
    return "tune" if half == "tune" else "report"


def in_half(items: Iterable[T], half: str, vid: Callable[[T], str]) -> list[T]:
    """The items whose video (``vid(item)``) is on ``half``, in their original order."""
    wanted = check_half(half)
    return [item for item in items if split_of(vid(item)) == wanted]
