"""Every benchmark script answers ``--help`` with its usage and exit 0, doing nothing else: nine
had no parser, so ``--help`` started the run itself (hours of tuning where the models exist, and
splade_candidate.py / e5_candidate.py overwrote their committed docs/tune/*.json). Run as
processes, as a reader would, several at a time: importing a script costs up to seconds."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # 30 processes, some of which import torch

SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")


def test_every_benchmark_prints_its_usage_and_exits() -> None:
    def help_of(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        done = dict(zip((p.name for p in SCRIPTS), pool.map(help_of, map(str, SCRIPTS)),
                        strict=True))
    assert len(done) > 20  # the glob found the scripts
    wrong = {name: (d.returncode, (d.stdout + d.stderr)[-300:]) for name, d in done.items()
             if d.returncode != 0 or not d.stdout.startswith(f"usage: {name}")}
    assert not wrong, wrong
