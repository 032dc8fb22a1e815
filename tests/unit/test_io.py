"""ml.io under SIGKILL: a writer killed before any step of a replace leaves the old or the new version,
whole, and the next write cleans up after it.

Each writer runs in a child process that counts its calls to the os-level primitives ml.io uses (and
the steps of its own `write`) and kills itself with SIGKILL at call N, for every N until the write
completes. Nothing in ml.io knows about the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ml.io import atomic_folder, atomic_write, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, shutil, signal, sys
from pathlib import Path
import ml.io

target, version, kill_at, kind, exchange = json.loads(sys.argv[1])
calls = 0

def step():
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def counted(function):
    def wrapper(*args, **kwargs):
        step()
        return function(*args, **kwargs)
    return wrapper

for module, name in [(os, "rename"), (os, "replace"), (os, "fsync"), (os, "mkdir"), (shutil, "rmtree")]:
    setattr(module, name, counted(getattr(module, name)))
# exchange=False: the fallback of systems without renameat2(RENAME_EXCHANGE).
ml.io._exchange = counted(ml.io._exchange if exchange else lambda a, b: False)

def write_folder(staging):
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (staging / name).parent.mkdir(exist_ok=True)
        (staging / name).write_text(version)
        step()

def write_file(tmp):
    with open(tmp, "w") as handle:
        handle.write(version[:2])
        handle.flush()
        step()
        handle.write(version[2:])

if kind == "folder":
    ml.io.atomic_folder(Path(target), write_folder)
else:
    ml.io.atomic_write(Path(target), write_file)
"""


def run_writer(target: Path, version: str, kill_at: int, kind: str, exchange: bool = True) -> bool:
    """Run one write in a child killed at its `kill_at`-th step; True when it completed instead."""
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(target), version, kill_at, kind, exchange])],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode in (0, -9), done.stderr  # finished, or killed by its own SIGKILL; never an error
    return done.returncode == 0


def folder_version(folder: Path) -> str | None:
    """The version `folder` holds, None when missing; fails when it is partial or mixes two versions."""
    if not folder.exists():
        return None
    assert not folder.is_symlink()
    files = {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert sorted(files) == ["a.txt", "b.txt", "sub/c.txt"], files
    assert len(set(files.values())) == 1, files
    return next(iter(files.values()))


def write_folder(version: str):
    def write(staging: Path) -> None:
        for name in ("a.txt", "b.txt", "sub/c.txt"):
            (staging / name).parent.mkdir(exist_ok=True)
            (staging / name).write_text(version)
    return write


def fail(staging: Path) -> None:
    (staging / "a.txt").write_text("half")
    raise RuntimeError("the writer failed")


def kill_every_step(tmp_path: Path, kind: str, check, exchange: bool = True) -> int:
    """Kill a writer of new content at step 1, 2, ... until one completes; `check(target, kill_at)`
    after each kill, on a target that held "old" before. Returns the number of steps of a write."""
    for kill_at in range(1, 100):
        home = tmp_path / str(kill_at)
        home.mkdir()
        target = home / "target"
        if kind == "folder":
            atomic_folder(target, write_folder("old"))
        else:
            atomic_write_text(target, "old")
        if run_writer(target, "new", kill_at, kind, exchange):
            return kill_at
        check(target, kill_at)
    raise AssertionError("the writer never completed")


@pytest.mark.skipif(sys.platform != "linux", reason="the one-step swap is renameat2, Linux only")
def test_a_folder_is_whole_old_or_whole_new_whenever_its_writer_is_killed(tmp_path):
    seen = set()

    def check(folder: Path, kill_at: int) -> None:
        seen.add(folder_version(folder))
        assert folder_version(folder) in ("old", "new"), kill_at  # never missing, never partial
        with pytest.raises(RuntimeError):
            atomic_folder(folder, fail)  # a failed write changes nothing
        assert folder_version(folder) in ("old", "new")
        atomic_folder(folder, write_folder("next"))
        assert folder_version(folder) == "next"
        assert [p.name for p in folder.parent.iterdir()] == ["target"]  # the killed writer's staging is gone

    steps = kill_every_step(tmp_path, "folder", check)
    assert steps > 8 and seen == {"old", "new"}  # killed before and after the swap, at every step between


def test_a_folder_first_written_is_missing_or_whole_when_its_writer_is_killed(tmp_path):
    for kill_at in range(1, 100):
        folder = tmp_path / str(kill_at) / "target"
        folder.parent.mkdir()
        if run_writer(folder, "new", kill_at, "folder"):
            break
        assert folder_version(folder) in (None, "new")
        atomic_folder(folder, write_folder("next"))
        assert [p.name for p in folder.parent.iterdir()] == ["target"]
    assert folder_version(folder) == "new"


def test_without_the_exchange_the_next_write_puts_back_the_old_folder_a_killed_writer_set_aside(tmp_path):
    seen = set()

    def check(folder: Path, kill_at: int) -> None:
        seen.add(folder_version(folder))
        with pytest.raises(RuntimeError):
            atomic_folder(folder, fail)
        assert folder_version(folder) in ("old", "new"), kill_at  # missing at most until the next write
        atomic_folder(folder, write_folder("next"))
        assert [p.name for p in folder.parent.iterdir()] == ["target"]

    kill_every_step(tmp_path, "folder", check, exchange=False)
    assert seen == {"old", None, "new"}  # the fallback's window between its two renames was hit


def test_a_file_is_whole_old_or_whole_new_whenever_its_writer_is_killed(tmp_path):
    seen = set()

    def check(path: Path, kill_at: int) -> None:
        seen.add(path.read_text())
        assert path.read_text() in ("old", "new"), kill_at
        atomic_write_text(path, "next")
        assert [p.name for p in path.parent.iterdir()] == ["target"]  # the .partial is gone

    steps = kill_every_step(tmp_path, "file", check)
    assert steps >= 4 and seen == {"old", "new"}


def test_a_running_writers_staging_folder_is_left_alone(tmp_path):
    folder = tmp_path / "target"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        staging = tmp_path / f".target.{running.pid}-0123abcd.partial"
        staging.mkdir()
        atomic_folder(folder, write_folder("new"))
        assert staging.exists() and folder_version(folder) == "new"
    finally:
        running.kill()
        running.wait()
    atomic_folder(folder, write_folder("next"))
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_writers_of_the_same_file_at_once_never_take_each_others_staging(tmp_path):
    # As two runs seeding the same landing folder do: each stages under its own name; the last rename wins.
    path, errors = tmp_path / "target", []

    def writer(version: str) -> None:
        def slow_write(tmp: Path) -> None:
            tmp.write_text(version)
            time.sleep(0.001)  # another writer's replace lands in between
        try:
            for _ in range(100):
                atomic_write(path, slow_write)
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(version,)) for version in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and path.read_text() in ("one", "two")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
