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
    emptyDir with medium Memory), by this process's mount table: the deepest mount point
    above it, the last mounted where two are one (False where there is no table)."""
    try:
        table = MOUNT_TABLE.read_text()
    except OSError:
        return False
    where, kind, depth = os.path.realpath(folder), "", -1
    for line in table.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda code: chr(int(code[1], 8)), parts[4])
        if ((where == point or where.startswith(point.rstrip("/") + "/"))
                and len(point) >= depth):
            kind, depth = rest.split()[0], len(point)
    return kind in MEMORY_FILE_SYSTEMS


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
