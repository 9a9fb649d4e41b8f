"""Generate the gRPC Python stubs from proto/ (they are never committed or edited by hand).

protoc names generated modules after the proto's path, so proto/papersearch/v1/papersearch.proto
would become ``papersearch/v1/papersearch_pb2.py`` and its ``_pb2_grpc.py`` would import
``from papersearch.v1 import papersearch_pb2``. The proto keeps its path (it is the descriptor's
file name, which reflection clients see); the stubs are generated into a temporary directory,
moved to ``papersearch/api/v1/`` and their ``papersearch.v1`` imports rewritten to
``papersearch.api.v1``. A copy of each .proto goes beside its stubs as package data.

Run by ``make proto`` / ``make install`` (``python -m papersearch.api.generate``) and by
setup.py's build_py on every ``pip install`` and wheel build. Loaded by file path from
setup.py, so it imports nothing from papersearch. Files are replaced only when their content
changes, so timestamps (and make) stay quiet on a no-op run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

# services/papersearch/api/generate.py -> repository root
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PROTO_ROOT = REPO_ROOT / "proto"
DEFAULT_PACKAGE_ROOT = REPO_ROOT / "services"

# proto package directory papersearch/<version> -> Python package papersearch.api.<version>
_PROTO_DIR = re.compile(r"^papersearch/(v\d+\w*)$")
_IMPORT = re.compile(r"^(from|import) papersearch\.(v\d+\w*)\b", re.MULTILINE)
_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


class GenerationError(RuntimeError):
    """protoc failed or produced something this generator cannot place."""


def proto_files(proto_root: Path) -> list[Path]:
    """The .proto files under proto_root, relative to it (the paths protoc is given)."""
    files = sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))
    if not files:
        raise GenerationError(f"no .proto files under {proto_root}")
    return files


def python_package_dir(proto_path: Path) -> Path:
    """papersearch/v1/x.proto -> papersearch/api/v1 (the stubs' directory, package-relative)."""
    match = _PROTO_DIR.match(proto_path.parent.as_posix())
    if not match:
        raise GenerationError(
            f"{proto_path}: expected proto/papersearch/<version>/*.proto, e.g. papersearch/v1"
        )
    return Path("papersearch", "api", match.group(1))


# The module name protoc bakes into the messages (their __module__): pickling needs the real one.
_MODULE_NAME = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')papersearch\.(v\d+\.)")


def _rewrite_imports(text: str) -> str:
    text = _MODULE_NAME.sub(lambda m: f"{m.group(1)}papersearch.api.{m.group(2)}", text)
    return _IMPORT.sub(lambda m: f"{m.group(1)} papersearch.api.{m.group(2)}", text)


def _run_protoc(proto_root: Path, out_dir: Path, files: list[Path]) -> None:
    from importlib.resources import files as package_files

    from grpc_tools import protoc

    well_known = str(package_files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f.as_posix() for f in files),
    ]
    status = protoc.main(args)
    if status != 0:
        raise GenerationError(f"protoc failed (exit {status}) on {', '.join(map(str, files))}")


def _write_if_changed(path: Path, content: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def generate(
    proto_root: Path = DEFAULT_PROTO_ROOT, package_root: Path = DEFAULT_PACKAGE_ROOT
) -> list[Path]:
    """Generate stubs for every .proto under proto_root into package_root/papersearch/api/...

    package_root is the directory holding the ``papersearch`` package (services/ here, or any
    directory: missing ``__init__.py`` files are created so the result imports). Returns the
    files written or found up to date.
    """
    proto_root, package_root = Path(proto_root).resolve(), Path(package_root).resolve()
    files = proto_files(proto_root)
    packages = {proto: python_package_dir(proto) for proto in files}  # fail before protoc
    outputs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="papersearch-protoc-") as tmp:
        _run_protoc(proto_root, Path(tmp), files)
        for proto in files:
            package = packages[proto]
            target_dir = package_root / package
            for part in (package, *package.parents[:-1]):  # papersearch/api/v1, .../api, ...
                init = package_root / part / "__init__.py"
                if not init.exists():
                    _write_if_changed(init, "")
            stem = proto.with_suffix("")
            for suffix in _SUFFIXES:
                generated = Path(tmp) / f"{stem.as_posix()}{suffix}"
                if not generated.is_file():
                    raise GenerationError(f"protoc did not write {generated.name} for {proto}")
                text = _rewrite_imports(generated.read_text(encoding="utf-8"))
                leftover = re.search(r"^(from|import) papersearch\.v\d", text, re.MULTILINE)
                if leftover:
                    raise GenerationError(f"unrewritten import in {generated.name}: {leftover[0]}")
                target = target_dir / generated.name
                _write_if_changed(target, text)
                outputs.append(target)
            copy = target_dir / proto.name
            _write_if_changed(copy, (proto_root / proto).read_text(encoding="utf-8"))
            outputs.append(copy)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT)
    parser.add_argument(
        "--package-root",
        type=Path,
        default=DEFAULT_PACKAGE_ROOT,
        help="directory that holds (or will hold) the papersearch package",
    )
    args = parser.parse_args(argv)
    try:
        outputs = generate(args.proto_root, args.package_root)
    except GenerationError as exc:
        print(f"papersearch.api.generate: {exc}", file=sys.stderr)
        return 1
    print(f"papersearch.api.generate: {len(outputs)} files up to date under {args.package_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
