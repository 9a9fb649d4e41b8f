"""`make k8s-check`: render the base and every overlay, validate every object, scan policies.

For each kustomization: every object against its schema (built-in kinds: Kubernetes' JSON
schemas; RayService: KubeRay's CRD; PodMonitor: our subset; any other kind is an error), the
RayService's serveConfigV2 against Ray's Serve schema (strict) and against the Serve config it
must be derived from, then the cross-object checks (consistency.py). Finally the checkov scan
of the overlays and the Dockerfile (policy.py). Exit status 1 on any error.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from papersearch.k8s import consistency, policy
from papersearch.k8s.render import Manifest, Rendered, overlays, render
from papersearch.k8s.schemas import core_schema_errors, custom_schema_errors
from papersearch.k8s.serve_config import K8S, repo_root
from papersearch.k8s.serve_schema import serve_config_errors


@dataclass
class Result:
    overlay: Path
    kinds: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items()))
        status = "ok" if not self.errors else f"{len(self.errors)} error(s)"
        return f"{self.overlay}: {sum(self.kinds.values())} objects, {status} ({kinds})"


def object_errors(obj: Manifest, root: Path) -> list[str]:
    """Schema errors of one object (an unknown kind is an error: nothing could check it)."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    errors = core_schema_errors(obj)
    if errors is None:
        errors = custom_schema_errors(obj, root)
    if errors is None:
        return [f"{name}: no schema to validate {obj.get('apiVersion')} {obj.get('kind')}"]
    if obj.get("kind") == "RayService":
        errors = errors + [f"serveConfigV2: {e}"
                           for e in serve_config_errors(obj["spec"].get("serveConfigV2", ""))]
    return [f"{name}: {e}" for e in errors]


def validate(rendered: Rendered, root: Path) -> Result:
    result = Result(rendered.overlay)
    for obj in rendered.objects:
        result.kinds[str(obj.get("kind"))] += 1
        result.errors += object_errors(obj, root)
    result.errors += consistency.all_errors(rendered, root)
    return result


def kustomizations(root: Path) -> list[Path]:
    return [K8S / "base", *overlays(root)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=repo_root())
    parser.add_argument("--no-policy", action="store_true", help="skip the checkov scan")
    args = parser.parse_args(argv)
    failed = False
    rendered_overlays: list[Rendered] = []
    for kustomization in kustomizations(args.root):
        rendered = render(args.root, kustomization)
        if kustomization != K8S / "base":
            rendered_overlays.append(rendered)
        try:
            result = validate(rendered, args.root)
        except consistency.CheckFailed as failed_check:  # last resort: no traceback
            result = Result(rendered.overlay, errors=[f"{failed_check} (input the check does not "
                                                      "handle: fix papersearch.k8s.consistency)"])
        print(result.summary())
        for error in result.errors:
            print(f"  ERROR {error}")
        failed |= bool(result.errors)
    if not args.no_policy:
        report = policy.scan(args.root, rendered_overlays)
        print(report.summary())
        failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
