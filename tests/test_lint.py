"""The code base passes ruff and mypy with the project's configuration (pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    result = subprocess.run(
        [*command, "check", "services", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    # [tool.mypy]: services/papersearch and benchmarks/, every def annotated; cache in build/.
    # Not a mypy on PATH: it needs the project's packages (the pydantic plugin, their types).
    mypy = shutil.which("mypy", path=str(ROOT / ".venv" / "bin"))
    command = [mypy] if mypy else [sys.executable, "-m", "mypy"]
    result = subprocess.run(
        [*command, "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
