"""Directories built whole and published by rename, and the lock two writers share, also two
processes (fast)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from papersearch.durable import exclusive, staged, write_json


def test_a_staged_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "bundles" / "model"
    with staged(target) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "weights.bin").write_bytes(b"w")
        assert not target.exists()  # nothing under the final name while it is built
    assert (target / "sub" / "weights.bin").read_bytes() == b"w"
    assert [p.name for p in target.parent.iterdir()] == ["model"]
    # readable by other users (mkdtemp makes 0700: the image's UID 10001 could not enter
    # the model versions that root copied in)
    assert target.stat().st_mode & 0o777 == 0o755

    with pytest.raises(RuntimeError), staged(tmp_path / "failed") as staging:
        (staging / "half").write_text("x")
        raise RuntimeError("the build failed")
    assert not (tmp_path / "failed").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundles"]  # no staging left behind


def test_a_replaced_file_is_readable_by_others_or_keeps_its_mode(tmp_path: Path) -> None:
    """write_json (the collection pointer, the index manifest) made every file 0600, mkstemp's
    mode, also over a 0644 one: a reader running as another user was refused."""
    pointer = tmp_path / "papers.live.json"
    write_json(pointer, {"collection": "a"})
    assert pointer.stat().st_mode & 0o777 == 0o644
    pointer.chmod(0o640)  # an operator's choice stays
    write_json(pointer, {"collection": "b"})
    assert pointer.stat().st_mode & 0o777 == 0o640
    assert pointer.read_text().count('"b"') == 1


def test_a_replace_that_cannot_set_the_mode_closes_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing chmod (or stat: the file removed meanwhile) removed the temporary file but
    left its descriptor open: one leaked per failed write."""
    pointer = tmp_path / "papers.live.json"
    write_json(pointer, {"collection": "a"})
    chmodded: list[int] = []

    def refuse(fd: int, mode: int) -> None:
        chmodded.append(fd)
        raise PermissionError("chmod refused")

    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(PermissionError, match="chmod refused"):
        write_json(pointer, {"collection": "b"})
    (fd,) = chmodded
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    assert [p.name for p in tmp_path.iterdir()] == [pointer.name]  # no temporary file left
    assert pointer.read_text().count('"a"') == 1


def test_two_writers_of_one_target_never_share_a_staging_directory(tmp_path: Path) -> None:
    """Each build has its own staging directory: the second cannot wipe the first's files
    (they shared ``<target>.partial`` before); the one that finishes second is told."""
    target = tmp_path / "3"
    with pytest.raises(FileExistsError, match="made meanwhile"):
        with staged(target) as first:
            with staged(target) as second:
                assert first != second
                (second / "manifest.json").write_text("second")
            (first / "manifest.json").write_text("first")
    assert (target / "manifest.json").read_text() == "second"
    with staged(target, replace=True) as third:
        (third / "manifest.json").write_text("third")
    assert (target / "manifest.json").read_text() == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["3"]


def test_a_replace_cut_short_leaves_the_old_tree_or_the_new_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replacing removed the old tree in place, then renamed the new one in: a Ctrl-C or a
    kill during that removal left the target half deleted with its "done" marker (a trained
    checkpoint's training.json) still there, and the new build was dropped. Now the old tree
    is renamed aside first and removed after; what a death left aside goes at the next
    ``remove_stale``."""
    import shutil

    from papersearch import durable
    from tests.module_stand_in import ModuleStandIn

    target = tmp_path / "model"
    with staged(target) as first:
        for name in ("a.bin", "b.bin", "training.json"):
            (first / name).write_text("old")

    def cut_short(path: Path, ignore_errors: bool = False) -> None:
        if Path(path).name.endswith(".partial"):  # the staging directory of a failed block
            shutil.rmtree(path, ignore_errors=ignore_errors)
            return
        (Path(path) / "a.bin").unlink()  # one file gone, then the interrupt
        raise KeyboardInterrupt

    monkeypatch.setattr(durable, "shutil", ModuleStandIn(shutil, rmtree=cut_short))
    with pytest.raises(KeyboardInterrupt), staged(target, replace=True) as second:
        for name in ("a.bin", "b.bin", "training.json"):
            (second / name).write_text("new")
    assert {p.name: p.read_text() for p in target.iterdir()} == {
        "a.bin": "new", "b.bin": "new", "training.json": "new"}
    monkeypatch.undo()
    durable.remove_stale(tmp_path, "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    # cut between the two renames: the old tree is put back, not lost with the new one
    real_rename = Path.rename

    def interrupted(self: Path, target: Any) -> Any:
        if self.name.endswith(".partial"):
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt), staged(target, replace=True) as third:
        (third / "a.bin").write_text("third")
    monkeypatch.undo()
    assert (target / "a.bin").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    # a death there (nothing ran the handler): the next remove_stale puts the old tree back
    target.rename(tmp_path / ".model.0a1b2c.old")
    durable.remove_stale(tmp_path, "model")
    assert (target / "a.bin").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_second_holder_of_the_lock_waits_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    lock = tmp_path / "cache" / ".lock"
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with exclusive(lock, "unpacking"):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with caplog.at_level(logging.INFO, logger="papersearch.durable"):
        with exclusive(lock, "unpacking"):
            order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert "waiting for another process" in caplog.text


HOLDER = """
import sys, time
from pathlib import Path
from papersearch.durable import exclusive

lock, held, release, done = map(Path, sys.argv[1:])
with exclusive(lock, "holding"):
    held.touch()
    deadline = time.monotonic() + 60
    while not release.exists():
        if time.monotonic() > deadline:
            sys.exit(3)  # never released: the test process did not wait on the lock
        time.sleep(0.01)
    done.touch()  # the last thing done under the lock
"""


def wait_for_file(path: Path, process: subprocess.Popen[bytes], within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not path.exists():
        assert process.poll() is None, f"the other process exited {process.returncode}"
        assert time.monotonic() < deadline, f"no {path.name} after {within_s:g} s"
        time.sleep(0.01)


def test_the_lock_keeps_out_another_process_until_it_lets_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process (as two commands sharing a cache are) holds the lock; this one waits,
    says so, and gets in only after the other has finished its work and let go. No sleep
    orders the two: the other lets go when this one says it waits (its log line makes the
    ``release`` file), and marks ``done`` just before; a lock that kept out only threads of
    its own process would let this one in at once, ``done`` not yet there."""
    lock = tmp_path / "cache" / ".lock"
    held, release, done = tmp_path / "held", tmp_path / "release", tmp_path / "done"

    class ReleaseWhenWaiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "waiting for another process":
                release.touch()

    paths = [str(path) for path in (lock, held, release, done)]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *paths])
    handler = ReleaseWhenWaiting()
    durable_log = logging.getLogger("papersearch.durable")
    try:
        wait_for_file(held, holder)
        durable_log.addHandler(handler)
        with caplog.at_level(logging.INFO, logger="papersearch.durable"):
            with exclusive(lock, "unpacking"):
                finished_first = done.exists()
        assert release.exists(), "this process never waited for the lock"
        assert finished_first, "this process got the lock while the other held it"
        assert holder.wait(timeout=60) == 0
    finally:
        durable_log.removeHandler(handler)
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_dead_writers_staging_directory_is_removed_under_the_lock(tmp_path: Path) -> None:
    """Staging names are unique now, so a build killed mid-way (SIGKILL) is no longer wiped by
    the next build of the same name: writers that share a lock remove such leftovers first."""
    from papersearch.durable import remove_stale

    stale = tmp_path / ".3.x1y2.partial"
    (stale / "sub").mkdir(parents=True)
    (tmp_path / "3").mkdir()
    (tmp_path / ".export.lock").touch()
    remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "3"]
    remove_stale(tmp_path / "absent")  # nothing there yet: nothing to do


def test_stale_staging_of_one_target_leaves_the_others(tmp_path: Path) -> None:
    """Writers that lock one target each (SPLADE exports, model variants) remove only their
    own target's leftovers: another target's staging directory may be a live writer's."""
    from papersearch.durable import remove_stale

    for name in (".splade-a.x1.partial", ".splade-ab.y2.partial", ".splade-b.z3.partial"):
        (tmp_path / name).mkdir()
    remove_stale(tmp_path, "splade-a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".splade-ab.y2.partial",
                                                          ".splade-b.z3.partial"]


def test_a_symlinked_tree_is_not_hidden_by_its_removal(tmp_path: Path) -> None:
    """Renamed aside, a symlink was hidden (.<name>.<hex>.removing) with its target's data
    kept, and nothing ever deleted either. It is refused, nothing deleted (so is a mount
    point, which cannot be renamed: emptied in place, a kill could leave it half deleted)."""
    from papersearch.durable import clear_removals, remove_tree

    (tmp_path / "elsewhere" / "segments").mkdir(parents=True)
    link = tmp_path / "data" / "papers-v1"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="is a symbolic link: not deleted"):
        remove_tree(link)
    clear_removals(link.parent)
    assert [p.name for p in link.parent.iterdir()] == ["papers-v1"] and link.is_symlink()
    assert (tmp_path / "elsewhere" / "segments").is_dir()
    plain = tmp_path / "data" / "papers-v2"
    (plain / "segments").mkdir(parents=True)
    assert remove_tree(plain) and not remove_tree(plain)
    assert [p.name for p in link.parent.iterdir()] == ["papers-v1"]


def test_a_mounted_tree_is_refused_with_its_contents_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount point cannot be renamed: emptied in place, then refused by the kernel (busy),
    a dropped collection's data was gone while the caller was told it was not deleted."""
    from papersearch.durable import remove_tree

    mounted = tmp_path / "papers-v3"
    (mounted / "segments").mkdir(parents=True)
    (mounted / "edge_config.json").write_text("{}")
    monkeypatch.setattr(Path, "is_mount", lambda self: self == mounted)
    with pytest.raises(OSError, match="is a mount point: not deleted"):
        remove_tree(mounted)
    assert sorted(p.name for p in mounted.iterdir()) == ["edge_config.json", "segments"]
