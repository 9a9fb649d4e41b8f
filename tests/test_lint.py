"""The code base passes ruff and mypy with the project's configuration (pyproject.toml)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tokenize

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


# A comment that reports a timing or a size someone saw ("took 0.8 s", "42 MiB measured",
# "~45 MB", "1.75x faster"): the figure belongs in the README's results (Figures behind the
# limits), the reason stays. Read per comment block (consecutive comment lines), as a figure
# often runs across two lines.
FIGURE = r"\d[\d.,]*\s?(?:ms|us|s|KB|MB|MiB|GB|GiB)\b"
MEASURED = re.compile("|".join((
    rf"~\s?{FIGURE}",  # an approximate figure: one that was seen
    rf"\b(?:took|measured|held|stalled|costs?)\b[^.;]{{0,80}}?{FIGURE}",
    rf"{FIGURE}[^.;]{{0,40}}?\bmeasured\b",
    rf"{FIGURE}\s+here\b",  # "16.8 s here"
    r"\d(?:\.\d+)?x (?:faster|slower)\b",
    r"\bfell to \d",
)))


def comment_blocks(source: str) -> list[tuple[int, str]]:
    """(first line, text) of each run of comments on consecutive lines, joined by spaces."""
    blocks: list[tuple[int, str]] = []
    last = -2
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        line, text = token.start[0], token.string.lstrip("#").strip()
        if line == last + 1:
            blocks[-1] = (blocks[-1][0], f"{blocks[-1][1]} {text}")
        else:
            blocks.append((line, text))
        last = line
    return blocks


def test_no_comment_quotes_a_measurement() -> None:
    quoted = [f"{path.relative_to(ROOT)}:{line}: {text[:120]}"
              for path in sorted((ROOT / "services").rglob("*.py"))
              for line, text in comment_blocks(path.read_text())
              if MEASURED.search(text)]
    assert not quoted, "\n".join(quoted)


def test_the_measurement_pattern_finds_what_it_is_for() -> None:
    source = """
x = 1  # 10,000 ids took ~0.8 s of the loop

# What a new index takes on a memory-backed volume as it is made (42.2 MiB measured on tmpfs,
# qdrant-edge 0.9, whatever the dim)

# gRPC cancels a call a few ms early (6
# ms measured; more on a loaded machine)

y = 2  # one pass instead of four (1.75x faster).

# replica until it restarted (~45 MB an int8 MiniLM, more for a larger model).

# down with the CPU as the steps do (16.8 s here, 11 steps' time).

# sums saturate (agreement with fp32 fell to 0.97 / 0.87 on such a CPU)
"""
    blocks = comment_blocks(source)
    assert len(blocks) == 7 and all(MEASURED.search(text) for _, text in blocks)
    for fine in ("the HTTP front's stop (at most 2 s), the gRPC server's (1 s)",
                 "the gateway bounds answers (serve.max_send_bytes, 16 MiB: OUT_OF_RANGE)",
                 "8 x 256 x 30522 floats are 250 MB, hence a small default batch"):
        assert not MEASURED.search(fine), fine
