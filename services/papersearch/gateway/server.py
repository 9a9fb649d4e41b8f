"""Assemble and run the grpc.aio server: services, health (Check + Watch), reflection, auth.

Health has two meanings, as separate grpc.health.v1 service names:

- ``liveness``: SERVING from start to the end of a drain. It is answered on the gateway's event
  loop, so an answer proves the process and its loop are alive; nothing downstream (Qdrant,
  model replicas) can fail it, so an outage never gets gateways restarted.
- ``readiness`` (and ``""``, ``papersearch.v1.SearchService``, ``papersearch.v1.IndexService``):
  SERVING while the backend is ready (models loaded, index reachable, the collection there and
  built by this embedder), rechecked every ``serve.health_poll_s``, so it recovers on its own
  after an outage; NOT_SERVING from the start of a drain.

Draining (``drain``, on SIGTERM of ``papersearch serve`` or when ``serve.drain_file`` appears):
readiness NOT_SERVING, ``serve.drain_notice_s`` more of taking calls (while load balancers
notice; 0 locally, 12 s in Kubernetes), then new calls refused with UNAVAILABLE before anything
is done (gateway/gate.py; health still answers), calls in flight finish within
``serve.drain_grace_s`` (longer than the largest deadline a call can have,
``serve.max_deadline_s``), refusals go on until calls stop coming (the refused clients'
retries, at most ``QUIET_MAX_S``; a health check of the gateway's own, through its private
unix socket, shows none is still held by gRPC short of the gate), then the server stops
(GOAWAY: clients reconnect elsewhere).
WatchSearch streams never finish by themselves: they end with UNAVAILABLE as the gate closes
(gateway/watch.py), and their clients reconnect with a replay.
IndexService calls may run longer (``serve.index_call_timeout_s``): one still running at the end
of the grace is cancelled, and its client resends (UpsertPapers is idempotent; what was
committed stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.gateway.auth import ApiKeyInterceptor, Keys
from papersearch.gateway.decode import DecodeInterceptor, grpc_receive_limit
from papersearch.gateway.gate import DrainGate
from papersearch.gateway.health import Health
from papersearch.gateway.http_api import HttpFront, socket_target
from papersearch.gateway.instrument import MetricsInterceptor
from papersearch.gateway.servicers import IndexServicer, SearchServicer
from papersearch.gateway.tls import check_tls, server_credentials
from papersearch.gateway.watch import WatchFeed, WatchHub
from papersearch.logs import OnChange
from papersearch.pipeline.backend import Backend
from papersearch.settings import ServeSettings, Settings, is_loopback
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

SERVICES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name
                 for name in ("SearchService", "IndexService"))
LIVENESS = "liveness"
READINESS = ("", "readiness", *SERVICES)
DRAIN_FILE_POLL_S = 0.5
STOP_GRACE_S = 1.0  # once idle: for a call that slipped in as the gate closed
# Once idle, refusals go on until no call has come for QUIET_S (longer than the 0.1 s, then
# 0.2 s, +-20 %, after which a refused client of ours resends), for at most QUIET_MAX_S and
# never past the grace (gate.py). The cost: a client that goes on calling over this connection
# is refused that much longer before the stop's GOAWAY sends it elsewhere. Figures behind the
# limits (README).
QUIET_S = 0.5
QUIET_MAX_S = 2.0
MIN_CHECK_S = 0.05  # the drain's own check near its limit: a timeout gRPC can still keep
# The folder of the HTTP front's unix socket to gRPC, in the temporary directory; one of a
# process that never drained (its replica killed) is removed by a later gateway's start once
# nothing listens on its socket and it is older than STALE_SOCKET_AGE_S (a gateway starting at
# the same moment has bound its socket but may not listen yet).
SOCKET_DIR_PREFIX = "papersearch-gateway-"
STALE_SOCKET_AGE_S = 60.0


class _ClientGone(logging.Filter):
    """gRPC logs an ERROR with a traceback (ExecuteBatchError) when it cannot send a call's
    last message or status because the client has gone (cancelled, disconnected, or a stream
    it stopped reading cut by a drain): an ordinary end of a call, logged at DEBUG here."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[0] if record.exc_info else None
        if error is None or error.__name__ != "ExecuteBatchError":
            return True
        log.debug("a call ended after its client left", extra={"grpc": record.getMessage()})
        return False


CLIENT_GONE = _ClientGone()


def server_options(serve: ServeSettings) -> list[tuple[str, int]]:
    """gRPC core channel arguments for the gateway's limits (README, Server limits). Both
    servers' calls pass DecodeInterceptor, which refuses a message past serve.max_receive_bytes
    itself, so gRPC's own limit lies above it."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        # off: another server on the port (a second `papersearch serve`) is refused at bind,
        # never sharing it (the kernel had split clients between the two)
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", grpc_receive_limit(serve.max_receive_bytes)),
        ("grpc.max_send_message_length", serve.max_send_bytes),
        ("grpc.max_concurrent_streams", serve.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(serve.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(serve.keepalive_timeout_s)),
        ("grpc.max_connection_idle_ms", ms(serve.max_connection_idle_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(serve.min_client_ping_interval_s)),
    ]


def _bind(what: str, address: str, add_port: Callable[[], int]) -> None:
    """``add_port()``, whose failure gRPC reports as a RuntimeError or a port of 0, as an
    OSError naming ``what`` and ``address``."""
    try:
        if add_port() != 0:
            return
        reason = "gRPC could not bind it"
    except RuntimeError as error:
        reason = str(error).split(";")[0]
    raise OSError(f"cannot bind {what} to {address} ({reason}: another process listening "
                  "there, a `papersearch serve` still running?)")


def remove_stale_socket_dirs(root: Path | None = None,
                             min_age_s: float = STALE_SOCKET_AGE_S) -> list[Path]:
    """Remove the HTTP hop's socket folders (``SOCKET_DIR_PREFIX`` in ``root``, the temporary
    directory by default) that gateways gone without a drain left: the folder and its socket
    older than ``min_age_s``, and nothing listening there (a connection refused). Returns
    those removed."""
    removed = []
    now = time.time()
    for folder in Path(root or tempfile.gettempdir()).glob(SOCKET_DIR_PREFIX + "*"):
        sock = folder / "grpc.sock"
        try:
            if now - max(folder.lstat().st_mtime, sock.lstat().st_mtime) < min_age_s:
                continue
        except OSError:  # no socket (yet), or not ours to look into
            continue
        if not _refused(sock):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            log.info("stale gateway socket folder removed", extra={"path": str(folder)})
            removed.append(folder)
    return removed


def _refused(sock: Path) -> bool:
    """Whether nothing listens on the unix socket ``sock`` (without waiting: a listener whose
    backlog is full counts as listening)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        return probe.connect_ex(str(sock)) == errno.ECONNREFUSED


class Gateway:
    """The gRPC front end; health and draining as in the module's note."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        settings.serve.check_access()
        check_tls(settings.serve)
        keys = Keys.of(settings.serve)
        auth = [] if keys is None else [ApiKeyInterceptor(keys)]
        if not auth and not is_loopback(settings.serve.grpc_host):  # allow_unauthenticated
            log.warning("serving without authentication on a non-loopback address",
                        extra={"host": settings.serve.grpc_host})
        # Outermost first: metrics see every call, auth turns callers away before their bytes
        # are read, decoding (INVALID_ARGUMENT for a message protobuf cannot parse) is last.
        logging.getLogger("grpc._cython.cygrpc").addFilter(CLIENT_GONE)  # once per process
        self.gate = DrainGate()
        decode = DecodeInterceptor(settings.serve.max_receive_bytes)
        self.server = grpc.aio.server(interceptors=[MetricsInterceptor(self.gate), self.gate,
                                                    *auth, decode],
                                      options=server_options(settings.serve))
        self.watches = WatchHub(settings.serve.watch_max_watches, settings.serve.watch_queue)
        self.feed = WatchFeed(self.watches, backend, settings.serve)
        self.search = SearchServicer(backend, settings, self.watches)
        pb_grpc.add_SearchServiceServicer_to_server(self.search, self.server)
        pb_grpc.add_IndexServiceServicer_to_server(
            IndexServicer(backend, settings, self.watches, self.gate.closing), self.server)
        self.health = Health(settings.serve.health_max_watches)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.draining = False
        self._drained: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None  # set when start() has returned or failed
        self.address = f"{settings.serve.grpc_host}:{settings.serve.grpc_port}"
        # Plaintext health only (no reflection, no papersearch services) for probes that cannot
        # speak TLS; the same HealthServicer, so both ports report the same statuses.
        self.health_server: grpc.aio.Server | None = None
        self.health_address: str | None = None
        if settings.serve.health_port is not None:
            self.health_server = grpc.aio.server(
                interceptors=[DecodeInterceptor(settings.serve.max_receive_bytes)],
                options=server_options(settings.serve))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_address = f"{settings.serve.grpc_host}:{settings.serve.health_port}"
        self._tasks: list[asyncio.Task[None]] = []
        # the watch feed runs until the watches close: through a drain's notice, while
        # calls (and writes that watches should hear of) are still taken
        self._feed_task: asyncio.Task[None] | None = None
        self.http: HttpFront | None = None
        self._socket_dir: Path | None = None
        self._servers_started = False  # both gRPC servers (a failed start's undo: _undo_start)

    async def start(self) -> None:
        """Bind, start the servers and the background tasks. A drain asked for meanwhile (Serve
        stopping a replica it just made) waits for this to end, then undoes all of it."""
        self._started = asyncio.Event()
        try:
            await self._start()
        except BaseException:
            try:
                await self._undo_start()
            except Exception:  # noqa: BLE001 (the start's own error is the one to raise)
                log.exception("undoing a failed gateway start failed")
            raise
        finally:
            self._started.set()

    async def _start(self) -> None:
        credentials = server_credentials(self.settings.serve)
        _bind("the gRPC gateway", self.address,
              lambda: (self.server.add_insecure_port(self.address) if credentials is None
                       else self.server.add_secure_port(self.address, credentials)))
        if self.health_server is not None and self.health_address is not None:
            health_server, health_address = self.health_server, self.health_address
            _bind("the gateway's health port", health_address,
                  lambda: health_server.add_insecure_port(health_address))
        # a private unix socket: HTTP calls reach gRPC on it, and the drain's own check
        await asyncio.to_thread(remove_stale_socket_dirs)
        self._socket_dir = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))
        target = socket_target(self._socket_dir)
        try:
            _bind("the gateway's private socket", target,
                  lambda: self.server.add_insecure_port(target))
        except OSError as error:
            if self.settings.serve.http_port is not None:
                raise
            # without HTTP only the drain's check needs it (a long TMPDIR: a unix socket's
            # path has at most 107 bytes): the drain then relies on the quiet wait alone
            log.warning("the drain's own check is off", extra={"reason": str(error)})
            self._remove_socket_dir()
        if self.settings.serve.http_port is not None:
            self.http = HttpFront(self.settings.serve, target)
        drain_file = self.settings.serve.drain_file
        if drain_file is not None and drain_file.exists():  # left by a drained predecessor
            drain_file.unlink()
            log.info("stale drain file removed", extra={"path": str(drain_file)})
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._set_ready(False)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        self._servers_started = True
        if self.http is not None:
            await self.http.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_backend()))
        self._feed_task = loop.create_task(self.feed.run())
        if self.settings.serve.drain_file is not None:
            self._tasks.append(loop.create_task(self._watch_drain_file()))
        log.info("gateway listening", extra={"address": self.address,
                                             "tls": credentials is not None,
                                             "health_address": self.health_address,
                                             "http_address": self.http and self.http.address})

    async def _undo_start(self) -> None:
        """Stop what a start that failed (the HTTP port taken, say) had started, and remove
        its socket folder: its gRPC server had stayed listening, liveness SERVING."""
        tasks = [*self._tasks, *([self._feed_task] if self._feed_task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._feed_task = [], None
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            http, self.http = self.http, None
            await http.stop()
        for server in (self.server, self.health_server):
            if server is None:
                continue
            if not self._servers_started:
                # a port added to a server never started stays bound and accepting for the
                # process's life (stop alone keeps it): started for a moment, then stopped
                with contextlib.suppress(Exception):  # the one that failed to start
                    await server.start()
            await server.stop(0)
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def drain(self, grace_s: float | None = None) -> None:
        """Readiness NOT_SERVING, refuse new calls, let those in flight finish (``grace_s``,
        default ``serve.drain_grace_s``), stop. Concurrent calls share one drain."""
        await asyncio.shield(self._start_drain(grace_s))

    def _start_drain(self, grace_s: float | None = None) -> asyncio.Task[None]:
        if self._drained is None:
            grace = self.settings.serve.drain_grace_s if grace_s is None else grace_s
            self._drained = asyncio.get_running_loop().create_task(self._drain(grace))
        return self._drained

    async def _drain(self, grace_s: float) -> None:
        self.draining = True
        if self._started is not None:  # a start still running: its tasks are cancelled below
            await self._started.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._set_ready(False)
        log.info("draining", extra={"grace_s": grace_s,
                                    "notice_s": self.settings.serve.drain_notice_s})
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(self.settings.serve.drain_notice_s)
        self.gate.close()
        self.watches.close()  # watches never finish by themselves: UNAVAILABLE, reconnect
        if self._feed_task is not None:
            self._feed_task.cancel()
            await asyncio.gather(self._feed_task, return_exceptions=True)
        grace_over = loop.time() + grace_s
        finished = await self.gate.wait_idle(grace_s)
        if finished:  # the refused clients' retries are refused too, not cancelled by the stop
            await self._refuse_until_quiet(min(loop.time() + QUIET_MAX_S, grace_over))
        else:
            log.warning("drain grace over: cancelling the calls still running",
                        extra={"running": self.gate.running})
            self.gate.cutting = True
        if self.http is not None:  # first: an HTTP call after the gRPC server stopped got
            await self.http.stop(cut=not finished)  # the hop's own error, naming its socket
        await self.server.stop(STOP_GRACE_S if finished else 0)
        log.info("drained", extra={"seconds": round(loop.time() - started, 3),
                                   "complete": finished})
        await self.health.enter_graceful_shutdown()
        if self.health_server is not None:
            await self.health_server.stop(0)
        self._remove_socket_dir()

    async def _refuse_until_quiet(self, until: float) -> None:
        """Refusals go on until calls stop coming (``DrainGate.wait_quiet``), at most to
        ``until``. Under load gRPC holds calls it has taken for hundreds of ms before they
        reach the gate, which cannot see them, and the stop cancelled them: a health check of
        our own over the private socket is handed over after them, so once it is answered,
        they have reached the gate; if one did, the wait begins again."""
        loop = asyncio.get_running_loop()
        if self._socket_dir is None:  # no private socket (_start): the quiet wait alone
            await self.gate.wait_quiet(QUIET_S, until - loop.time())
            return
        async with grpc.aio.insecure_channel(socket_target(self._socket_dir)) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while (left := until - loop.time()) > 0:
                await self.gate.wait_quiet(QUIET_S, left)
                sent = loop.time()
                with contextlib.suppress(grpc.RpcError):  # that it came back is what counts
                    await check(health_pb2.HealthCheckRequest(),
                                timeout=max(until - sent, MIN_CHECK_S))
                if self.gate.last_call < sent:
                    return

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _set_ready(self, ready: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in READINESS:
            await self.health.set(service, status)
        metrics().gateway_state(ready, self.draining)

    async def _watch_drain_file(self) -> None:
        path = self.settings.serve.drain_file
        while path is not None and not path.exists():
            await asyncio.sleep(DRAIN_FILE_POLL_S)
        log.info("drain file found", extra={"path": str(path)})
        self._start_drain()  # not awaited: the drain cancels this watcher

    async def _watch_backend(self) -> None:
        """Readiness from the backend, every health poll; a failure's reason is logged when it
        changes, not at every poll (17,280 identical lines a day at the default 5 s)."""
        serving: bool | None = None
        not_ready = OnChange(log, "backend not ready")
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
                # arrives as ready() finishes, and a drain would wait on this loop forever.
                async with asyncio.timeout(self.settings.serve.health_poll_s):
                    ok = await self.backend.ready()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 (any failure means not ready)
                not_ready.said(repr(error)[:200])
                ok = False
            else:
                not_ready.clear()
            if ok != serving:
                serving = ok
                await self._set_ready(ok)
                log.info("readiness", extra={"serving": ok})
            await asyncio.sleep(self.settings.serve.health_poll_s)
