"""Checks across the objects of one rendered overlay: what no schema can see.

Each check returns a list of error strings (empty when it holds). A check that cannot read
what it checks raises Unreadable, whose message is then its one error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlparse

import yaml

from papersearch.k8s.network import OUTSIDE, Source, admits, container_port, isolating
from papersearch.k8s.pods import (
    PodTemplate,
    cpu_quantity,
    matches,
    ray_resources,
    templates,
)
from papersearch.k8s.render import Rendered
from papersearch.k8s.serve_config import (
    ServeConfigError,
    expected_serve_config,
    why_not_derived,
)
from papersearch.k8s.serve_schema import parse

GATEWAY_DEPLOYMENT = "Gateway"
PLACEHOLDER = "CHANGE-ME"
# Secrets an overlay may leave out (created out of band, deploy/README.md): name -> keys.
EXTERNAL_SECRETS = {"papersearch-qdrant": {"api-key"},
                    "papersearch-gateway": {"api-keys", "read-api-keys"},
                    "papersearch-gateway-tls": {"tls.crt", "tls.key"},
                    "papersearch-gateway-client-ca": {"ca.crt"}}  # mutual TLS
# The gateway's TLS files (PAPERSEARCH_SERVE__TLS_<X>_FILE), each read by the gateway replica.
TLS_FILES = ("CERT", "KEY", "CLIENT_CA")
CLIENT_CA_HINT = (": a client CA goes in Secret papersearch-gateway-client-ca, key ca.crt, "
                  "mounted in a directory of its own (deploy/README.md, TLS)")
# Stand-ins for their values when checking settings (the real ones never reach the repo).
SAMPLE_SECRET_VALUES = {"api-key": "sample-key", "api-keys": '["sample-key"]',
                        "read-api-keys": '["sample-read-key"]'}
INDEX_KEY_ENV = "PAPERSEARCH_INDEX__API_KEY"
QDRANT_KEY_ENV = "QDRANT__SERVICE__API_KEY"
SERVE_DEFAULT_CPUS = 1.0  # a replica without ray_actor_options.num_cpus reserves one CPU


class Unreadable(ValueError):
    """What a check reads is broken or missing: it cannot run (the message says why)."""


class CheckFailed(RuntimeError):
    """A check raised what it does not foresee: a gap of the check, not of the manifests."""


def serve_config(rendered: Rendered) -> dict[str, Any]:
    try:
        return parse(rendered.one("RayService")["spec"].get("serveConfigV2", ""))
    except ValueError as error:
        raise Unreadable("not checked: serveConfigV2 is no Serve config Serve accepts (its "
                         "serveConfigV2 error says why)") from error


def deployments(rendered: Rendered) -> dict[str, dict[str, Any]]:
    config = serve_config(rendered)
    return {d["name"]: d for app in config.get("applications", [])
            for d in app.get("deployments", [])}


def _gateway(rendered: Rendered) -> dict[str, Any]:
    gateway = deployments(rendered).get(GATEWAY_DEPLOYMENT)
    if gateway is None:
        raise Unreadable(f"serveConfigV2 has no deployment {GATEWAY_DEPLOYMENT} (the name "
                         "gateway/deployment.py gives it): nothing would serve the gateway pods")
    return gateway


def check_serve_config_derived(rendered: Rendered, root: Path) -> list[str]:
    """serveConfigV2 is exactly what deploy/serve/papersearch.yaml + overrides derive to."""
    actual = rendered.one("RayService")["spec"].get("serveConfigV2")
    try:
        expected = expected_serve_config(root, rendered.overlay)
        # what to do: regenerate, or list the patch (which regenerating cannot do), or ...
        mend = "" if actual == expected else why_not_derived(root, rendered.overlay)
    except (ServeConfigError, yaml.YAMLError) as error:
        return [f"cannot derive serveConfigV2 from deploy/serve/papersearch.yaml + "
                f"serve-overrides.yaml: {error}"]
    if mend:
        return ["RayService serveConfigV2 differs from deploy/serve/papersearch.yaml + "
                f"serve-overrides.yaml: {mend}"]
    return []


def max_replicas(deployment: Mapping[str, Any]) -> int:
    """The most replicas Serve runs of a deployment: autoscaling_config's max_replicas (Serve's
    default: 1, or 100 under num_replicas "auto"), else num_replicas (default 1)."""
    from ray.serve.config import AutoscalingConfig

    autoscaling = deployment.get("autoscaling_config")
    if deployment.get("num_replicas") == "auto":
        autoscaling = {"max_replicas": AutoscalingConfig.default().max_replicas,
                       **(autoscaling or {})}
    if not autoscaling:
        return int(deployment.get("num_replicas", 1))
    try:
        return AutoscalingConfig.model_validate(autoscaling).max_replicas
    except ValueError as error:  # pydantic's ValidationError
        raise Unreadable(f"not checked: {deployment.get('name')}'s autoscaling_config is no "
                         "AutoscalingConfig (its serveConfigV2 error says why)") from error


def _needs(deployment: Mapping[str, Any]) -> dict[str, float]:
    options = deployment.get("ray_actor_options", {})
    cpus = options.get("num_cpus")  # null: Serve's default too
    needs = {"CPU": SERVE_DEFAULT_CPUS if cpus is None else float(cpus)}
    needs.update({k: float(v) for k, v in options.get("resources", {}).items()})
    return needs


def _ray_groups(rendered: Rendered) -> list[PodTemplate]:
    return [t for t in templates(rendered.objects) if t.group is not None]


def _gateway_resources(rendered: Rendered) -> set[str]:
    """The custom resources the Gateway asks for: what marks its own worker group."""
    return {k for k in _needs(_gateway(rendered)) if k != "CPU"}


def check_gateway_placement(rendered: Rendered) -> list[str]:
    """Each Gateway replica has a gateway pod of its own, and those pods serve and probe gRPC."""
    errors: list[str] = []
    gateway = _gateway(rendered)
    wanted = _gateway_resources(rendered)
    if len(wanted) != 1:
        return ["Gateway must ask for exactly one custom resource (its own worker group)"]
    resource = wanted.pop()
    hosts = [t for t in _ray_groups(rendered)
             if resource in ray_resources(t.group or {}, t.containers[0])]
    if len(hosts) != 1:
        return [f"exactly one Ray group must offer {resource}, found {len(hosts)}"]
    host = hosts[0]
    group = host.group or {}
    replicas = {group.get(k) for k in ("replicas", "minReplicas", "maxReplicas")}
    if replicas != {gateway.get("num_replicas")}:
        errors.append(f"Gateway num_replicas {gateway.get('num_replicas')} must equal the "
                      f"{group.get('groupName')} group's replicas/min/max "
                      f"{sorted(map(str, replicas))}")
    if gateway.get("max_replicas_per_node") != 1:
        errors.append("Gateway needs max_replicas_per_node: 1 (it binds the port)")
    if ray_resources(group, host.containers[0]).get(resource) != 1:
        errors.append(f"each gateway pod must offer exactly 1 {resource}")
    ray = host.containers[0]
    env = _env(rendered, ray)
    port = int(env.get("PAPERSEARCH_SERVE__GRPC_PORT", "50051"))
    if not any(p.get("name") == "grpc" and p["containerPort"] == port
               for p in ray.get("ports", [])):
        errors.append(f"gateway pods must declare container port `grpc` {port}")
    http = env.get("PAPERSEARCH_SERVE__HTTP_PORT", "8000")  # "" or "null": no HTTP
    if http.isdigit() and not any(p.get("name") == "http" and p["containerPort"] == int(http)
                                  for p in ray.get("ports", [])):
        errors.append(f"gateway pods must declare container port `http` {http} (HTTP/JSON)")
    errors += _gateway_tls_errors(rendered, host, env)
    # Kubernetes' gRPC probes speak plaintext: on a TLS port they go to the health-only port.
    health = env.get("PAPERSEARCH_SERVE__HEALTH_PORT")
    probed = int(health) if health else port
    if health and not any(p.get("name") == "grpc-health" and p["containerPort"] == probed
                          for p in ray.get("ports", [])):
        errors.append(f"gateway pods must declare container port `grpc-health` {probed}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if ray.get(probe, {}).get("grpc", {}).get("port") != probed:
            errors.append(f"gateway pods need a gRPC {probe} on {probed} (grpc.health.v1)")
    errors += _gateway_drain_errors(host, env, gateway)
    for other in _ray_groups(rendered):
        component = other.labels.get("app.kubernetes.io/component")
        if other.owner != host.owner and component == "gateway":
            errors.append(f"{other.owner} is labelled gateway but hosts no Gateway")
    return errors


# What a probe must ask (gateway/server.py): liveness never depends on Qdrant or the models.
PROBE_SERVICES = {"startupProbe": "liveness", "livenessProbe": "liveness",
                  "readinessProbe": "readiness"}
RAY_STOP_S = 10.0  # after preStop, SIGTERM: `ray start --block` stops the node
SERVE_WAIT_LOOP_S = 2.0  # Serve's graceful_shutdown_wait_loop_s default
ENDPOINTS_S = 2.0  # a pod turned unready leaves its Services' endpoints (and kube-proxy's rules)


def _gateway_drain_errors(host: PodTemplate, env: Mapping[str, str],
                          gateway: Mapping[str, Any]) -> list[str]:
    """Probes ask liveness and readiness apart; preStop drains (serving/drain.py), the pod's
    termination grace covers the drain and Ray's stop, and Serve waits for a drain too."""
    from papersearch.serving.drain import MARGIN_S

    ray = host.containers[0]
    errors = [f"gateway {probe} must ask grpc.health.v1 service {service!r}"
              for probe, service in PROBE_SERVICES.items()
              if ray.get(probe, {}).get("grpc", {}).get("service") != service]
    try:
        serve = settings_from_env(env).serve
    except ValueError:  # pydantic's ValidationError: check_settings reports what is wrong
        return errors
    if serve.drain_file is None:
        errors.append("gateway pods need PAPERSEARCH_SERVE__DRAIN_FILE (preStop drains through it)")
    if _pre_stop(ray) != ["papersearch", "drain"]:
        errors.append("gateway pods need preStop `papersearch drain` (finish calls in flight)")
    readiness = ray.get("readinessProbe", {})
    unready_s = readiness.get("periodSeconds", 10) * readiness.get("failureThreshold", 3)
    if serve.drain_notice_s < unready_s + ENDPOINTS_S:
        errors.append(f"gateway drain_notice_s {serve.drain_notice_s:g} < "
                      f"{unready_s + ENDPOINTS_S:g}: readiness fails after up to {unready_s:g} s "
                      "(period x failureThreshold), "
                      f"then the endpoints update (~{ENDPOINTS_S:g} s); calls refused before "
                      "that still reach the pod (a Gateway replica Serve replaces in place)")
    drain = serve.drain_notice_s + serve.drain_grace_s
    serve_wait = float(gateway.get("graceful_shutdown_timeout_s", 20))
    # Serve's replica sleeps one wait loop before it calls __del__ (the drain), on its clock
    wait_loop = float(gateway.get("graceful_shutdown_wait_loop_s", SERVE_WAIT_LOOP_S))
    if serve_wait < wait_loop + drain + MARGIN_S:
        errors.append(f"Gateway graceful_shutdown_timeout_s {serve_wait:g} < "
                      f"{wait_loop + drain + MARGIN_S:g} (Serve's wait loop {wait_loop:g} + "
                      f"drain notice + grace {drain:g} + {MARGIN_S:g}): Serve would kill a "
                      "draining replica")
    errors += _grace_errors(host, "gateway", drain + MARGIN_S + RAY_STOP_S,
                            f"drain notice {serve.drain_notice_s:g} + grace "
                            f"{serve.drain_grace_s:g} + {MARGIN_S:g} + Ray's stop "
                            f"{RAY_STOP_S:g}")
    return errors


def _pre_stop(container: Mapping[str, Any]) -> Any:
    return container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")


def _grace_errors(pod: PodTemplate, who: str, needed: float, parts: str) -> list[str]:
    """The pod's termination grace covers its preStop hook and Ray's stop (``parts``)."""
    grace = float(pod.spec.get("terminationGracePeriodSeconds", 30))
    return [] if grace >= needed else [
        f"{who} terminationGracePeriodSeconds {grace:g} < {needed:g}: {parts}"]


def check_worker_drain(rendered: Rendered) -> list[str]:
    """Model worker pods (every Ray worker group but the gateways') move their replicas off
    before they stop: preStop `papersearch drain --ray-node`, within the termination grace."""
    from papersearch.serving.drain import MARGIN_S

    gateway = _gateway_resources(rendered)
    errors: list[str] = []
    for group in _ray_groups(rendered):
        spec, ray = group.group or {}, group.containers[0]
        if "groupName" not in spec or gateway & set(ray_resources(spec, ray)):
            continue  # the head, or the gateways' group (check_gateway_placement)
        if _pre_stop(ray) != ["papersearch", "drain", "--ray-node"]:
            errors.append(f"{group.owner} needs preStop `papersearch drain --ray-node` (move "
                          "its Serve replicas before Ray stops)")
        try:
            serve = settings_from_env(_env(rendered, ray)).serve
        except ValueError:  # check_settings reports it
            continue
        errors += _grace_errors(group, group.owner, serve.node_drain_s + MARGIN_S + RAY_STOP_S,
                                f"node_drain_s {serve.node_drain_s:g} + {MARGIN_S:g} + Ray's "
                                f"stop {RAY_STOP_S:g}")
    return errors


def _gateway_tls_errors(rendered: Rendered, host: PodTemplate,
                        env: Mapping[str, str]) -> list[str]:
    """A TLS gateway: plaintext probes need serve.health_port, and the cert, key and client CA
    files lie in a Secret volume mounted into the gateway container, under keys that Secret
    has (a missing CA file stops every gateway at start, as a missing cert does)."""
    files = [env.get(f"PAPERSEARCH_SERVE__TLS_{k}_FILE") for k in TLS_FILES]
    if not any(files[:2]):  # no TLS (a CA without a cert: check_settings says so)
        return []
    errors = [] if env.get("PAPERSEARCH_SERVE__HEALTH_PORT") else [
        "a TLS gateway needs PAPERSEARCH_SERVE__HEALTH_PORT: gRPC probes speak plaintext"]
    volumes = {v["name"]: v for v in host.spec.get("volumes", [])}
    mounts = host.containers[0].get("volumeMounts", [])
    for kind, file in zip(TLS_FILES, files, strict=True):
        if not file:
            continue
        path = Path(file)
        mount = next((m for m in mounts if path.parent == Path(m["mountPath"])), None)
        secret = volumes.get(mount["name"], {}).get("secret") if mount else None
        if secret is None:
            errors.append(f"{file}: no Secret volume mounted at {path.parent} in gateway pods")
            continue
        name = secret.get("secretName", "")
        present = {s["metadata"]["name"]: {*s.get("stringData", {}), *s.get("data", {})}
                   for s in rendered.find("Secret")}
        keys = present.get(name, EXTERNAL_SECRETS.get(name, set()))
        if "items" in secret:
            keys = {i["path"] for i in secret["items"] if i["key"] in keys}
        if path.name not in keys:
            errors.append(f"{file}: Secret {name} has no key {path.name} (its keys: "
                          f"{', '.join(sorted(keys)) or 'none known'})"
                          + (CLIENT_CA_HINT if kind == "CLIENT_CA" else ""))
    return errors


def check_replicas_fit(rendered: Rendered) -> list[str]:
    """Every replica fits on some Ray group, and the autoscaling maxima fit the groups' maxima."""
    groups = [(t, ray_resources(t.group or {}, t.containers[0])) for t in _ray_groups(rendered)]
    errors: list[str] = []
    demand: dict[str, float] = {}
    for name, deployment in deployments(rendered).items():
        needs = _needs(deployment)
        fits = [t for t, offer in groups if all(offer.get(k, 0.0) >= v for k, v in needs.items())]
        if not fits:
            errors.append(f"no Ray group can host a {name} replica (needs {needs})")
        for key, value in needs.items():
            demand[key] = demand.get(key, 0.0) + value * max_replicas(deployment)
    for key, total in demand.items():
        capacity = sum(offer.get(key, 0.0) * int((t.group or {}).get("maxReplicas", 1))
                       for t, offer in groups)
        if total > capacity + 1e-9:
            errors.append(f"autoscaling maxima need {total:g} {key}, the Ray groups at their "
                          f"maxReplicas offer {capacity:g}")
    return errors


def check_selectors(rendered: Rendered) -> list[str]:
    """Services, budgets, policies and monitors select pods, and name ports those pods have."""
    pods = list(templates(rendered.objects))
    errors: list[str] = []
    for obj in rendered.objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        spec = obj.get("spec", {})
        selector = {"Service": lambda s: s.get("selector"),
                    "PodDisruptionBudget": lambda s: s.get("selector"),
                    "NetworkPolicy": lambda s: s.get("podSelector"),
                    "PodMonitor": lambda s: s.get("selector")}.get(kind)
        if selector is None:
            continue
        chosen = [p for p in pods if matches(selector(spec), p.labels)]
        if not chosen:
            errors.append(f"{kind}/{name} selects no pod")
        if kind == "Service":
            for port in spec.get("ports", []):
                target = port.get("targetPort", port["port"])
                for pod in chosen:
                    known = pod.port_names() if isinstance(target, str) else pod.ports()
                    if target not in known:
                        errors.append(f"Service/{name} port {target} is not a port of {pod.owner}")
        if kind == "PodMonitor":
            for endpoint in spec.get("podMetricsEndpoints", []):
                for pod in chosen:
                    if endpoint["port"] not in pod.port_names():
                        errors.append(f"PodMonitor/{name}: {pod.owner} has no port "
                                      f"{endpoint['port']}")
    ray_pods = [p for p in pods if p.group is not None]
    for service in rendered.find("RayService"):  # KubeRay refuses to reconcile without it
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
        named = {p.get("name") for p in head["containers"][0].get("ports", [])}
        if "serve" not in named and "serveService" not in service["spec"]:
            errors.append(f"RayService/{service['metadata']['name']}: the head container needs "
                          "a port named serve (or spec.serveService)")
    monitors = [o for o in rendered.objects if o["kind"] == "PodMonitor"]
    for pod in ray_pods:
        if not any(matches(m["spec"]["selector"], pod.labels) for m in monitors):
            errors.append(f"{pod.owner}: its metrics port is scraped by no PodMonitor")
    return errors


COUNTED_KINDS = {"StatefulSet", "Deployment", "ReplicaSet"}  # a fixed spec.replicas


def check_disruption_budgets(rendered: Rendered) -> list[str]:
    """Each PodDisruptionBudget lets a node drain evict a pod even when the pods it selects are
    as few as they get (a Ray group at its minReplicas, where its autoscaler takes an idle group;
    a StatefulSet at its replicas): a minAvailable at that size, or a maxUnavailable of 0, makes
    every drain of their nodes wait forever."""
    pods = list(templates(rendered.objects))
    errors: list[str] = []
    for budget in rendered.find("PodDisruptionBudget"):
        chosen = [p for p in pods if p.namespace == budget["metadata"].get("namespace")
                  and matches(budget["spec"].get("selector"), p.labels)]
        if chosen:  # none: check_selectors says so
            errors += _budget_errors(rendered, budget, chosen)
    return errors


def _budget_errors(rendered: Rendered, budget: Mapping[str, Any],
                   chosen: list[PodTemplate]) -> list[str]:
    """Why one budget over the pods of ``chosen`` could refuse every eviction (none: it can't)."""
    where = f"PodDisruptionBudget/{budget['metadata']['name']}"
    spec = budget["spec"]
    least, most = spec.get("minAvailable"), spec.get("maxUnavailable")
    ray = [p.owner for p in chosen if p.group is not None]
    if ray and (most is not None or isinstance(least, str)):
        return [f"{where} selects Ray pods ({', '.join(ray)}), which a RayCluster owns without "
                "a scale subresource: Kubernetes counts them for an integer minAvailable only, "
                "and under maxUnavailable or a percentage allows no eviction (every node drain "
                "waits); give an integer minAvailable"]
    fewest = {p.owner: _fewest_pods(rendered, p) for p in chosen}
    unknown = [owner for owner, count in fewest.items() if count is None]
    if unknown:
        return [f"{where} selects pods of {', '.join(unknown)}, whose number is not fixed: the "
                "check cannot tell whether it lets a node drain; budget the pods of a Ray "
                "group, a StatefulSet or a Deployment only"]
    total = sum(count or 0 for count in fewest.values())
    sizes = ", ".join(f"{owner} {count}" for owner, count in fewest.items())
    if most is not None and _scaled(where, most, total) < 1:
        return [f"{where}: maxUnavailable {most} allows no eviction of its {total} pods "
                f"({sizes}): every drain of their nodes waits forever; allow 1 at least"]
    needed = _scaled(where, least, total) if least is not None else 0
    if needed > 0 and needed >= total:  # minAvailable 0 never refuses
        shown = f"{least} ({needed} of {total})" if isinstance(least, str) else str(least)
        idle = "; a Ray group shrinks to its minReplicas when idle" if ray else ""
        fix = (f"lower it below {total}, or raise that minimum" if total > 1 else
               "drop the budget (minAvailable 0 protects nothing), or raise that minimum to 2")
        return [f"{where}: minAvailable {shown} is not below {total}, the fewest pods it "
                f"selects ({sizes}{idle}): there no pod may be evicted and every drain of "
                f"their nodes waits forever; {fix}"]
    return []


def _fewest_pods(rendered: Rendered, pod: PodTemplate) -> int | None:
    """The fewest pods a template runs while its workload stands: a Ray worker group at its
    minReplicas (replicas without the autoscaler) x numOfHosts, the head 1, a StatefulSet,
    Deployment or ReplicaSet its replicas; None where no count is fixed (a Job, a DaemonSet)."""
    kind, _, rest = pod.owner.partition("/")
    owner = rendered.one(kind, rest.split(" ")[0])
    if pod.group is not None:
        if "groupName" not in pod.group:
            return 1  # the head
        autoscaled = owner["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling")
        size = pod.group.get("minReplicas" if autoscaled else "replicas", 0)  # KubeRay's default
        return int(size) * int(pod.group.get("numOfHosts", 1))
    return int(owner["spec"].get("replicas", 1)) if kind in COUNTED_KINDS else None


def _scaled(where: str, value: int | str, total: int) -> int:
    """A budget's count: an integer, or a percentage of ``total`` rounded up (Kubernetes')."""
    if isinstance(value, int):
        return value
    if not (value.endswith("%") and value[:-1].isdigit()):
        raise Unreadable(f"not checked: {where}: {value!r} is no count or percentage")
    return -(-int(value[:-1]) * total // 100)


QDRANT_CLIENT_LABEL = "papersearch.io/qdrant-client"
QDRANT_CLIENT_PORTS = (6333, 6334)  # REST, gRPC (qdrant/production.yaml)
QDRANT_PEER_PORTS = (6333, 6334, 6335)  # and p2p; snapshot shard transfers go over REST
RAY_DASHBOARD_PORT = 8265  # KubeRay's default where the head names no `dashboard` port


@dataclass(frozen=True)
class _Need:
    """Traffic a pod must admit: from any of ``sources`` on ``port`` (None: on every port)."""

    pod: PodTemplate
    port: int | None
    sources: list[Source]
    what: str
    fix: str


def check_network_policies(rendered: Rendered) -> list[str]:
    """The NetworkPolicies admit what the pods are there for (Kubernetes' semantics: network.py):
    each Service's target ports, the gateways' ports from clients, Qdrant's from its clients and
    peers, every port between Ray pods, the dashboard and the scraped ports from elsewhere."""
    policies = rendered.find("NetworkPolicy")
    pods = list(templates(rendered.objects))
    needs = [*_service_needs(rendered, pods), *_gateway_needs(rendered), *_qdrant_needs(pods),
             *_ray_needs(rendered), *_monitor_needs(rendered, pods)]
    return [f"{n.pod.owner}: {n.what} is not admitted (NetworkPolicy "
            f"{', '.join(p['metadata']['name'] for p in isolating(policies, n.pod))}): {n.fix}"
            for n in needs if not any(admits(policies, n.pod, n.port, s) for s in n.sources)]


def _service_needs(rendered: Rendered, pods: list[PodTemplate]) -> Iterator[_Need]:
    """Each Service's target ports, from anywhere (check_selectors reports a port not there)."""
    for service in rendered.find("Service"):
        for pod in (p for p in pods if matches(service["spec"].get("selector"), p.labels)):
            for entry in service["spec"].get("ports", []):
                port = container_port(pod, entry.get("targetPort", entry["port"]))
                if port is not None:
                    yield _Need(pod, port, [OUTSIDE, *pods], f"port {port} (Service/"
                                f"{service['metadata']['name']} port {entry['port']}) from "
                                "anywhere", "open it in an ingress rule, or nothing that "
                                "dials the Service gets an answer")


def _gateway_needs(rendered: Rendered) -> Iterator[_Need]:
    """The gateways' gRPC and HTTP ports, from clients in other namespaces. Not the health port:
    the kubelet probes it from the pod's node, which policies never block."""
    wanted = _gateway_resources(rendered)
    for pod in _ray_groups(rendered):
        if not wanted & set(ray_resources(pod.group or {}, pod.containers[0])):
            continue
        try:
            serve = settings_from_env(_env(rendered, pod.containers[0])).serve
        except ValueError:  # pydantic's ValidationError: check_settings reports what is wrong
            continue
        for setting, port in (("grpc_port", serve.grpc_port), ("http_port", serve.http_port)):
            if port is not None:
                yield _Need(pod, port, [OUTSIDE], f"serve.{setting} {port} from other "
                            "namespaces", "clients could not connect; open it in the rule for "
                            "the gateways' clients (no `from`)")


def _qdrant_needs(pods: list[PodTemplate]) -> Iterator[_Need]:
    """Qdrant's client ports from every pod labelled a client; its ports from its peers."""
    clients = [p for p in pods if p.labels.get(QDRANT_CLIENT_LABEL) == "true"]
    for pod in (p for p in pods if p.owner == "StatefulSet/qdrant"):
        for port in QDRANT_PEER_PORTS:  # the peers share the pod's template
            yield _Need(pod, port, [pod], f"port {port} from the other Qdrant peers",
                        "admit the Qdrant pods on 6333-6335 (without p2p 6335 no cluster forms)")
        yield from (_Need(pod, port, [client], f"port {port} from {client.owner}",
                          f"admit pods labelled {QDRANT_CLIENT_LABEL}: \"true\" on 6333 and 6334")
                    for client in clients for port in QDRANT_CLIENT_PORTS)


def _ray_needs(rendered: Rendered) -> Iterator[_Need]:
    """Every port between Ray pods; the head's dashboard from the KubeRay operator (elsewhere)."""
    ray = _ray_groups(rendered)
    for pod in ray:
        yield from (_Need(pod, None, [other], f"traffic on every port from {other.owner}",
                          "Ray's own traffic (GCS, raylets, object transfers, workers) uses any "
                          "port; admit the Ray pods with no `ports`") for other in ray)
        if "groupName" not in (pod.group or {}):
            port = container_port(pod, "dashboard") or RAY_DASHBOARD_PORT
            yield _Need(pod, port, [OUTSIDE], f"the dashboard {port} from other namespaces",
                        "KubeRay's operator deploys the Serve config through it; admit it")


def _monitor_needs(rendered: Rendered, pods: list[PodTemplate]) -> Iterator[_Need]:
    """Each port a PodMonitor scrapes, from other namespaces (Prometheus's)."""
    for monitor in rendered.find("PodMonitor"):
        for pod in (p for p in pods if matches(monitor["spec"].get("selector"), p.labels)):
            for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
                port = container_port(pod, endpoint["port"])
                if port is not None:
                    yield _Need(pod, port, [OUTSIDE], f"metrics port {port} (PodMonitor/"
                                f"{monitor['metadata']['name']}) from other namespaces",
                                "Prometheus could not scrape it; admit it from its namespace")


def check_pod_hardening(rendered: Rendered) -> list[str]:
    """Requests and limits everywhere; non-root, no privilege escalation, read-only root fs."""
    errors: list[str] = []
    for pod in templates(rendered.objects):
        context = pod.spec.get("securityContext", {})
        if context.get("runAsNonRoot") is not True:
            errors.append(f"{pod.owner}: pod securityContext needs runAsNonRoot: true")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{pod.owner}: pod needs seccompProfile RuntimeDefault")
        for container in [*pod.containers, *pod.spec.get("initContainers", [])]:
            where = f"{pod.owner} container {container['name']}"
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(section, {}):
                        errors.append(f"{where}: no {resource} {section[:-1]}")
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{where}: allowPrivilegeEscalation must be false")
            if security.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{where}: readOnlyRootFilesystem must be true")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                errors.append(f"{where}: capabilities must drop ALL")
            limits = resources.get("limits", {})
            requests = resources.get("requests", {})
            if "cpu" in limits and "cpu" in requests and (
                    cpu_quantity(requests["cpu"]) > cpu_quantity(limits["cpu"])):
                errors.append(f"{where}: cpu request above its limit")
    return errors


def check_secrets(rendered: Rendered) -> list[str]:
    """Secrets in the repository hold placeholders only; references name existing keys."""
    errors: list[str] = []
    present: dict[str, set[str]] = {}
    for secret in rendered.find("Secret"):
        name = secret["metadata"]["name"]
        values = {**secret.get("stringData", {}), **secret.get("data", {})}
        present[name] = set(values)
        for key, value in values.items():
            if PLACEHOLDER not in str(value):
                errors.append(f"Secret/{name} key {key}: not a {PLACEHOLDER} placeholder")
    for pod in templates(rendered.objects):
        for container in pod.containers:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    continue
                keys = present.get(ref["name"], EXTERNAL_SECRETS.get(ref["name"]))
                if keys is None or ref["key"] not in keys:
                    errors.append(f"{pod.owner}: {env['name']} refers to a missing secret key "
                                  f"{ref['name']}/{ref['key']}")
    return errors


def check_references(rendered: Rendered) -> list[str]:
    """Every ConfigMap a container takes its environment from is part of the overlay (or
    optional): the pods would not start without it, and nothing could check its variables."""
    present = {c["metadata"]["name"] for c in rendered.find("ConfigMap")}
    return [f"{pod.owner} container {container['name']}: envFrom ConfigMap {ref.get('name')} is "
            "not in this overlay: add it (configMapGenerator), or mark it optional: true"
            for pod in templates(rendered.objects) for container in pod.containers
            for ref in (s.get("configMapRef") for s in container.get("envFrom", []))
            if ref and ref.get("name") not in present and not ref.get("optional")]


def secret_setting(name: str) -> bool:
    """True if a PAPERSEARCH_* variable sets a secret (a SecretStr field: an API key)."""
    from pydantic import SecretStr

    from papersearch.settings import setting_field

    field = setting_field(name)
    return field is not None and _mentions(field.annotation, SecretStr)


def _mentions(annotation: Any, wanted: type) -> bool:
    """``annotation`` is ``wanted`` or made of it (``list[SecretStr]``, ``SecretStr | None``)."""
    return annotation is wanted or any(_mentions(a, wanted) for a in get_args(annotation))


def check_keys_from_secrets(rendered: Rendered) -> list[str]:
    """API keys (secret settings) reach the pods from Secrets only, never from the manifest or
    a ConfigMap; papersearch's Qdrant key is the very Secret key Qdrant's own comes from."""
    errors = [f"ConfigMap/{c['metadata']['name']}: {key} is a key: put it in a Secret, taken "
              "with env valueFrom.secretKeyRef" for c in rendered.find("ConfigMap")
              for key in c.get("data", {}) if secret_setting(key)]
    qdrant = _qdrant_key(rendered)
    for pod in templates(rendered.objects):
        for container in pod.containers:
            where = f"{pod.owner} container {container['name']}"
            for env in container.get("env", []):
                if not secret_setting(env["name"]):
                    continue
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    errors.append(f"{where}: {env['name']} must come from a Secret "
                                  "(valueFrom.secretKeyRef), not from the manifest")
                elif env["name"] == INDEX_KEY_ENV and qdrant and (
                        (ref.get("name"), ref.get("key")) != qdrant):
                    errors.append(f"{where}: {INDEX_KEY_ENV} comes from Secret key "
                                  f"{ref.get('name')}/{ref.get('key')}, Qdrant's from "
                                  f"{'/'.join(qdrant)}: Qdrant would refuse every call")
    return errors


def _qdrant_key(rendered: Rendered) -> tuple[str, str] | None:
    """The Secret and key Qdrant's own API key comes from (None: not from a Secret)."""
    for sts in rendered.find("StatefulSet", "qdrant"):
        for env in sts["spec"]["template"]["spec"]["containers"][0].get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if env["name"] == QDRANT_KEY_ENV and ref:
                return ref.get("name"), ref.get("key")
    return None


def _env(rendered: Rendered, container: Mapping[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it (secrets: placeholders/samples). What
    a reference the overlay cannot resolve would set is left out (check_secrets and
    check_references report it)."""
    out: dict[str, str] = {}
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in rendered.find("ConfigMap")}
    for source in container.get("envFrom", []):
        data = config_maps.get(source.get("configMapRef", {}).get("name"), {})
        out.update({f"{source.get('prefix', '')}{k}": str(v) for k, v in data.items()})
    secrets = {s["metadata"]["name"]: {**s.get("stringData", {})} for s in rendered.find("Secret")}
    for env in container.get("env", []):
        if "value" in env:
            out[env["name"]] = str(env["value"])
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            sample = SAMPLE_SECRET_VALUES.get(ref["key"])
            value = secrets.get(ref["name"], {}).get(ref["key"], sample)
            if value is not None:
                out[env["name"]] = value
    return out


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("PAPERSEARCH_")}
    for key in saved:
        del os.environ[key]
    os.environ.update({k: v for k, v in values.items() if k.startswith("PAPERSEARCH_")})
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("PAPERSEARCH_")]:
            del os.environ[key]
        os.environ.update(saved)


def settings_from_env(env: Mapping[str, str]) -> Any:
    """The Settings a process with exactly these PAPERSEARCH_* variables would load."""
    from papersearch.settings import Settings

    with _environment(env):
        return Settings()


def unknown_setting(name: str) -> bool:
    """True if PAPERSEARCH_<A>__<B> names no field of Settings: one line per typo (loading
    refuses <A>__<B> too, among its other errors; an unknown PAPERSEARCH_<A> it ignores)."""
    from papersearch.settings import setting_field

    return setting_field(name) is None


def check_settings(rendered: Rendered) -> list[str]:
    """Every papersearch container's environment builds the Settings the deployment needs."""
    errors: list[str] = []
    peers = sum(s["spec"]["replicas"] for s in rendered.find("StatefulSet", "qdrant"))
    try:
        apps: set[str] | None = {app.get("name") for app in serve_config(rendered)["applications"]}
    except Unreadable:  # its own error says why
        apps = None
    for pod in templates(rendered.objects):
        for container in pod.containers:
            env = _env(rendered, container)
            if not any(k.startswith("PAPERSEARCH_") for k in env):
                continue
            where = f"{pod.owner} container {container['name']}"
            errors += [f"{where}: {k} is no setting" for k in env
                       if k.startswith("PAPERSEARCH_") and unknown_setting(k)]
            try:
                settings = settings_from_env(env)
            except Exception as error:  # noqa: BLE001 (pydantic's ValidationError and friends)
                errors.append(f"{where}: settings do not load: {error}")
                continue
            index = settings.index
            url = urlparse(index.url or "")
            service = _service_of_host(rendered, url.hostname or "", pod.namespace)
            if isinstance(service, str):  # why the host is no Service of this overlay
                missing, ports = service, set()
            else:
                missing, ports = "", {p["port"] for p in service["spec"]["ports"]}
            checks: list[tuple[bool, str]] = [
                (index.backend == "server", "index.backend must be server"),
                (not missing, missing),
                # no Service: that error alone
                (bool(missing) or url.port in ports and index.grpc_port in ports,
                 f"Qdrant ports {url.port}/{index.grpc_port} not on the Service"),
                (index.api_key is not None, "index.api_key must come from the Secret"),
                (index.shard_number >= 2, "index.shard_number must be >= 2"),
                (index.replication_factor == 2, "index.replication_factor must be 2"),
                (index.replication_factor <= peers, "more replicas than Qdrant peers"),
                (settings.models.repository.is_absolute(), "models.repository must be absolute"),
            ]
            if pod.group is not None:
                checks += [
                    (settings.serve.grpc_host == "0.0.0.0", "serve.grpc_host must be 0.0.0.0"),
                    (bool(settings.serve.api_keys), "serve.api_keys must come from the Secret"),
                    # drain, migrate and the load test find the app by it
                    (apps is None or settings.serve.app_name in apps, f"serve.app_name "
                     f"{settings.serve.app_name!r} names no application of serveConfigV2"),
                ]
            errors += [f"{where}: {message}" for ok, message in checks if not ok]
            if pod.labels.get(QDRANT_CLIENT_LABEL) != "true":
                errors.append(f"{where}: talks to Qdrant but lacks the label the Qdrant "
                              "NetworkPolicy admits (papersearch.io/qdrant-client)")
    return errors


def _service_of_host(rendered: Rendered, host: str,
                     namespace: str | None) -> dict[str, Any] | str:
    """The Service of this overlay that a pod in ``namespace`` reaches by ``host`` (cluster
    DNS: <svc>, <svc>.<ns>, <svc>.<ns>.svc, <svc>.<ns>.svc.<cluster domain>), else why none.
    The overlay's objects share one namespace; a name in another is not this Qdrant (and its
    NetworkPolicy admits clients of its own namespace only)."""
    name, _, rest = host.rstrip(".").partition(".")
    named, _, suffix = rest.partition(".")
    same = [s for s in rendered.find("Service") if s["metadata"]["name"] == name]
    if not same or suffix and suffix != "svc" and not suffix.startswith("svc."):
        return (f"index.url host {host} is no Service here (a Service is reached as <name>, "
                "<name>.<namespace> or <name>.<namespace>.svc[.<cluster domain>])")
    wanted = named or namespace
    service = next((s for s in same if s["metadata"].get("namespace") == wanted), None)
    if service is not None:
        return service
    there = same[0]["metadata"].get("namespace")
    if not named:
        return (f"index.url host {host}: Service/{name} is in namespace {there}, these pods "
                f"in {namespace}: put them in one namespace")
    if there is None:
        return (f"index.url host {host} names namespace {named}, but these objects have none "
                f"(they go where they are applied): use the Service's short name {name}")
    return (f"index.url host {host} names namespace {named}, but Service/{name} of this "
            f"overlay is in {there}: use {name}, or {name}.{there}.svc.<cluster domain>")


def check_ray_pods_agree(rendered: Rendered) -> list[str]:
    """Every Ray pod sees the head's PAPERSEARCH_* values: Serve builds the app, settings
    included, on whichever pod runs the build (the head, as a rule), while the TLS, health and
    drain checks read a gateway pod's own."""
    pods = [(t, _settings_env(rendered, t.containers[0])) for t in _ray_groups(rendered)]
    head = next((env for t, env in pods if "groupName" not in (t.group or {})), None)
    if head is None:
        return []
    return [f"{pod.owner}: {name} is {_shown(env.get(name))}, on the head "
            f"{_shown(head.get(name))}: every Ray pod needs the same (the env ConfigMap's, or "
            "the same Secret key)"
            for pod, env in pods for name in sorted(set(env) | set(head))
            if env.get(name) != head.get(name)]


def _settings_env(rendered: Rendered, container: Mapping[str, Any]) -> dict[str, str]:
    """A container's PAPERSEARCH_* variables; a Secret's shown as the key it comes from."""
    env = {k: v for k, v in _env(rendered, container).items() if k.startswith("PAPERSEARCH_")}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref and entry["name"].startswith("PAPERSEARCH_"):
            env[entry["name"]] = f"Secret {ref.get('name')}/{ref.get('key')}"
    return env


def _shown(value: str | None) -> str:
    return "unset" if value is None else repr(value)


def check_qdrant(rendered: Rendered) -> list[str]:
    """Distributed Qdrant: 3+ peers on PVCs, the headless Service, the key from the Secret."""
    errors: list[str] = []
    sts = rendered.one("StatefulSet", "qdrant")
    spec = sts["spec"]
    if spec["replicas"] < 3:
        errors.append("Qdrant needs 3 peers at least")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    if not {"qdrant-storage", "qdrant-snapshots"} <= claims:
        errors.append("Qdrant needs storage and snapshot PVCs")
    headless = rendered.one("Service", spec["serviceName"])
    if headless["spec"].get("clusterIP") != "None":
        errors.append("Qdrant's serviceName must be a headless Service")
    script = next(iter(c["data"]["initialize.sh"] for c in rendered.find("ConfigMap")
                       if "initialize.sh" in c.get("data", {})), "")
    if f"{sts['metadata']['name']}-0.{spec['serviceName']}:6335" not in script:
        errors.append("initialize.sh must bootstrap from peer 0 through the headless Service")
    if _qdrant_key(rendered) != ("papersearch-qdrant", "api-key"):
        errors.append("Qdrant's API key must come from Secret papersearch-qdrant/api-key")
    return errors


CHECKS: dict[str, Callable[[Rendered], list[str]]] = {
    "gateway placement": check_gateway_placement,
    "replicas fit": check_replicas_fit,
    "worker drain": check_worker_drain,
    "selectors and ports": check_selectors,
    "disruption budgets": check_disruption_budgets,
    "network policies": check_network_policies,
    "pod hardening": check_pod_hardening,
    "secrets": check_secrets,
    "references": check_references,
    "keys from secrets": check_keys_from_secrets,
    "settings from env": check_settings,
    "same settings on every Ray pod": check_ray_pods_agree,
    "qdrant cluster": check_qdrant,
}


def all_errors(rendered: Rendered, root: Path) -> list[str]:
    errors = [f"serve config: {e}" for e in check_serve_config_derived(rendered, root)]
    for name, check in CHECKS.items():
        try:
            errors += [f"{name}: {e}" for e in check(rendered)]
        except Unreadable as error:
            errors.append(f"{name}: {error}")
        except Exception as error:
            raise CheckFailed(f"{name}: {type(error).__name__}: {error}") from error
    return errors

