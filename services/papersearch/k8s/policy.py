"""The policy scan: checkov over every rendered overlay and the Dockerfile, offline.

checkov pins old dependencies, so it lives in its own virtualenv (.venv-checkov, made by
``make checkov``) and runs as a subprocess with ``--skip-download`` and ``BC_SKIP_MAPPING=TRUE``:
no network. checkov does not know RayService, so the pods KubeRay will make from it are scanned
as plain Pods (pods.py), the autoscaler sidecar included.

A failed check is accepted only if deploy/k8s/policy-exceptions.yaml lists it for that resource,
with a reason. Anything else fails the scan, and so does each resource pattern of an exception
that no longer matches any failure (a stale justification hides the next real finding).
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from papersearch.k8s.pods import templates
from papersearch.k8s.render import Rendered

CHECKOV = Path(".venv-checkov") / "bin" / "checkov"
EXCEPTIONS = Path("deploy/k8s/policy-exceptions.yaml")
DOCKERFILE = Path("deploy/docker/Dockerfile")


@dataclass(frozen=True)
class Exception_:
    check: str
    resources: tuple[str, ...]  # fnmatch patterns on "<target>: <checkov resource>"
    reason: str

    def patterns_for(self, finding: Finding) -> list[str]:
        """The resource patterns that accept ``finding`` (none: this exception does not)."""
        if finding.check != self.check:
            return []
        return [p for p in self.resources if fnmatch.fnmatchcase(finding.resource, p)]


@dataclass(frozen=True)
class Finding:
    check: str
    resource: str  # "<overlay or file>: <checkov resource id>"
    name: str


@dataclass
class Report:
    passed: int = 0
    failed: list[Finding] = field(default_factory=list)
    skipped: int = 0
    accepted: list[tuple[Finding, Exception_]] = field(default_factory=list)
    unexplained: list[Finding] = field(default_factory=list)
    stale: list[tuple[Exception_, str]] = field(default_factory=list)  # and its unused pattern

    @property
    def ok(self) -> bool:
        return not self.unexplained and not self.stale

    def summary(self) -> str:
        lines = [f"checkov: {self.passed} passed, {len(self.failed)} failed "
                 f"({len(self.accepted)} accepted in {EXCEPTIONS}), {self.skipped} skipped"]
        lines += [f"  UNEXPLAINED {f.check} {f.resource}: {f.name}" for f in self.unexplained]
        lines += [f"  STALE exception {e.check} {pattern!r}: matches no failure (remove it)"
                  for e, pattern in self.stale]
        return "\n".join(lines)


def load_exceptions(path: Path) -> list[Exception_]:
    entries = yaml.safe_load(path.read_text()) or []
    out = []
    for entry in entries:
        reason = str(entry.get("reason", "")).strip()
        if not reason:
            raise ValueError(f"{path}: exception {entry.get('check')} has no reason")
        out.append(Exception_(entry["check"], tuple(entry["resources"]), reason))
    return out


def reconcile(findings: Sequence[Finding], exceptions: Sequence[Exception_]) -> Report:
    """Sort failures into accepted (by the first exception with a pattern for them) and
    unexplained; find the exceptions' patterns that accept nothing."""
    report = Report(failed=list(findings))
    used: set[tuple[int, str]] = set()
    for finding in findings:
        match = next(((i, e, patterns) for i, e in enumerate(exceptions)
                      if (patterns := e.patterns_for(finding))), None)
        if match is None:
            report.unexplained.append(finding)
            continue
        i, exception, patterns = match
        used.update((i, p) for p in patterns)
        report.accepted.append((finding, exception))
    report.stale = [(e, p) for i, e in enumerate(exceptions) for p in e.resources
                    if (i, p) not in used]
    return report


def scan_inputs(rendered: Sequence[Rendered], directory: Path) -> None:
    """One file per overlay: its objects, plus the Pods KubeRay will derive from a RayService."""
    for item in rendered:
        docs = [*item.objects,
                *(t.as_pod() for t in templates(item.objects) if t.group is not None)]
        target = directory / (item.overlay.name + ".yaml")
        target.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def run_checkov(root: Path, args: Sequence[str]) -> list[dict[str, Any]]:
    binary = root / CHECKOV
    if not binary.is_file():
        raise FileNotFoundError(f"{CHECKOV} missing: run `make checkov` (its own virtualenv)")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [str(binary), *args, "--skip-download", "--output", "json", "--compact"],
        cwd=root, capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"checkov failed ({result.returncode}):\n{result.stderr[-3000:]}")
    data = json.loads(result.stdout)
    return data if isinstance(data, list) else [data]


def _findings(reports: list[dict[str, Any]], label: str) -> tuple[int, int, list[Finding]]:
    passed = skipped = 0
    failed: list[Finding] = []
    for report in reports:
        results = report.get("results", {})
        passed += len(results.get("passed_checks", []))
        skipped += len(results.get("skipped_checks", []))
        for check in results.get("failed_checks", []):
            source = Path(check.get("file_path", "")).stem or label
            failed.append(Finding(check["check_id"], f"{label or source}: {check['resource']}",
                                  check.get("check_name", "")))
    return passed, skipped, failed


def scan(root: Path, rendered: Sequence[Rendered]) -> Report:
    with tempfile.TemporaryDirectory(prefix="papersearch-policy-") as tmp:
        scan_inputs(rendered, Path(tmp))
        k8s = run_checkov(root, ["--directory", tmp, "--framework", "kubernetes"])
    docker = run_checkov(root, ["--file", str(DOCKERFILE), "--framework", "dockerfile"])
    passed, skipped, failed = _findings(k8s, "")
    d_passed, d_skipped, d_failed = _findings(docker, "Dockerfile")
    report = reconcile([*failed, *d_failed], load_exceptions(root / EXCEPTIONS))
    report.passed, report.skipped = passed + d_passed, skipped + d_skipped
    return report
