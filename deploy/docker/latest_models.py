"""Keep only the latest finished version of each model in a model repository (image build).

The runtime loads the latest version (papersearch.models.manifest.model_dir); older versions and
unfinished exports (no manifest.json) only make the image bigger. A name without any version
folder (only the lock of an export that failed) is skipped, left as it is; a repository
with no finished embedder (manifest kind "embedder") is refused: the image could not serve.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def prune(repository: Path) -> None:
    kinds: list[str] = []
    for model in sorted(p for p in repository.iterdir() if p.is_dir()):
        if not any(v.name.isdigit() for v in model.iterdir()):
            # a first export that failed or is under way: its lock, a hidden staging folder
            print(f"{model.name}: skipped, no version in {model} (an export's leftovers)")
            continue
        finished = sorted(
            (int(v.name), v) for v in model.iterdir()
            if v.name.isdigit() and (v / "manifest.json").is_file()
        )
        if not finished:
            raise SystemExit(f"{model}: no finished version (run `papersearch models export`)")
        keep = finished[-1][1]
        for version in model.iterdir():
            if version != keep:
                shutil.rmtree(version) if version.is_dir() else version.unlink()
        print(f"{model.name}: version {keep.name}")
        kinds.append(_kind(keep / "manifest.json"))
    if "embedder" not in kinds:  # an image that cannot serve: no query encoder
        raise SystemExit(f"{repository}: no exported embedder (run `papersearch models "
                         "export`)")


def _kind(manifest: Path) -> str:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"{manifest}: not readable JSON: {error}") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else ""


if __name__ == "__main__":
    prune(Path(sys.argv[1]))
