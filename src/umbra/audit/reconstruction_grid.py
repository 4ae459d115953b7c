"""The picture of a reconstruction audit: originals above, reconstructions below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["save_grid"]


def save_grid(
    path: Path, originals: np.ndarray, reconstructions: np.ndarray, labels: Sequence[str]
) -> None:
    """Write a PNG of ``(N, C, H, W)`` images in [0, 1] (the first channel, grey): one
    column per record, titled with ``labels[i]``; originals in the top row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(originals)
    fig = Figure(figsize=(1.3 * n, 3.0), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(n):
        for row, imgs in enumerate((originals, reconstructions)):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.imshow(np.clip(imgs[i][0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(labels[i].replace(", ", ",\n"), fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
