"""Pod templates of rendered objects, including those inside a RayService.

KubeRay turns the RayService's head and worker-group templates into pods; checks that are about
pods (selectors, ports, security, probes, the policy scan) see them here as plain Pods.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from papersearch.k8s.render import Manifest

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


@dataclass(frozen=True)
class PodTemplate:
    owner: str  # e.g. "RayService/papersearch group gateway"
    namespace: str | None
    name: str  # a name for the pods it makes
    labels: dict[str, str]
    spec: dict[str, Any]
    group: dict[str, Any] | None = None  # the RayService head/worker group spec

    @property
    def containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("containers", []))

    def port_names(self) -> set[str]:
        return {p["name"] for c in self.containers for p in c.get("ports", []) if "name" in p}

    def ports(self) -> set[int]:
        return {p["containerPort"] for c in self.containers for p in c.get("ports", [])}

    def as_pod(self) -> Manifest:
        metadata: dict[str, Any] = {"name": self.name, "labels": dict(self.labels),
                                    "annotations": {"papersearch.io/derived-from": self.owner}}
        if self.namespace:
            metadata["namespace"] = self.namespace
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                "spec": copy.deepcopy(self.spec)}


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Label-selector semantics (matchLabels/matchExpressions, or a plain map for Services)."""
    if selector is None:
        return False
    simple = selector.get("matchLabels", {} if "matchExpressions" in selector else selector)
    if any(labels.get(k) != v for k, v in simple.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def templates(objects: list[Manifest]) -> Iterator[PodTemplate]:
    for obj in objects:
        kind, meta = obj.get("kind"), obj.get("metadata", {})
        namespace = meta.get("namespace")
        if kind in WORKLOAD_KINDS:
            template = obj["spec"]["template"]
            yield PodTemplate(f"{kind}/{meta['name']}", namespace, meta["name"],
                              dict(template.get("metadata", {}).get("labels", {})),
                              template["spec"])
        elif kind == "RayService":
            yield from ray_templates(obj)


def ray_templates(rayservice: Manifest) -> Iterator[PodTemplate]:
    meta = rayservice["metadata"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    spec = copy.deepcopy(head["template"]["spec"])
    if cluster.get("enableInTreeAutoscaling"):
        spec["containers"].append(autoscaler_container(cluster, spec["containers"][0]))
    yield PodTemplate(f"RayService/{meta['name']} head", meta.get("namespace"),
                      f"{meta['name']}-head", _labels(head, "head", "headgroup"), spec, head)
    for group in cluster.get("workerGroupSpecs", []):
        name = group["groupName"]
        yield PodTemplate(f"RayService/{meta['name']} group {name}", meta.get("namespace"),
                          f"{meta['name']}-{name}", _labels(group, "worker", name),
                          copy.deepcopy(group["template"]["spec"]), group)


def _labels(group: Mapping[str, Any], node_type: str, group_name: str) -> dict[str, str]:
    labels = dict(group["template"].get("metadata", {}).get("labels", {}))
    labels.update({"ray.io/node-type": node_type, "ray.io/group": group_name,
                   "ray.io/is-ray-node": "yes"})  # what KubeRay adds
    return labels


def autoscaler_container(cluster: Mapping[str, Any], ray: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar KubeRay injects into the head, as autoscalerOptions configure it."""
    options = cluster.get("autoscalerOptions", {})
    container: dict[str, Any] = {
        "name": "autoscaler",
        "image": options.get("image", ray["image"]),
        "imagePullPolicy": options.get("imagePullPolicy", "IfNotPresent"),
        "command": ["/bin/bash", "-lc", "--"],
        "args": ["ray kuberay-autoscaler"],
    }
    for key in ("resources", "securityContext", "env", "envFrom", "volumeMounts"):
        if key in options:
            container[key] = copy.deepcopy(options[key])
    return container


def ray_resources(group: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources a group's pods advertise: CPU (num-cpus, else the CPU limit, else the
    request, rounded up as KubeRay's Quantity.Value() does: 1500m is 2) + custom."""
    params = group.get("rayStartParams", {})
    resources: dict[str, float] = {}
    if "num-cpus" in params:
        resources["CPU"] = float(params["num-cpus"])
    else:
        given = container.get("resources", {})
        cpu = given.get("limits", {}).get("cpu") or given.get("requests", {}).get("cpu")
        resources["CPU"] = float(math.ceil(cpu_quantity(cpu))) if cpu is not None else 0.0
    if "resources" in params:
        resources.update(json.loads(str(params["resources"]).strip("'\"` ")))
    return resources


def cpu_quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
