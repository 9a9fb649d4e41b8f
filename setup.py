"""Build hook only (metadata lives in pyproject.toml): generate the gRPC stubs before build_py.

Every ``pip install`` (editable or not) and wheel build runs build_py, so installed packages
always carry stubs generated from proto/ by services/papersearch/api/generate.py. That module
is loaded by file path: the package's own dependencies need not be importable at build time,
only grpcio-tools (a build requirement in pyproject.toml).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
GENERATOR = ROOT / "services" / "papersearch" / "api" / "generate.py"


def _load_generator():
    spec = importlib.util.spec_from_file_location("_papersearch_api_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """build_py that first (re)generates papersearch/api/v1/*_pb2*.py from proto/."""

    def run(self) -> None:
        # Into the source tree, before build_py lists the package's modules and data files:
        # editable installs use it as is, regular builds copy it to build_lib like any module.
        _load_generator().generate(ROOT / "proto", ROOT / "services")
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
