"""Path cells resolved inside the manifest's folder: a manifest cannot make Umbra read
arbitrary files (``../x.png``, an absolute path elsewhere, a symlink pointing out)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["PathResolver"]


class PathResolver:
    """Resolves path cells to real paths inside the manifest's folder, or says why not.

    Symlinks are followed before the containment check, so a link pointing outside is
    refused like ``../x``. Each directory is resolved once (``os.path.realpath``); per
    file only the last component is checked, which keeps 10,000 paths well under a second.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep
        self._dirs: dict[str, str] = {}

    def __call__(self, cell: str) -> tuple[str | None, str | None]:
        """``(real path, None)`` for a regular file inside the folder, else ``(None, reason)``."""
        if "\x00" in cell:
            return None, f"invalid path {cell!r} (NUL byte)"
        joined = os.path.join(self.root, cell)  # an absolute cell replaces the root
        head, name = os.path.split(joined)
        if name in ("", ".", ".."):
            full = os.path.realpath(joined)
        else:
            real_head = self._dirs.get(head)
            if real_head is None:
                real_head = self._dirs[head] = os.path.realpath(head)
            full = os.path.join(real_head, name)
            if os.path.islink(full):
                full = os.path.realpath(full)
        if not full.startswith(self.prefix):
            return None, f"path {cell!r} escapes the manifest's folder (refused)"
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None, f"file not found: {cell}"
        except OSError as exc:
            return None, f"cannot access {cell}: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode):
            return None, f"not a regular file: {cell}"
        return full, None
