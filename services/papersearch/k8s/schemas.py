"""Schema validation of rendered objects, offline.

- Built-in kinds: the Kubernetes JSON schemas bundled by kubernetes-validate, strict (unknown
  fields are errors, as ``kubectl apply``'s server-side field validation makes them).
- RayService: the KubeRay CRD's openAPIV3Schema (../shared/schemas/kuberay), made strict the same
  way: every object schema that lists properties and neither preserves unknown fields nor sets
  additionalProperties gets additionalProperties: false (the API server would prune or refuse
  such fields). CEL rules (x-kubernetes-validations) are not evaluated.
- PodMonitor: no CRD schema is available offline; a strict schema of the subset we use.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from papersearch.k8s.render import Manifest

# Oldest Kubernetes the manifests are meant for (gRPC probes, PDB unhealthyPodEvictionPolicy GA)
# and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.31", "latest")
KUBERAY_CRDS = Path("..") / "shared" / "schemas" / "kuberay"
CUSTOM_KINDS = {("ray.io/v1", "RayService"): "ray.io_rayservices.yaml"}

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h))+)$"}
PODMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "labels": _LABELS, "annotations": _LABELS}, "additionalProperties": False},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "scheme": {"enum": ["http", "https"]},
                                   "interval": _DURATION, "scrapeTimeout": _DURATION,
                                   "honorLabels": {"type": "boolean"}}}},
            },
        },
    },
}


def core_schema_errors(obj: Manifest) -> list[str] | None:
    """Errors against the bundled Kubernetes schemas; None for kinds they do not cover."""
    import kubernetes_validate

    errors: list[str] = []
    for version in K8S_VERSIONS:
        wanted = kubernetes_validate.latest_version() if version == "latest" else version
        try:
            kubernetes_validate.validate(obj, wanted, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return None
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            errors.append(f"k8s {wanted}: {where}: {error.message}")
    return errors


def strict(schema: Any) -> Any:
    """A copy of an openAPIV3Schema in which unlisted properties are errors."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return schema


@cache
def crd_validator(crd_file: Path, version: str) -> jsonschema.Draft7Validator:
    crd = yaml.load(crd_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return jsonschema.Draft7Validator(strict(served["schema"]["openAPIV3Schema"]))
    raise LookupError(f"{crd_file}: no version {version}")


def custom_schema_errors(obj: Manifest, root: Path) -> list[str] | None:
    """Errors for a custom kind we hold a schema of; None for kinds we do not know."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if (api_version, kind) in CUSTOM_KINDS:
        crd = (root / KUBERAY_CRDS / CUSTOM_KINDS[(api_version, kind)]).resolve()
        validator = crd_validator(crd, api_version.split("/")[-1])
        return _messages(validator.iter_errors(obj))
    if (api_version, kind) == ("monitoring.coreos.com/v1", "PodMonitor"):
        return _messages(jsonschema.Draft7Validator(PODMONITOR_SCHEMA).iter_errors(obj))
    return None


def _messages(errors: Iterable[jsonschema.ValidationError]) -> list[str]:
    out = []
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path)
        out.append(f"{where}: {error.message[:300]}")
    return out
