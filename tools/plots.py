"""Timeline plot of one query: saliency curve, predicted windows, ground-truth windows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def timeline_plot(
    out: str | Path,
    *,
    saliency: Sequence[float],
    clip_len: float,
    moments: Sequence[Sequence[float]],
    title: str,
    ground_truth: Sequence[Sequence[float]] = (),
    top: int = 5,
) -> Path:
    """Write a PNG; predicted windows are drawn as bars whose opacity follows their rank."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 3.6))
    xs = [(i + 0.5) * clip_len for i in range(len(saliency))]
    ax.plot(xs, saliency, color="#1f4e79", lw=1.6, label="saliency S_f")
    for rank, (start, end, *_score) in enumerate(moments[:top]):
        y = -0.12 - 0.07 * rank
        ax.plot(
            [start, end],
            [y, y],
            color="#d35400",
            lw=5,
            alpha=1.0 - 0.15 * rank,
            solid_capstyle="butt",
            label="predicted (rank order)" if rank == 0 else None,
        )
        ax.text(end, y, f" {rank + 1}", va="center", fontsize=7, color="#d35400")
    for i, (start, end) in enumerate(ground_truth):
        ax.axvspan(start, end, color="#27ae60", alpha=0.18, label="ground truth" if i == 0 else None)
    ax.set_xlim(0, max(len(saliency) * clip_len, 1.0))
    ax.set_ylim(-0.16 - 0.07 * min(top, len(moments)), 1.05)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score")
    # a query is free text: "$x^$" would be parsed as mathtext and fail at savefig
    ax.set_title(title if len(title) < 110 else title[:107] + "...", fontsize=10, parse_math=False)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
