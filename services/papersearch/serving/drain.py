"""`papersearch drain`: ask the gateway in this pod (or on this machine) to drain, and wait.

Kubernetes' preStop hook runs it: it creates ``serve.drain_file``, which the gateway polls
(gateway/server.py), and returns once the gateway's port stops accepting connections, that is
once the calls in flight have finished, or after ``serve.drain_notice_s`` +
``serve.drain_grace_s`` plus a margin. Then the
kubelet sends SIGTERM and Ray stops. terminationGracePeriodSeconds covers both (make k8s-check).
"""

from __future__ import annotations

import logging
import socket
import time

from papersearch.settings import ServeSettings

log = logging.getLogger(__name__)

# past the drain's notice and grace: the HTTP front's stop (at most 2 x HTTP_STOP_S), the gRPC
# server's (STOP_GRACE_S) and this command's poll, with room to spare
MARGIN_S = 5.0
POLL_S = 0.5


def local_host(host: str) -> str:
    """Where this machine reaches a server bound to ``host``: a wildcard bind on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


def accepting(host: str, port: int) -> bool:
    """Whether something listens on host:port (a wildcard bind is reached on loopback). A
    connect that times out counts: a listener whose backlog is full under load drops it
    unanswered, where a closed port refuses it at once."""
    try:
        with socket.create_connection((local_host(host), port), timeout=1.0):
            return True
    except TimeoutError:
        return True
    except OSError:
        return False


def request_drain(serve: ServeSettings) -> float | None:
    """Create the drain file and wait for the gateway to stop; seconds it took, or None when no
    gateway was listening (nothing to drain, no file left behind)."""
    path = serve.drain_file
    if path is None:
        raise ValueError("serve.drain_file is not set: the gateway watches no file to drain on "
                         "(set PAPERSEARCH_SERVE__DRAIN_FILE for the gateway and this command)")
    if not accepting(serve.grpc_host, serve.grpc_port):
        log.info("no gateway to drain", extra={"port": serve.grpc_port})
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    started = time.monotonic()
    limit = serve.drain_notice_s + serve.drain_grace_s + MARGIN_S
    while accepting(serve.grpc_host, serve.grpc_port):
        if time.monotonic() - started > limit:
            raise TimeoutError(f"the gateway on port {serve.grpc_port} still accepts calls "
                               f"{limit:g} s after {path} was created")
        time.sleep(POLL_S)
    elapsed = time.monotonic() - started
    log.info("gateway drained", extra={"seconds": round(elapsed, 3)})
    return elapsed
