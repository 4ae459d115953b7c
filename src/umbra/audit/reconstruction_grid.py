"""The picture of a reconstruction audit: one row per view the server had, each record's
original beside what the attack rebuilt from that view."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["grid_rows", "save_grid"]


def grid_rows(labels: Sequence[str]) -> list[tuple[str, list[int]]]:
    """The images' indices grouped by label, in the order the labels first appear."""
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        rows.setdefault(label, []).append(i)
    return list(rows.items())


def save_grid(
    path: Path, originals: np.ndarray, reconstructions: np.ndarray, labels: Sequence[str]
) -> None:
    """Write a PNG of ``(N, C, H, W)`` images in [0, 1] (the first channel, grey): one row
    per distinct ``labels`` value (the view the attack had), titled with it; in each row,
    every record's original and then its reconstruction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = grid_rows(labels)
    cols = 2 * max(len(idx) for _, idx in rows)
    fig = Figure(figsize=(1.6 + 0.85 * cols, 0.95 * len(rows) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), cols + 1, width_ratios=[2.2] + [1.0] * cols)
    for r, (label, idx) in enumerate(rows):
        title = fig.add_subplot(grid[r, 0])
        title.axis("off")
        title.text(1.0, 0.5, label.replace(", ", ",\n"), ha="right", va="center", fontsize=8)
        for j, i in enumerate(idx):
            for k, (img, name) in enumerate(
                ((originals[i], "original"), (reconstructions[i], "rebuilt"))
            ):
                ax = fig.add_subplot(grid[r, 1 + 2 * j + k])
                ax.imshow(np.clip(img[0], 0, 1), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 or j == 0:
                    ax.set_title(name, fontsize=6, pad=2)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.02, wspace=0.08, hspace=0.35)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
