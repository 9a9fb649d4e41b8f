"""The container image's HEALTHCHECK (docker, compose; Kubernetes uses its own gRPC probes):
the gateway's grpc.health.v1 status on this machine, asked where the settings put it.

The check used to ask plaintext 127.0.0.1:50051 whatever ``serve.grpc_port`` said, and a TLS
gateway's port could not answer it: either container was unhealthy for good once its start
period passed. It asks ``serve.health_port`` (plaintext health only, for this) where set, else
``serve.grpc_port``; a TLS gateway without a health port is said as such. It reads the
environment (PAPERSEARCH_CONFIG included): a ``--config`` on the server's command line is not
seen here.

Run as ``python -m papersearch.serving.healthcheck``: exit 0 when SERVING, 1 otherwise, with
the reason on stderr (docker keeps it in the container's health log).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from papersearch.serving.drain import local_host
from papersearch.settings import ServeSettings, load_settings

CHECK_TIMEOUT_S = 3.0  # within the HEALTHCHECK's --timeout (5 s), settings' loading included


def health_target(serve: ServeSettings) -> str:
    """host:port of the plaintext health service on this machine; ValueError where there is
    none (TLS on the gRPC port, no health port)."""
    if serve.health_port is not None:
        port = serve.health_port
    elif serve.tls_cert_file is not None:
        raise ValueError("the gRPC port serves TLS and serve.health_port is not set: set "
                         "PAPERSEARCH_SERVE__HEALTH_PORT (plaintext health, for probes)")
    else:
        port = serve.grpc_port
    host = local_host(serve.grpc_host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check(target: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when the gateway at ``target`` says SERVING; else why not, in one line."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as error:
            return f"{target}: {error.code().name}: {error.details()}"
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"
    return None


def main() -> int:
    try:
        problem = check(health_target(load_settings().serve))
    except (ValueError, FileNotFoundError) as error:  # settings: a bad value, no such file
        problem = str(error)
    if problem is not None:
        print(f"papersearch healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
