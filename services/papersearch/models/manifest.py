"""The manifest that describes one exported model version in the model repository.

Layout: ``<repository>/<name>/<version>/`` holding ``model.onnx`` (fp32), ``model.int8.onnx``,
``tokenizer.json`` and ``manifest.json``. Versions are positive integers; the manifest is written
last, so a directory without one is an unfinished export and is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from papersearch.paths import shown

MANIFEST = "manifest.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"

ModelKind = Literal["embedder", "reranker"]
# How texts are fed to an embedder's graph (cut, prefixed): not in the graph's computation, so
# an export other than the default writes it into the graph's metadata under ENCODING_KEY
# (modelbuild/export.py; the int8 graph made from it keeps it), and exports since
# ENCODING_RECORDED_SINCE always have
DEFAULT_ENCODING = {"max_length": 256, "query_prefix": "", "document_prefix": ""}
ENCODING_KEY = "papersearch.encoding"
ENCODING_RECORDED_SINCE = "2026-12-05T10:46:00Z"

log = logging.getLogger(__name__)


class ModelNotFound(FileNotFoundError):
    """No finished export of a model exists in the repository."""


class ModelCorrupt(ModelNotFound):
    """A file of an exported version is not the one its manifest lists (changed, truncated or
    replaced after the export): the version is not a usable export."""


class ProviderUnavailable(RuntimeError):
    """The onnxruntime execution provider asked for (CUDA) is not in the installed onnxruntime
    or cannot start (models/runtime.py)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: int
    kind: ModelKind
    source: str
    fingerprint: str  # hash of source weights + export options: same fingerprint, same export
    max_length: int
    pooling: str | None = None  # "mean" for embedders
    normalize: bool = False
    query_prefix: str = ""
    document_prefix: str = ""
    dim: int | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    parity: dict[str, float] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)  # how the int8 graph was made
    # fixed inputs + fp32 outputs an int8 runtime checks itself against (models/parity.py)
    selfcheck: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def sha256(self) -> str:
        """Identity of this model: the fp32 graph's digest."""
        return self.files[FP32_FILE]

    @property
    def encoding(self) -> dict[str, Any]:
        """How texts are fed to the graph, as DEFAULT_ENCODING names it."""
        return {"max_length": self.max_length, "query_prefix": self.query_prefix,
                "document_prefix": self.document_prefix}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(**data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_file(version_dir: Path, manifest: Manifest, name: str) -> Path:
    """``version_dir / name`` once its digest is the one the manifest lists for it: a model is
    served as exported or not at all (the index trusts the manifest's digest as the model's
    identity)."""
    path = version_dir / name
    listed = manifest.files.get(name)
    found = sha256_file(path) if path.is_file() else None
    if listed is None or found != listed:
        state = ("is missing" if found is None else "is not in the manifest" if listed is None
                 else f"has sha256 {found[:12]} where the manifest lists {listed[:12]}")
        raise ModelCorrupt(f"{manifest.name}@{manifest.version}: {name} {state} (changed "
                           f"after the export?): export the model again")
    return path


def read_manifest(version_dir: Path) -> Manifest:
    """The manifest of an exported version; ModelCorrupt naming the file when it cannot be
    read or is not one (a bare JSON message, and `models export`, the fix, failed on it), when
    a field has a value no export writes (a str for a number, a null list: tracebacks deep in
    a search), or when it is another version's (a folder copied: errors named the other)."""
    path = version_dir / MANIFEST
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:  # JSON, UTF-8, fields, not an object
        raise ModelCorrupt(f"{path}: not a readable manifest ({' '.join(str(error).split())}):"
                           " export the model again") from None
    wrong = _wrong_field(manifest) or _elsewhere(manifest, version_dir)
    if wrong:
        raise ModelCorrupt(f"{path}: {wrong}: export the model again")
    return manifest


# What each field of a manifest holds as exports write it (a bool is no int here)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "version": (int,), "kind": (str,), "source": (str,), "fingerprint": (str,),
    "max_length": (int,), "pooling": (str, type(None)), "normalize": (bool,),
    "query_prefix": (str,), "document_prefix": (str,), "dim": (int, type(None)),
    "files": (dict,), "parity": (dict,), "quantization": (dict,), "selfcheck": (dict,),
    "created": (str,)}


def _wrong_field(manifest: Manifest) -> str | None:
    """What in ``manifest`` no export writes, or None."""
    for name, types in _FIELD_TYPES.items():
        value = getattr(manifest, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return (f"{name} is {json.dumps(value)[:40]}, not "
                    f"{' or '.join('null' if t is type(None) else t.__name__ for t in types)}")
    if manifest.kind not in get_args(ModelKind):
        return f"kind is {manifest.kind!r}, not embedder or reranker"
    if manifest.max_length < 1 or (manifest.dim is not None and manifest.dim < 1):
        return "max_length and dim are counts of at least 1"
    if manifest.kind == "embedder" and manifest.dim is None:
        return "dim is null, where an embedder's is its vector width"
    if FP32_FILE not in manifest.files or not all(
            isinstance(digest, str) for digest in manifest.files.values()):
        return f"files lists no sha256 of {FP32_FILE}, or one that is not a str"
    threshold = manifest.selfcheck.get("threshold", 0.0)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        return f"selfcheck.threshold is {json.dumps(threshold)[:40]}, not a number"
    return _wrong_selfcheck(manifest)


def _wrong_selfcheck(manifest: Manifest) -> str | None:
    """What in the self-check's inputs and reference no export writes, or None: an int8
    runtime failed on them with a KeyError or numpy's broadcast error, naming no file. No
    self-check at all is an older export's (its int8 runtime serves fp32)."""
    if not manifest.selfcheck:
        return None
    inputs = manifest.selfcheck.get("inputs")
    single = manifest.kind == "embedder"  # texts; a reranker's are (query, passage) pairs
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(i, str) if single
            else isinstance(i, list) and len(i) == 2 and all(isinstance(t, str) for t in i)
            for i in inputs):
        return (f"selfcheck.inputs is not a list of "
                f"{'texts' if single else '(query, passage) pairs'}")
    reference = manifest.selfcheck.get("reference")
    width = len(reference[0]) if isinstance(reference, list) and reference and isinstance(
        reference[0], list) else 0
    if not isinstance(reference, list) or len(reference) != len(inputs) or not width or not all(
            isinstance(row, list) and len(row) == width and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in row)
            for row in reference):
        return (f"selfcheck.reference is not one row of numbers, all of one width, for each "
                f"of the {len(inputs)} inputs")
    if width != (manifest.dim or 1):
        return f"dim {manifest.dim}, where selfcheck.reference has {width} numbers an input"
    return None


def _elsewhere(manifest: Manifest, version_dir: Path) -> str | None:
    """Where ``manifest`` is another version's than its folder's (a version folder copied to
    make another: every error then named the one copied), which it is. A folder renamed to
    another model name is left alone: the sha256 is the identity."""
    if not version_dir.name.isdigit() or str(manifest.version) == version_dir.name:
        return None
    return (f"it is version {manifest.version}'s, in the folder of version {version_dir.name} "
            "(copied from another version?)")


def write_manifest(version_dir: Path, manifest: Manifest) -> None:
    tmp = version_dir / (MANIFEST + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, version_dir / MANIFEST)


def versions(repository: Path, name: str) -> list[int]:
    root = repository / name
    if not root.is_dir():
        return []
    found = (p for p in root.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())
    return sorted(int(p.name) for p in found)


_HOW_TO_MAKE: dict[ModelKind, str] = {
    "embedder": "`papersearch models export` makes the configured embedder (another one: set "
                "models.embedder_name and models.embedder_source first)",
    "reranker": "the default reranker is trained: `papersearch models train-reranker` (or "
                "`papersearch models export --reranker SOURCE` exports another)",
}


def model_dir(repository: Path, name: str, version: int | None = None,
              kind: ModelKind = "embedder") -> Path:
    """The directory of ``version`` (default: the latest finished one); missing, the error
    says how a model of ``kind`` (embedder, reranker) is made."""
    available = versions(repository, name)
    if not available:
        raise ModelNotFound(f"no exported model {name!r} under models.repository = "
                            f"{shown(repository)}: {_HOW_TO_MAKE[kind]}")
    chosen = available[-1] if version is None else version
    if chosen not in available:
        raise ModelNotFound(f"model {name!r} has no version {chosen} (have {available})")
    return repository / name / str(chosen)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """One exported version of a named model, written ``name@version``."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str, repository: Path) -> ModelRef:
        """``name@version``, or ``name`` for its latest finished version; ModelNotFound if the
        repository has no such export, ValueError if malformed."""
        name, at, version = text.strip().partition("@")
        if not name or (at and not version.isdigit()):
            raise ValueError(f"model reference {text!r}: expected NAME or NAME@VERSION")
        path = model_dir(repository, name, int(version) if at else None)
        return cls(name, int(path.name))

    def path(self, repository: Path) -> Path:
        return model_dir(repository, self.name, self.version)


def latest_if_fingerprint(repository: Path, name: str, fingerprint: str, *,
                          warn: bool = True) -> Path | None:
    """The latest version of ``name`` if it is the export ``fingerprint`` names and its files
    are the manifest's. Only the latest: an older identical one is not what a runtime loads by
    name (it loads the latest). A damaged one is not reused: exported again, the next version
    replaces it (reused, "export the model again" changed nothing); ``warn`` says so."""
    found = versions(repository, name)
    if not found:
        return None
    path = repository / name / str(found[-1])
    try:
        manifest = read_manifest(path)
        if manifest.fingerprint != fingerprint:
            return None
        for file in manifest.files:
            checked_file(path, manifest, file)
    except ModelCorrupt as error:
        if warn:
            log.warning("the latest export is damaged: exporting it again", extra={
                "model": name, "reason": str(error)})
        return None
    return path


def next_version_dir(repository: Path, name: str) -> Path:
    existing = [int(p.name) for p in (repository / name).glob("*") if p.name.isdigit()]
    return repository / name / str(max(existing, default=0) + 1)
