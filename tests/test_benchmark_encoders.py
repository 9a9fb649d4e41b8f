"""benchmarks/encoders.py (`make bench`) with no model exported: it said nothing was measured
only in its JSON and exited 0, so `make bench` on a fresh clone passed having timed nothing.
Run as a process: it sets torch's thread counts, which hold for the rest of a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_nothing_to_measure_is_an_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERSEARCH_")}
    env["PAPERSEARCH_MODELS__REPOSITORY"] = str(tmp_path / "empty")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encoders.py"), "--texts",
                           "1", "--threads", "1"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert '"skipped"' in done.stdout
    assert "no model to measure: `papersearch models export`" in done.stderr
