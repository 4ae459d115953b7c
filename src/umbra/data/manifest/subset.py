"""Some records of a manifest written out as a manifest of their own, with their media.

``umbra deploy local`` gives each organisation the rows it holds this way: a CSV in a
folder of its own, holding copies (or hard links) of its image and audio files at the same
relative paths, so the organisation's folder is self-contained and its paths resolve.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from umbra.data.manifest.paths import PathResolver
from umbra.data.manifest.table import read_table
from umbra.errors import DataError

__all__ = ["MANIFEST_NAME", "write_manifest_subset"]

#: The file name of a written manifest inside its folder.
MANIFEST_NAME = "manifest.csv"

_MEDIA_COLUMNS = ("image", "audio")


def _place(src: str, dest: Path) -> None:
    """``dest`` holds the bytes of ``src``: a hard link where the file system allows."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def write_manifest_subset(source: Path, records: Sequence[int], folder: Path) -> Path:
    """Write records ``records`` (0-based positions among ``source``'s records, in the
    order given) as ``folder/manifest.csv`` with the same columns, and their media files
    under ``folder`` at their paths relative to ``source``'s folder. Returns the CSV."""
    source = Path(source)
    table = read_table(source)
    resolve = PathResolver(source.parent)
    root = Path(resolve.root)
    folder.mkdir(parents=True, exist_ok=True)
    out_rows: list[list[str]] = []
    for r in records:
        row = []
        for c in table.columns:
            cell = table.cells[c][r]
            if c in _MEDIA_COLUMNS and cell:
                full, reason = resolve(cell)
                if full is None:
                    raise DataError(f"manifest {source} record {r}: {reason}")
                rel = Path(full).relative_to(root)
                _place(full, folder / rel)
                cell = rel.as_posix()
            row.append(cell)
        out_rows.append(row)
    path = folder / MANIFEST_NAME
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table.columns)
        writer.writerows(out_rows)
    return path
