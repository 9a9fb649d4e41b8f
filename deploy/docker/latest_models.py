"""Keep only the latest finished version of each model in a model repository (image build).

The runtime loads the latest version (papersearch.models.manifest.model_dir); older versions and
unfinished exports (no manifest.json) only make the image bigger.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def prune(repository: Path) -> None:
    for model in sorted(p for p in repository.iterdir() if p.is_dir()):
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


if __name__ == "__main__":
    prune(Path(sys.argv[1]))
