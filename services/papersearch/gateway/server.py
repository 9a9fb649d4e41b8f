"""Assemble and run the grpc.aio server: services, health (Check + Watch), reflection, auth."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.gateway.auth import ApiKeyInterceptor
from papersearch.gateway.decode import DecodeInterceptor
from papersearch.gateway.instrument import MetricsInterceptor
from papersearch.gateway.servicers import IndexServicer, SearchServicer
from papersearch.gateway.tls import server_credentials
from papersearch.pipeline.backend import Backend
from papersearch.settings import ServeSettings, Settings, is_loopback

log = logging.getLogger(__name__)

SERVICES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name
                 for name in ("SearchService", "IndexService"))


def server_options(serve: ServeSettings) -> list[tuple[str, int]]:
    """gRPC core channel arguments for the gateway's limits (README, Server limits)."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        ("grpc.max_receive_message_length", serve.max_receive_bytes),
        ("grpc.max_send_message_length", serve.max_send_bytes),
        ("grpc.max_concurrent_streams", serve.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(serve.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(serve.keepalive_timeout_s)),
        ("grpc.max_connection_idle_ms", ms(serve.max_connection_idle_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(serve.min_client_ping_interval_s)),
    ]


class Gateway:
    """The gRPC front end. Health is NOT_SERVING until the backend answers (models loaded,
    index reachable), and follows it afterwards."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        settings.serve.check_access()
        write = [k.get_secret_value() for k in settings.serve.api_keys]
        read = [k.get_secret_value() for k in settings.serve.read_api_keys]
        auth = [ApiKeyInterceptor(write, read)] if write or read else []
        if not auth and not is_loopback(settings.serve.grpc_host):  # allow_unauthenticated
            log.warning("serving without authentication on a non-loopback address",
                        extra={"host": settings.serve.grpc_host})
        # Outermost first: metrics see every call, auth turns callers away before their bytes
        # are read, decoding (INVALID_ARGUMENT for a message protobuf cannot parse) is last.
        self.server = grpc.aio.server(interceptors=[MetricsInterceptor(), *auth,
                                                    DecodeInterceptor()],
                                      options=server_options(settings.serve))
        self.search = SearchServicer(backend, settings)
        pb_grpc.add_SearchServiceServicer_to_server(self.search, self.server)
        pb_grpc.add_IndexServiceServicer_to_server(IndexServicer(backend, settings), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.address = f"{settings.serve.grpc_host}:{settings.serve.grpc_port}"
        # Plaintext health only (no reflection, no papersearch services) for probes that cannot
        # speak TLS; the same HealthServicer, so both ports report the same statuses.
        self.health_server: grpc.aio.Server | None = None
        self.health_address: str | None = None
        if settings.serve.health_port is not None:
            self.health_server = grpc.aio.server(options=server_options(settings.serve))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_address = f"{settings.serve.grpc_host}:{settings.serve.health_port}"
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        credentials = server_credentials(self.settings.serve)
        port = (self.server.add_insecure_port(self.address) if credentials is None
                else self.server.add_secure_port(self.address, credentials))
        if port == 0:
            raise OSError(f"cannot bind the gRPC gateway to {self.address}")
        if self.health_server is not None and self.health_address is not None and (
                self.health_server.add_insecure_port(self.health_address) == 0):
            raise OSError(f"cannot bind the gateway's health port to {self.health_address}")
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_backend())
        log.info("gateway listening", extra={"address": self.address,
                                             "tls": credentials is not None,
                                             "health_address": self.health_address})

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await self.health.enter_graceful_shutdown()
        servers = [self.server] if self.health_server is None else [self.server,
                                                                     self.health_server]
        await asyncio.gather(*(server.stop(grace_s) for server in servers))

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", *SERVICES):
            await self.health.set(service, status)

    async def _watch_backend(self) -> None:
        serving: bool | None = None
        while True:
            try:
                ok = await asyncio.wait_for(self.backend.ready(), self.settings.serve.health_poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 (any failure means not ready)
                log.warning("backend not ready", extra={"reason": repr(error)[:200]})
                ok = False
            if ok != serving:
                serving = ok
                await self._set(health_pb2.HealthCheckResponse.SERVING if ok
                                else health_pb2.HealthCheckResponse.NOT_SERVING)
                log.info("health", extra={"serving": ok})
            await asyncio.sleep(self.settings.serve.health_poll_s)
