"""NetworkPolicy ingress as Kubernetes enforces it, for the pods of one rendered overlay.

A pod that a policy with policyTypes Ingress selects (a policy without policyTypes too) is
isolated: only what some rule of those policies allows gets in. A rule without ``from`` admits
every source, one without ``ports`` every port. A source is a pod of the overlay or OUTSIDE:
another namespace or the cluster's outside, which namespaceSelector and ipBlock peers stand for
(neither is evaluated further: both are for traffic from beyond the overlay). TCP only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from papersearch.k8s.pods import PodTemplate, matches
from papersearch.k8s.render import Manifest

OUTSIDE = None  # a source beyond the overlay's pods
Source = PodTemplate | None


def container_port(pod: PodTemplate, port: int | str) -> int | None:
    """A port number as given, or the number of the pod's container port of that name."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for c in pod.containers for p in c.get("ports", [])
                 if p.get("name") == port), None)


def isolating(policies: list[Manifest], pod: PodTemplate) -> list[Manifest]:
    """The policies that isolate ``pod`` for ingress (none: everything gets in)."""
    return [p for p in policies if p["metadata"].get("namespace") == pod.namespace
            and matches(p["spec"].get("podSelector", {}), pod.labels)
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]


def admits(policies: list[Manifest], pod: PodTemplate, port: int | None,
           source: Source) -> bool:
    """``policies`` let ``source`` reach ``pod`` on ``port`` (None: on every port)."""
    isolated = isolating(policies, pod)
    return not isolated or any(
        _from(rule, p["metadata"].get("namespace"), source) and _to(rule, pod, port)
        for p in isolated for rule in p["spec"].get("ingress", []))


def _from(rule: Mapping[str, Any], namespace: str | None, source: Source) -> bool:
    peers = rule.get("from")
    if not peers:
        return True
    if source is None:  # OUTSIDE
        return any("namespaceSelector" in p or "ipBlock" in p for p in peers)
    return source.namespace == namespace and any(
        set(p) == {"podSelector"} and matches(p["podSelector"], source.labels) for p in peers)


def _to(rule: Mapping[str, Any], pod: PodTemplate, port: int | None) -> bool:
    entries = rule.get("ports")
    return not entries or any(_port(e, pod, port) for e in entries)


def _port(entry: Mapping[str, Any], pod: PodTemplate, port: int | None) -> bool:
    if entry.get("protocol", "TCP") != "TCP":
        return False
    if "port" not in entry:  # every port of the protocol
        return True
    first = container_port(pod, entry["port"])  # a name: the destination pod's port
    return port is not None and first is not None and (
        first <= port <= entry.get("endPort", first))
