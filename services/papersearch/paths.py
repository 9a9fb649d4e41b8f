"""Paths the user gave: how one is named in a message, the files of a folder, the folders a
setting names, made, and the room left where they are."""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNT_TABLE = Path("/proc/self/mountinfo")
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs"})  # volumes held in memory, with a size limit


def shown(path: Path, note: str = "") -> str:
    """``path``, and where it is when relative (to the current directory: a command run from
    elsewhere looked in the wrong place), followed there by ``note``."""
    return str(path) if path.is_absolute() else f"{path} ({path.resolve()}{note})"


def free_bytes(folder: Path) -> int:
    """The bytes a process without privileges may still write on ``folder``'s volume (OSError
    where it cannot be asked)."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def memory_backed(folder: Path) -> bool:
    """Whether ``folder`` lies on a volume held in memory (tmpfs: /dev/shm, a Kubernetes
    emptyDir with medium Memory; an overlay whose upper layer is one, as a container's
    writable layer may be), by this process's mount table (False where there is none)."""
    try:
        table = MOUNT_TABLE.read_text()
    except OSError:
        return False
    kind, options = _mount_of(os.path.realpath(folder), table)
    if kind == "overlay":  # its files are the upper layer's once written
        upper = next((option.removeprefix("upperdir=") for option in options.split(",")
                      if option.startswith("upperdir=")), None)
        if upper is None:
            return False
        # once, not again: an upper layer outside this mount namespace (a container's root
        # overlay names the host's path) finds the overlay itself
        kind, _ = _mount_of(os.path.realpath(_unescaped(upper)), table)
    return kind in MEMORY_FILE_SYSTEMS


def _mount_of(where: str, table: str) -> tuple[str, str]:
    """The file system type and super options of the mount holding ``where``: the deepest
    mount point above it, the last mounted where two are one."""
    found, depth = ("", ""), -1
    for line in table.splitlines():
        fields, _, rest = line.partition(" - ")
        parts, source = fields.split(), rest.split()
        if len(parts) < 5 or not source:
            continue
        point = _unescaped(parts[4])
        if ((where == point or where.startswith(point.rstrip("/") + "/"))
                and len(point) >= depth):
            found, depth = (source[0], source[-1] if len(source) > 2 else ""), len(point)
    return found


def _unescaped(field: str) -> str:
    """A mount table's field as the path it names (space, tab, newline and backslash are
    written as octal escapes there)."""
    return re.sub(r"\\([0-7]{3})", lambda code: chr(int(code[1], 8)), field)


def files_ending(folder: Path, suffix: str) -> list[Path]:
    """The files in ``folder`` whose names end in ``suffix`` in any case (".txt" takes
    "b.TXT", as a single file given by name is), in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == suffix and p.is_file())


class FolderRefused(Exception):
    """A folder a setting names that cannot be made; the message names the setting."""


def make_folders(folder: Path, setting: str) -> tuple[Path, ...]:
    """Make ``folder`` and its missing parents; the folders this call made, outermost first
    (for an undo). One that cannot be made is FolderRefused naming ``setting``: the bare
    "[Errno 13] Permission denied: ..." named neither it nor the fix."""
    chain = (*folder.parents[::-1], folder)
    missing = tuple(each for each in chain if not each.exists())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:  # a file, a dangling link
        there = next((each for each in chain if each.is_symlink() and not each.exists()
                      or each.exists() and not each.is_dir()), error.filename)
        raise FolderRefused(f"{there} is there but not a folder ({setting}; a link to a "
                            "volume not mounted?)") from None
    except PermissionError as error:
        raise denied(error, setting) from None
    return missing


def denied(error: PermissionError, setting: str) -> FolderRefused:
    """A folder this process may not make, named with the ``setting`` that put it there."""
    return FolderRefused(f"permission denied for {error.filename} ({setting}: a folder this "
                         "process may write)")
