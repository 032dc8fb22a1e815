"""Files that appear whole or not at all: written under a hidden `.<name>.partial` name, then renamed.

The landing sensor and the manifest readers skip `.partial` names, so a crash mid-write leaves the old
file (or none), never a truncated one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the content to a temporary path, which then replaces `path` in one rename."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_copy(source: Path, target: Path) -> None:
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
