"""`papersearch drain --ray-node`: move this Ray node's Serve replicas to other nodes, and wait.

The preStop hook of KubeRay's model worker pods (QueryEncoder, Reranker) runs it. Without it a
worker pod that Kubernetes deletes (node maintenance, eviction, a rolling node pool) took its
replicas down with SIGTERM: the searches in flight on them were sent once more elsewhere
(pipeline/serve_backend.read), or failed UNAVAILABLE where the pod held the deployment's only
replica, until Serve noticed and a replacement had loaded its model.

Here Ray's GCS is told the node is being preempted, with a deadline (``ray drain-node``, the
request Ray's own autoscaler makes for a node it removes). Serve's controller then starts a
replacement for each replica on the node elsewhere (asking Ray's autoscaler for a pod if no
node has room) and stops the old one gracefully once its replacement runs, or as the deadline
nears. The command returns when no Serve replica is alive on the node, or raises TimeoutError
at the deadline; then the kubelet sends SIGTERM. terminationGracePeriodSeconds covers the
deadline and Ray's stop (make k8s-check).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass

from papersearch.logs import route_library_logs

log = logging.getLogger(__name__)

REPLICA_CLASS_PREFIX = "ServeReplica:"  # Ray's class name for a replica: ServeReplica:app:name
POLL_S = 1.0
REQUEST_TIMEOUT_S = 60.0


class NodeDrainError(RuntimeError):
    """No cluster to drain a node of, or Ray refused the request."""


@dataclass(frozen=True, slots=True)
class NodeDrained:
    node_id: str
    replicas: int  # Serve replicas on the node when first listed, after the drain was asked
    seconds: float


def drain_ray_node(deadline_s: float, *, address: str | None = None,
                   node_id: str | None = None, poll_s: float = POLL_S) -> NodeDrained:
    """Mark a Ray node (this process's, by default) as preempted ``deadline_s`` from now and
    wait until no Serve replica lives on it. Connects to the cluster at ``address`` (None:
    RAY_ADDRESS, which KubeRay sets in every Ray container) unless already connected."""
    import ray

    route_library_logs()  # Ray's console handler, installed at its import
    connected = ray.is_initialized()
    if not connected:
        try:
            ray.init(address=address or "auto", logging_level=logging.WARNING,
                     log_to_driver=False)
        except ConnectionError as error:
            raise NodeDrainError(f"no Ray node here to drain: {error}") from None
    try:
        return _drain(node_id or ray.get_runtime_context().get_node_id(),
                      ray.get_runtime_context().gcs_address, deadline_s, poll_s)
    finally:
        if not connected:
            ray.shutdown()


def _drain(node: str, gcs: str, deadline_s: float, poll_s: float) -> NodeDrained:
    """The drain asked for first (the state API that counts replicas lives on the head and may
    not answer), then the node's replicas listed until none is left or the deadline passes;
    a listing that fails is retried, not taken for an empty node."""
    started = time.monotonic()
    until = started + deadline_s
    request_drain(gcs, node, until)
    log.info("ray node draining", extra={"node_id": node, "deadline_s": deadline_s})
    first: int | None = None
    left: list[str] | None = None
    while True:
        try:
            left = replicas_on(node, max(1.0, until - time.monotonic()))
        except ListingFailed as error:
            log.warning("cannot list the node's replicas: waiting", extra={
                "node_id": node, "reason": str(error)})
        else:
            first = len(left) if first is None else first
            if not left:
                break
        remaining = until - time.monotonic()  # after the listing, which may have taken it all
        if remaining <= 0:
            what = ", ".join(left) if left else "unknown (the state API did not answer)"
            raise TimeoutError(f"Serve replicas still on Ray node {node} {deadline_s:g} s after "
                               f"the drain was asked for: {what}")
        time.sleep(min(poll_s, remaining))
    drained = NodeDrained(node, first or 0, time.monotonic() - started)
    log.info("ray node drained", extra={"node_id": node, "replicas": drained.replicas,
                                        "seconds": round(drained.seconds, 3)})
    return drained


def request_drain(gcs_address: str, node_id: str, until: float) -> None:
    """Ray's CLI request (its GCS client is not public API), with what is left until ``until``
    (monotonic) as the deadline: a preemption is always accepted, so Serve moves replicas off
    the node, and the scheduler places nothing new there."""
    remaining = until - time.monotonic()
    command = [sys.executable, "-m", "ray.scripts.scripts", "drain-node",
               "--address", gcs_address, "--node-id", node_id,
               "--reason", "DRAIN_NODE_REASON_PREEMPTION",
               "--reason-message", "papersearch drain --ray-node (pod terminating)",
               "--deadline-remaining-seconds", str(max(1, int(remaining)))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=max(1.0, min(REQUEST_TIMEOUT_S, remaining)))
    except subprocess.TimeoutExpired:
        raise NodeDrainError(f"ray drain-node did not answer within {remaining:.0f} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise NodeDrainError(f"ray drain-node failed (exit {done.returncode}): "
                             f"{lines[-1] if lines else 'no output'}")


class ListingFailed(RuntimeError):
    """Ray's state API did not list the node's actors (the dashboard down or slow)."""


def replicas_on(node_id: str, timeout_s: float = REQUEST_TIMEOUT_S) -> list[str]:
    """Names of the Serve replicas alive on a node (Ray's state API, through the dashboard);
    ListingFailed when it does not answer."""
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    try:
        actors = list_actors(filters=[("node_id", "=", node_id), ("state", "=", "ALIVE")],
                             limit=10_000, timeout=max(1, int(timeout_s)),
                             raise_on_missing_output=False)
    except (RayStateApiException, OSError) as error:  # requests' errors are OSErrors
        raise ListingFailed(str(error)) from error
    return sorted(a.class_name for a in actors
                  if a.class_name.startswith(REPLICA_CLASS_PREFIX))
