"""How a path the user gave is named in a message."""

from __future__ import annotations

from pathlib import Path


def shown(path: Path, note: str = "") -> str:
    """``path``, and where it is when relative (to the current directory: a command run from
    elsewhere looked in the wrong place), followed there by ``note``."""
    return str(path) if path.is_absolute() else f"{path} ({path.resolve()}{note})"
