"""The clients' gRPC retry policy (Python client, CLI, load test): channel options and the command-
line flag. No grpc import, so the CLI's parser stays light.

gRPC itself retries, per call, the idempotent reads (Search, SimilarPapers, GetPaper, health
Check) that end UNAVAILABLE: up to 3 attempts in all, waiting about 0.1 s, then about 0.2 s
(capped at 1 s; gRPC's C core draws each within +-20 % of that, measured 0.085-0.12 and
0.16-0.24 s with grpcio 1.85, not the 0-to-backoff of the retry design, gRFC A6), within the
call's own deadline. On request (``wait_for_ready``,
``--wait-for-ready``) they also wait for the connection: while the gateway is unreachable
(restarting after a crash, say) a read waits, up to its deadline, for it to accept connections
again instead of failing at once. Not by default: a wrong address or TLS setting would then
show as a DEADLINE_EXCEEDED after the whole deadline instead of an UNAVAILABLE at once.
UNAVAILABLE is what the gateway answers for a replica that died, no replica running, or Qdrant
unreachable: nothing was done, so sending the read again is safe. Writes are not retried by the
channel: UpsertPapers is a client stream gRPC cannot replay, and DeletePapers is left to the
caller like it; both are idempotent, so the caller may resend them whole. No retryThrottling: 3
attempts bound the extra load at 3x, and throttling would turn retries off exactly when a
replica's death fails a coalesced batch.

Every client channel pings the gateway while a call is open and the connection is quiet
(``KEEPALIVE_S``, then ``KEEPALIVE_TIMEOUT_S`` for the answer): a watch that hears nothing
learns this way of a gateway that vanished without closing its connection (a lost node, a
dropped flow), with UNAVAILABLE, on which `papersearch watch --reconnect` reconnects; without
pings it waited silently for ever. The interval stays above the gateway's
serve.min_client_ping_interval_s (10 s), under which pings count as abuse.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

MAX_ATTEMPTS = 3
KEEPALIVE_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0
RETRYABLE_CODES = ("UNAVAILABLE",)
RETRIED_METHODS = (
    ("papersearch.v1.SearchService", "Search"),
    ("papersearch.v1.SearchService", "SimilarPapers"),
    ("papersearch.v1.SearchService", "GetPaper"),
    ("grpc.health.v1.Health", "Check"),
)


def service_config(retry: bool = True, wait_for_ready: bool = False) -> dict[str, Any]:
    """The gRPC service config (JSON) for the reads: the same for any client."""
    config: dict[str, Any] = {"name": [{"service": service, "method": method}
                                       for service, method in RETRIED_METHODS]}
    if wait_for_ready:
        config["waitForReady"] = True
    if retry:
        config["retryPolicy"] = {
            "maxAttempts": MAX_ATTEMPTS,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": list(RETRYABLE_CODES),
        }
    return {"methodConfig": [config]}


def channel_options(retry: bool = True, wait_for_ready: bool = False,
                    keepalive_s: float = KEEPALIVE_S,
                    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
                    ) -> list[tuple[str, str | int]]:
    """Options for ``grpc.*_channel``: the keepalive pings, any answer's size, and the read
    policy; with neither retry nor wait_for_ready no policy: gRPC's defaults, as a client that
    configured none gets (only gRPC's transparent retries of calls that never left the
    client)."""
    timeout_ms = round(keepalive_timeout_s * 1000)
    pings: list[tuple[str, str | int]] = [
        # the gateway bounds answers (serve.max_send_bytes, 16 MiB: OUT_OF_RANGE past it);
        # gRPC's own 4 MiB made a larger one RESOURCE_EXHAUSTED here, which a retry repeats
        ("grpc.max_receive_message_length", -1),
        ("grpc.keepalive_time_ms", round(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.http2.ping_timeout_ms", timeout_ms),  # else a minute, whatever the above says
        ("grpc.http2.max_pings_without_data", 0),  # else 2, then none on a quiet stream
    ]
    if not retry and not wait_for_ready:
        return pings
    return [*pings, ("grpc.enable_retries", int(retry)),
            ("grpc.service_config", json.dumps(service_config(retry, wait_for_ready)))]


def add_retry_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retry", action=argparse.BooleanOptionalAction, default=True,
                        help=f"retry reads that fail UNAVAILABLE ({MAX_ATTEMPTS} attempts in all, "
                             "gRPC's service-config retry policy; default on)")
    parser.add_argument("--wait-for-ready", action="store_true",
                        help="reads wait, within their deadline, for an unreachable gateway "
                             "(restarting, say) instead of failing at once with UNAVAILABLE")
