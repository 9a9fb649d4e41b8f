"""Paths the user gave: how one is named in a message, and the files of a folder."""

from __future__ import annotations

from pathlib import Path


def shown(path: Path, note: str = "") -> str:
    """``path``, and where it is when relative (to the current directory: a command run from
    elsewhere looked in the wrong place), followed there by ``note``."""
    return str(path) if path.is_absolute() else f"{path} ({path.resolve()}{note})"


def files_ending(folder: Path, suffix: str) -> list[Path]:
    """The files in ``folder`` whose names end in ``suffix`` in any case (".txt" takes
    "b.TXT", as a single file given by name is), in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == suffix and p.is_file())
