"""Files and folders that are replaced whole or not at all, even when the writer is killed mid-write.

The project writes through this module whatever another process may read while it is replaced:
landing files, ingestion's manifest and quarantine, the split snapshot, reward models, the RL reward,
policy stacks, PPO checkpoints, best adapters, the converted SmolLM2 cache, and the evaluation report's
files.

Every writer stages under a name of its own, `.<name>.<pid>-<id>.partial` beside the target, so two
processes (or threads) writing the same path at once, as two runs seeding the same landing folder do,
never take each other's staging away: the last rename wins, whole. The landing sensor and the manifest
readers skip `.partial` names.

Files: `atomic_write(path, write)` lets `write` fill the staging file, flushes it to disk, and renames
it over `path` (rename(2) is atomic). A writer killed before the rename leaves `path` as it was; the
next write of the same path removes its staging file.

Folders: `atomic_folder(folder, write)` lets `write` fill a staging folder, flushes every file in it,
and then swaps the two paths in one `renameat2(RENAME_EXCHANGE)` call (Linux >= 3.15 on ext4, xfs,
btrfs, tmpfs, overlayfs): at every instant `folder` is either the complete old version or the complete
new one, never missing and never partial. The staging name then holds the old version, which is
removed. A folder that does not exist yet appears with one plain rename. There are no symlinks, so
every consumer (MLflow `log_artifacts`, `shutil.copytree`, `from_pretrained`, `rglob`) sees the real
directory it always saw, and folders written before this module need no migration.

A killed writer leaves its staging behind (a partial new version, or the complete old one after
the swap); the next write of the same path removes it, leaving alone the stagings of writers that are
still running. Where the exchange is not available (another OS, NFS) the swap is two renames: the old
version first moves to `.<name>.<pid>-<id>.old`, and a writer killed between the two renames leaves
`folder` missing until the next write of it puts that old version back.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the content to a temporary path, which then replaces `path` in one rename."""
    path = Path(path)
    _remove_leftovers(path)
    with _staging(path) as tmp:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself survives a power cut


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_copy(source: Path, target: Path) -> None:
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def atomic_folder(folder: Path, write: Callable[[Path], object]) -> Path:
    """`write(staging)` fills an empty staging folder, which then replaces `folder` in one atomic swap."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    # After a swap the staging name holds the old version; after a failed write, the partial new one.
    with _staging(folder) as staging:
        staging.mkdir()
        write(staging)
        _fsync_tree(staging)
        if not _swap_in(staging, folder):
            _replace_in_two_renames(staging, folder)
        _fsync(folder.parent)
    return folder


_IN_FLIGHT: set[str] = set()  # names of this process's stagings still being written, by any of its threads


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A hidden sibling name of this writer's own, removed (file or folder) however the write ends."""
    staging = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    _IN_FLIGHT.add(staging.name)  # unique: it holds the pid and a random id
    try:
        yield staging
    finally:
        _remove(staging)
        _IN_FLIGHT.discard(staging.name)


def _swap_in(staging: Path, folder: Path) -> bool:
    """Put `staging` at `folder` atomically; False where this OS or filesystem cannot swap two paths."""
    try:
        os.rename(staging, folder)  # a new folder (or an empty one): one atomic rename
        return True
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    return _exchange(staging, folder)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE): both paths exist throughout, and swap content in one step."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace_in_two_renames(staging: Path, folder: Path) -> None:
    """The fallback: the old version is kept under a hidden name that _remove_leftovers restores."""
    old = staging.with_name(staging.name.removesuffix(".partial") + ".old")
    os.rename(folder, old)
    os.rename(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    """Remove what killed writers of `target` left (restoring a set-aside old folder first, if
    `target` went missing between the fallback's two renames); writers still running keep theirs."""
    if not target.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)-[0-9a-f]{{8}}\.(partial|old)")
    for entry in sorted(target.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match is None or entry.name in _IN_FLIGHT or _is_running(int(match.group(1))):
            continue
        if match.group(2) == "old" and not target.exists():
            os.rename(entry, target)
        else:
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a killed process's pid, now ours: its stagings are not in _IN_FLIGHT
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; Windows cannot open a folder, and needs not."""
    if os.name != "posix" and path.is_dir():
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
