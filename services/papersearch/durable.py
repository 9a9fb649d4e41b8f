"""Files other processes read while they are written: atomic JSON, whole directories, locks.

A model version, an unpacked model bundle or a trained checkpoint is built in a staging
directory of its writer's own beside its final name and renamed into place after an fsync, so
a reader (a running service polling for versions, another command) sees all of it or none of it,
also after a crash. Two processes making the same thing at once take an exclusive lock first;
the second then finds the first's result instead of building it again.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically: a reader sees the old file or the new one, never a torn one."""
    with replaced(path, "w") as f:
        json.dump(data, f, indent=2)


@contextmanager
def replaced(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file to write ``path``'s new content to: a temporary file beside it, fsynced and
    renamed over ``path`` when the block ends (the directory fsynced after), removed if the
    block fails. A reader sees the old file or the new one, never a torn one. The file keeps
    the mode of the one it replaces, or is 0644 (mkstemp's 0600 locked out readers running as
    another user, as staged directories' 0755 does not)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # the file object owns fd from here: a failing chmod or stat (``path`` removed
        # meanwhile) closes it with the block instead of leaking it
        with os.fdopen(fd, mode) as f:
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory: the names created, renamed or removed in it are on disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, and ``root``."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        sync_directory(Path(folder))


@contextmanager
def staged(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """A new directory to build ``target`` in, renamed to ``target`` when the block ends.

    The staging directory's name is this call's own (two writers never share one) and hidden
    (a leading dot: no version number, no bundle name). Its tree is fsynced before the rename
    and the parent after it; an error in the block removes it and leaves ``target`` as it was.
    ``replace`` swaps out an existing ``target``: the old one is renamed aside (hidden, as
    ``.<name>.<random>.old``) just before the rename and removed after it, so ``target`` is
    the old tree or the new one whole, also when the process is interrupted meanwhile (a
    death between the two renames leaves the old tree aside: ``remove_stale`` puts it back).
    Otherwise an existing non-empty ``target`` fails the rename (FileExistsError).
    ``target`` gets a directory's usual mode, 0755 (mkdtemp's 0700 kept every other user out:
    the container image runs as UID 10001 and copied the folders as root's).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent))
    aside: Path | None = None
    try:
        staging.chmod(0o755)
        yield staging
        sync_tree(staging)
        aside = _set_aside(target) if replace else None
        try:
            staging.rename(target)
        except OSError as error:
            if target.is_dir():
                raise FileExistsError(f"{target} was made meanwhile") from error
            raise
        sync_directory(target.parent)
    except BaseException:
        if aside is not None and not target.exists():  # cut between the renames: the old back
            aside.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


_ASIDE = ".old"  # a replaced tree's suffix: ".<name>.<random hex>.old"


def _set_aside(target: Path) -> Path | None:
    """Rename ``target`` (if there is one) to a hidden name of its own beside it."""
    aside = target.parent / f".{target.name}.{secrets.token_hex(6)}{_ASIDE}"
    try:
        target.rename(aside)
    except FileNotFoundError:
        return None
    return aside


def _replaced_by(aside: Path) -> Path:
    """The target a tree ``_set_aside`` renamed was set aside from."""
    return aside.with_name(aside.name[1:].rsplit(".", 2)[0])


_REMOVING = ".removing"  # a tree being deleted: ".<name>.<random hex>.removing"


def remove_tree(path: Path) -> bool:
    """Delete the directory ``path`` as one step: renamed to a hidden name of its own beside
    it, the parent fsynced, then removed. A death meanwhile leaves that hidden tree whole,
    never a part of ``path`` (rmtree deletes in listing order: an index killed mid-way kept its
    segments without its shard config, which no open could use and no create replace);
    ``clear_removals`` deletes it later. False if there was no ``path``; OSError if it could
    not be renamed or deleted. A symlink or a mount point is refused, nothing deleted
    (renamed, a link was hidden with its target's data kept; a mount point cannot be
    renamed, and emptying it in place was the deletion a kill leaves half done)."""
    if path.is_symlink() or path.is_mount():
        kind = "a symbolic link" if path.is_symlink() else "a mount point"
        raise OSError(f"{path} is {kind}: not deleted (delete what it holds by hand)")
    aside = path.parent / f".{path.name}.{secrets.token_hex(6)}{_REMOVING}"
    try:
        path.rename(aside)
    except FileNotFoundError:
        return False
    sync_directory(path.parent)
    shutil.rmtree(aside, ignore_errors=True)  # a concurrent clear_removals may share it
    if aside.exists():
        raise OSError(f"could not delete {aside} (renamed from {path.name})")
    return True


def clear_removals(folder: Path) -> None:
    """Delete the trees in ``folder`` whose ``remove_tree`` was cut short. Safe at any time:
    nothing reads a tree once it is set aside for removal."""
    for left in folder.glob(f".*{_REMOVING}"):
        if left.is_dir() and not left.is_symlink():
            log.info("removing a tree whose deletion was cut short", extra={"path": str(left)})
            shutil.rmtree(left, ignore_errors=True)


def remove_stale(folder: Path, target: str | None = None) -> None:
    """Remove the staging directories ``staged`` left in ``folder`` when their writer died (a
    SIGKILL mid-build), and the replaced trees set aside and not yet removed (one whose target
    is missing, a death between a replace's renames, is put back instead): all of them, or
    ``target``'s only. Only under the lock that all of their writers take: a live writer's
    staging directory looks the same."""
    prefix = f".{glob.escape(target)}.*" if target else ".*"
    for left in folder.glob(prefix + _ASIDE):  # a death between a replace's two renames
        replaced = _replaced_by(left)
        if left.is_dir() and not replaced.exists():
            log.info("restoring a replaced build", extra={"path": str(replaced)})
            left.rename(replaced)
    for suffix, what in ((".partial", "an unfinished build"), (_ASIDE, "a replaced build")):
        for left in folder.glob(prefix + suffix):
            if left.is_dir():
                log.info(f"removing {what}", extra={"path": str(left)})
                shutil.rmtree(left, ignore_errors=True)


@contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (made if absent) for the block; ``what`` names
    the work in the log line said when another process holds it and this one waits. The lock
    goes with the process: a crashed holder does not leave it taken. The holder may remove
    ``lock_file`` (remove_lock_folder): a process that waited on the removed file takes the
    lock again on the one at ``lock_file`` then, never holds the removed one's."""
    while True:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = lock_file.open("a")
        except FileNotFoundError:
            if lock_file.parent.is_dir():  # not a folder removed meanwhile by the lock's holder
                raise
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process", extra={"work": what,
                                                               "lock": str(lock_file)})
                fcntl.flock(handle, fcntl.LOCK_EX)
            if not is_open_file(handle.fileno(), lock_file):  # removed by the last holder
                continue
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


def remove_lock_folder(lock_file: Path) -> bool:
    """Remove ``lock_file`` and its folder where the folder holds nothing else: a lock's
    holder (exclusive) whose work made nothing there, so that no folder is left holding only
    a lock. Whether they went; a folder holding anything else is left as it is."""
    folder = lock_file.parent
    if any(entry.name != lock_file.name for entry in folder.iterdir()):
        return False
    lock_file.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # a process about to wait for the lock made its file meanwhile
        return False
    return True


def is_open_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``descriptor`` (not removed meanwhile)."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
